"""A campaign's results: delivery counts, engagement, conversions with their trend, revenue,
cost, ROI, coupons, and the uplift of the treated group over the holdout.

Attribution (docs/campaigns.md, "Results"): a treated person converts when a goal event falls
in ``(delivered_at, delivered_at + N days]`` of their first delivered message; a holdout
person's clock starts at the campaign's send time (its first message's enqueue), since they
got no message. The treated rate is over delivered persons, the holdout rate over the holdout.

``report`` is what the API and the console call: ``results`` kept per campaign for up to
``CACHE_SECONDS`` while the campaign's outbox rows stay as they were (their counts by status
and latest delivery: a delivery, a failure or a retry computes it again), with the time it
was computed; ``fresh`` computes it now. Conversions and clicks that arrive meanwhile show at
the latest after ``CACHE_SECONDS``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import Connection, func, select

from rapport.campaigns.store import load
from rapport.catalog import current_plan
from rapport.db.tables import campaign_recipients, outbox
from rapport.delivery.outbox import utc

if TYPE_CHECKING:
    from rapport.workspace import Workspace

#: goal-event properties read as revenue, the first the tracking plan declares as a number
REVENUE_PROPS = ("amount", "price")
NUMERIC = ("number", "integer")
Z95 = NormalDist().inv_cdf(0.975)
DAY = timedelta(days=1)
TREND_COLUMNS = ["day", "treated", "treated_converted", "treated_rate"]
TREND_COLUMNS += ["holdout", "holdout_converted", "holdout_rate"]
#: how long a computed report is served again (its outbox rows unchanged)
CACHE_SECONDS = 60.0
#: reports kept (least recently used dropped)
CACHE_SIZE = 64

# written by the coupons-and-links feature; read only when present
link_clicks = sa.table(
    "link_clicks", sa.column("campaign_id"), sa.column("person_key"), sa.column("kind")
)
coupon_codes = sa.table(
    "coupon_codes", sa.column("campaign_id"), sa.column("issued_at"), sa.column("redeemed_at")
)


def uplift(conv_t: int, n_t: int, conv_h: int, n_h: int) -> dict[str, float | None]:
    """Treated rate − holdout rate with a 95 % interval by the normal approximation for a
    difference of two proportions (unpooled standard error); relative = difference / holdout
    rate. None where a group is empty (or the holdout rate is 0, for the relative uplift)."""
    if not n_t or not n_h:
        return {"absolute": None, "ci_low": None, "ci_high": None, "relative": None}
    p_t, p_h = conv_t / n_t, conv_h / n_h
    diff = p_t - p_h
    half = Z95 * math.sqrt(p_t * (1 - p_t) / n_t + p_h * (1 - p_h) / n_h)
    return {
        "absolute": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "relative": diff / p_h if p_h else None,
    }


def _statuses(conn: Connection, origin: str) -> dict[str, int]:
    rows = conn.execute(
        select(outbox.c.status, func.count())
        .where(outbox.c.origin == origin)
        .group_by(outbox.c.status)
    )
    return {status: int(n) for status, n in rows}


def _roles(conn: Connection, cid: int) -> dict[str, int]:
    rows = conn.execute(
        select(campaign_recipients.c.role, func.count())
        .where(campaign_recipients.c.campaign_id == cid)
        .group_by(campaign_recipients.c.role)
    )
    return {role: int(n) for role, n in rows}


def _clocks(conn: Connection, cid: int) -> tuple[datetime | None, pa.Table, list[int]]:
    """The send time, each treated person's first delivery (``person_key``, ``start``) and
    the holdout persons. The deliveries go straight into Arrow (one row per recipient: no
    per-row datetime objects)."""
    origin = f"campaign:{cid}"
    sent_at = conn.execute(select(func.min(outbox.c.created_at)).where(outbox.c.origin == origin))
    first = func.min(outbox.c.delivered_at, type_=sa.String)  # raw: text on SQLite
    delivered = conn.execute(
        select(outbox.c.person_key, first)
        .where(
            outbox.c.origin == origin,
            outbox.c.status == "delivered",
            outbox.c.person_key.is_not(None),
        )
        .group_by(outbox.c.person_key)
    ).all()
    holdout = conn.execute(
        select(campaign_recipients.c.person_key).where(
            campaign_recipients.c.campaign_id == cid, campaign_recipients.c.role == "holdout"
        )
    ).scalars()
    return (
        utc(sent_at.scalar()),
        _starts([r[0] for r in delivered], [r[1] for r in delivered]),
        list(holdout),
    )


def _starts(persons: list[int], at: list[Any]) -> pa.Table:
    """(person_key, start UTC) from the driver's values: SQLite's naive UTC text or
    PostgreSQL's aware datetimes."""
    if at and isinstance(at[0], str):
        times = pa.array(at, pa.string()).cast(pa.timestamp("us")).cast(pa.timestamp("us", "UTC"))
    else:
        times = pa.array([utc(a) for a in at], pa.timestamp("us", "UTC"))
    return pa.table({"person_key": pa.array(persons, pa.int64()), "start": times})


def _engagement(conn: Connection, cid: int) -> dict[str, int]:
    """Distinct persons through the campaign's links (``opened``: any click, scan or
    registration) and its coupons; 0 while those tables do not exist."""
    kinds = {"clicked": "click", "scanned": "scan", "registered": "register"}
    out = dict.fromkeys(["opened", *kinds, "coupons_issued", "coupons_redeemed"], 0)
    have = sa.inspect(conn)
    if have.has_table("link_clicks"):
        who = func.count(sa.distinct(link_clicks.c.person_key))
        mine = link_clicks.c.campaign_id == cid
        out["opened"] = conn.execute(select(who).where(mine)).scalar() or 0
        for key, kind in kinds.items():
            q = select(who).where(mine, link_clicks.c.kind == kind)
            out[key] = conn.execute(q).scalar() or 0
    if have.has_table("coupon_codes"):
        mine = coupon_codes.c.campaign_id == cid
        for key, column in (("issued", "issued_at"), ("redeemed", "redeemed_at")):
            q = select(func.count()).where(mine, coupon_codes.c[column].is_not(None))
            out[f"coupons_{key}"] = conn.execute(q).scalar() or 0
    return out


def revenue_property(ws: Workspace, goal: str) -> str | None:
    """The first of ``amount``, ``price`` the tracking plan declares as a number on the goal."""
    declared = current_plan(ws.db).event_properties(goal)
    return next((p for p in REVENUE_PROPS if declared.get(p) in NUMERIC), None)


def _conversions(
    ws: Workspace, goal: str, days: int, clocks: dict[str, pa.Table], prop: str | None
) -> list[tuple[str, int, float]]:
    """Per converted person: (group, the day of their first goal event counted from their
    clock, 1 = within the first 24 h; revenue of their goal events in the window)."""
    parts = [
        starts.append_column("grp", pa.array([group] * starts.num_rows, pa.string()))
        for group, starts in clocks.items()
        if starts.num_rows
    ]
    if not goal or not parts:
        return []
    starts = ibis.memtable(pa.concat_tables(parts))
    with ws.warehouse.connect() as con:
        columns = ws.warehouse.event_prop_columns(con)
        ev = con.table("events")
        ev = ev.filter(ev.event == goal, ev.person_key.notnull())
        amount = ev[columns[prop]].cast("float64") if prop in columns else ibis.literal(0.0)
        ev = ev.select("person_key", "ts", amount=amount)
        j = ev.join(starts, "person_key")
        j = j.filter(j.ts > j.start, j.ts <= j.start + ibis.interval(days=days))
        per = j.group_by(["person_key", "grp", "start"]).aggregate(
            first=j.ts.min(), revenue=j.amount.sum()
        )
        rows = per.to_pyarrow().to_pylist()
    return [(r["grp"], -(-(r["first"] - r["start"]) // DAY), r["revenue"] or 0.0) for r in rows]


def _trend(
    converted: list[tuple[str, int, float]], n: dict[str, int], days: int
) -> list[list[Any]]:
    """Per day d = 1..N: persons converted within d days of their clock, and the rate."""
    on_day = Counter((group, day) for group, day, _ in converted)
    total = dict.fromkeys(n, 0)
    rows = []
    for day in range(1, days + 1):
        row: list[Any] = [day]
        for group in ("treated", "holdout"):
            total[group] += on_day[group, day]
            row += [n[group], total[group], total[group] / n[group] if n[group] else None]
        rows.append(row)
    return rows


def results(ws: Workspace, ref: int | str) -> dict[str, Any]:
    """The report of one campaign (see the module's docstring for the attribution)."""
    with ws.db.connect() as conn:
        campaign = load(conn, ref)
        cid = campaign["id"]
        statuses = _statuses(conn, f"campaign:{cid}")
        roles = _roles(conn, cid)
        sent_at, treated, holdout = _clocks(conn, cid)
        engagement = _engagement(conn, cid)
    goal, days = campaign["goal_event"], campaign["goal_days"]
    clocks = {
        "treated": treated,
        "holdout": _starts(holdout, [sent_at] * len(holdout)) if sent_at else _starts([], []),
    }
    prop = revenue_property(ws, goal) if goal else None
    converted = _conversions(ws, goal, days, clocks, prop)
    n = {"treated": treated.num_rows, "holdout": len(holdout)}
    conv = {g: sum(1 for c in converted if c[0] == g) for g in n}
    sent = sum(statuses.values())
    suppressed = statuses.get("suppressed", 0)
    done = statuses.get("delivered", 0) + statuses.get("dead", 0) + suppressed
    cost = round((sent - suppressed) * campaign["cost_per_message"], 2)
    revenue = round(sum(r for g, _, r in converted if g == "treated"), 2)
    return {
        "campaign": {"id": cid, "name": campaign["name"], "status": campaign["status"]},
        "goal_event": goal,
        "goal_days": days,
        "sent_at": sent_at.isoformat() if sent_at else None,
        "planned": roles.get("send", 0),
        "holdout": len(holdout),
        "planned_suppressed": roles.get("suppressed", 0),
        "sent": sent,
        "delivered": statuses.get("delivered", 0),
        "failed": statuses.get("dead", 0),
        "suppressed": suppressed,
        "pending": sent - done,
        **engagement,
        "converted": conv["treated"],
        "holdout_converted": conv["holdout"],
        "treated_rate": conv["treated"] / n["treated"] if n["treated"] else None,
        "holdout_rate": conv["holdout"] / n["holdout"] if n["holdout"] else None,
        "uplift": uplift(conv["treated"], n["treated"], conv["holdout"], n["holdout"]),
        "revenue_property": prop,
        "revenue": revenue,
        "cost": cost,
        "roi": round((revenue - cost) / cost, 4) if cost else None,
        "trend": {"columns": TREND_COLUMNS, "rows": _trend(converted, n, days)},
    }


# -- the cache ------------------------------------------------------------------------------
_cache: OrderedDict[tuple[str, int], tuple[float, Any, dict[str, Any]]] = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(conn: Connection, campaign: dict[str, Any]) -> Any:
    """What changes when the report's delivery side changes: the campaign row's update time
    and its outbox rows' counts by status (every delivery, failure, suppression or replay
    moves one; read from the index ``ix_outbox_origin_status`` alone)."""
    counts = _statuses(conn, f"campaign:{campaign['id']}")
    return (str(campaign.get("updated_at")), tuple(sorted(counts.items())))


def report(ws: Workspace, ref: int | str, *, fresh: bool = False) -> dict[str, Any]:
    """``results`` with ``computed_at`` (ISO, UTC), served from the cache while it is younger
    than ``CACHE_SECONDS`` and the campaign's outbox rows are unchanged; ``fresh``: computed
    now (and cached)."""
    with ws.db.connect() as conn:
        campaign = load(conn, ref)
        stamp = _stamp(conn, campaign)
    key = (str(ws.db.url), int(campaign["id"]))
    with _cache_lock:
        hit = _cache.get(key)
    if not fresh and hit is not None:
        at, old, kept = hit
        if old == stamp and time.monotonic() - at < CACHE_SECONDS:
            return dict(kept)
    computed = {**results(ws, campaign["id"]), "computed_at": datetime.now(UTC).isoformat()}
    with _cache_lock:
        _cache[key] = (time.monotonic(), stamp, computed)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return dict(computed)
