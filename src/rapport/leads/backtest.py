"""What a lead rule would have done: backtest on the warehouse, dry-run of the live logic.

``simulate(ws, rule, start, end)`` finds the leads the rule would have made in ``[start, end)``:

1. the persons with the trigger's first event in ``[start - horizon, end]`` (the horizon: a
   sequence's ``within``), and their history as the rule needs it (the events its trigger
   and conditions read, from the rules' look-back before ``start``; attributes, tags,
   segments as they are now), read from the warehouse with the events' ids;
2. per person, the trigger's matches with ``fired_at`` in ``[start, end)`` — by the reference
   interpreter (``reference.trigger_matches``: the batch path, the arbiter of semantics) or,
   for a **dry-run**, by the very stream rule the engine runs (``live.LeadStreamRule`` fed
   one event at a time, its timers fired on event time);
3. the person's conditions true and suppression false at ``fired_at``;
4. the cooldown, simulated in time order per person among these leads (no lead is written:
   leads the rule really made are not counted against it).

The dedupe key of each is the live engine's (``"{rule id}:{match key}"``), so the stream and
the batch can be compared lead for lead. ``backtest`` adds what happened next: the share of
leads whose person did the goal event (``order_paid`` by default) within N days after.

Cost: histories are read into Python per person (no batch ``to_ibis.trigger_matches`` yet):
correct, but proportional to the events of the persons the trigger touches.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import ibis
import pyarrow as pa

from rapport.conditions import reference
from rapport.conditions.model import EventIs
from rapport.leads.live import Hit, LeadStreamRule, dedupe_key, evidence_of, person_condition
from rapport.stream.state import PersonState

if TYPE_CHECKING:
    from rapport.leads.rules import LeadRule
    from rapport.workspace import Workspace

Matcher = Literal["reference", "stream"]
GOAL_EVENT = "order_paid"
GOAL_DAYS = 7
SAMPLE = 20
DAY = timedelta(days=1)


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError(f"{t.isoformat()} has no time zone")
    return t.astimezone(UTC)


def _first_event(rule: LeadRule) -> str:
    """The event every match starts with (an event trigger's, a sequence's first step's)."""
    trigger = reference.check_trigger(rule.trigger)
    if isinstance(trigger, EventIs):
        return trigger.event
    return reference.atoms(trigger)[0][0].event


def histories(
    ws: Workspace, stream: LeadStreamRule, start: datetime, end: datetime
) -> dict[int, PersonState]:
    """The states of the persons the rule can fire for in ``[start, end)``: those with the
    trigger's first event in ``[start - horizon, end]`` (see step 1)."""
    from rapport.stream.engine import event_columns, event_records, load_profile

    compiled = stream.compiled
    first = _first_event(stream.rule)
    names = compiled.interest
    floor: datetime | None = start - stream.horizon
    lookback = compiled.retention.lookback
    if lookback is None or compiled.retention.anchors:
        floor = None
    elif floor is not None:
        floor -= lookback
        if compiled.retention.since is not None:
            floor = min(floor, compiled.retention.since)
    from rapport.warehouse.spark import reading  # the events on DuckDB, or on Spark

    with ws.warehouse.connect() as con, reading(ws, con) as reads:
        ev = reads.table("events")
        touched = ev.filter(
            ev.person_key >= 0,
            ev.ts >= start - stream.horizon,
            ev.ts <= end,
            ev.event == first,
        )
        keys = touched.select("person_key").distinct().to_pyarrow()["person_key"].to_pylist()
        if not keys:
            return {}
        people = ibis.memtable(pa.table({"person_key": pa.array(sorted(keys), pa.int64())}))
        q = ev.filter(ev.ts <= end)
        if floor is not None:
            q = q.filter(q.ts >= floor)
        if names is not None:
            q = q.filter(q.event.isin(sorted(names)))
        if reads is con:
            q = q.join(people, "person_key")
        else:  # the persons stay in Spark (no list shipped to it)
            q = q.semi_join(touched.select("person_key").distinct(), "person_key")
        items = stream.reads.items
        t = event_columns(reads, q, items, extra=("event_id",))
        rows = t.order_by(["person_key", "ts", "event_id"]).to_pyarrow()
        if rows.schema.field("ts").type != pa.timestamp("us", "UTC"):  # Spark's: naive UTC
            rows = rows.set_column(
                rows.schema.get_field_index("ts"), "ts", rows["ts"].cast(pa.timestamp("us", "UTC"))
            )
        states = {k: PersonState(k) for k in keys}
        for p, rec in event_records(rows, items):
            states[p].events.append(rec)
        load_profile(ws, con, people, states, stream.reads)
    for state in states.values():
        state.reindex()
    return states


def _by_stream(stream: LeadStreamRule, state: PersonState, end: datetime) -> list[Hit]:
    """The engine's rule fed the person's events one at a time, timers on event time."""
    live = PersonState(state.person, state.attrs, state.tags, state.segments)
    out: list[Hit] = []
    for rec in sorted(state.events, key=reference.order):
        while (due := stream.trigger.deadline(live)) is not None and due < rec.ts:
            out += stream.on_timer(live, due) or []
        live.add(rec)
        out += stream.on_event(live, rec.ts, rec) or []
    out += stream.on_timer(live, end) or []
    return out


def simulate(
    ws: Workspace,
    rule: LeadRule,
    start: datetime,
    end: datetime,
    how: Matcher = "reference",
    *,
    cooled: bool = True,
) -> tuple[list[Hit], dict[str, int]]:
    """The leads ``rule`` would have made in ``[start, end)``, in time order (module
    docstring), and the counts of each step: matches, after conditions, after cooldown.
    ``cooled=False``: before the cooldown (``records.fire`` applies it against real leads)."""
    from rapport.segments.bitmaps import attr_types

    start, end = _utc(start), _utc(end)
    types = attr_types(ws)
    stream = LeadStreamRule(rule, types)
    cond = person_condition(rule)
    matched = 0
    hits: list[Hit] = []
    for state in histories(ws, stream, start, end).values():
        ms = [
            m
            for m in reference.trigger_matches(rule.trigger, state.events, end)
            if start <= m.fired_at < end
        ]
        matched += len(ms)
        if how == "stream":
            hits += [h for h in _by_stream(stream, state, end) if start <= h.match.fired_at < end]
        else:
            hits += [
                Hit(rule, state.person, m, state)
                for m in ms
                if cond is None or reference.evaluate(cond, state, m.fired_at, attr_types=types)
            ]
    kept = cooldown(rule, hits) if cooled else sorted(hits, key=Hit.order)
    return kept, {"matches": matched, "passed": len(hits), "leads": len(kept)}


def cooldown(rule: LeadRule, hits: list[Hit]) -> list[Hit]:
    """``hits`` in time order without those a lead of the same person within the rule's
    cooldown before stops (``records.fire``'s rule, among these leads only)."""
    span = timedelta(seconds=rule.cooldown.seconds())
    last: dict[int, datetime] = {}
    kept: list[Hit] = []
    seen: set[str] = set()
    for h in sorted(hits, key=Hit.order):
        key = dedupe_key(rule, h.match)
        if key in seen:
            continue
        prev = last.get(h.person)
        if prev is not None and prev > h.match.fired_at - span:
            continue
        seen.add(key)
        last[h.person] = h.match.fired_at
        kept.append(h)
    return kept


def conversions(
    ws: Workspace, hits: list[Hit], goal: str, days: int
) -> tuple[int, datetime | None]:
    """How many leads' persons did ``goal`` within ``days`` after the lead; and the latest
    event time in the warehouse (leads younger than ``days`` before it are still open)."""
    if not hits:
        return 0, None
    span = timedelta(days=days)
    persons = sorted({h.person for h in hits})
    lo = min(h.match.fired_at for h in hits)
    hi = max(h.match.fired_at for h in hits) + span
    with ws.warehouse.connect() as con:
        ev = con.table("events")
        people = ibis.memtable(pa.table({"person_key": pa.array(persons, pa.int64())}))
        q = ev.filter(ev.event == goal, ev.ts > lo, ev.ts <= hi).join(people, "person_key")
        rows = q.select("person_key", "ts").order_by("ts").to_pyarrow()
        latest = ev.ts.max().to_pyarrow().as_py()
    times: dict[int, list[datetime]] = defaultdict(list)
    for p, ts in zip(rows["person_key"].to_pylist(), rows["ts"].to_pylist(), strict=True):
        times[p].append(ts)
    converted = 0
    for h in hits:
        ts = times.get(h.person, [])
        i = bisect_right(ts, h.match.fired_at)
        converted += i < len(ts) and ts[i] <= h.match.fired_at + span
    return converted, latest


def lead_row(rule: LeadRule, h: Hit) -> dict[str, Any]:
    return {
        "person_key": h.person,
        "fired_at": h.match.fired_at.isoformat(),
        "dedupe_key": dedupe_key(rule, h.match),
        "evidence": evidence_of(h.match),
    }


def _daily(hits: list[Hit], start: datetime, end: datetime) -> list[dict[str, Any]]:
    counts: dict[str, int] = defaultdict(int)
    for h in hits:
        counts[h.match.fired_at.date().isoformat()] += 1
    days: list[dict[str, Any]] = []
    day = start.date()
    while day <= (end - timedelta(microseconds=1)).date() and len(days) < 1000:
        days.append({"day": day.isoformat(), "leads": counts.get(day.isoformat(), 0)})
        day += DAY
    return days


def _sample(hits: list[Hit], size: int) -> list[Hit]:
    """``size`` leads spread evenly over the period (all of them when fewer)."""
    if len(hits) <= size:
        return hits
    step = len(hits) / size
    return [hits[int(i * step)] for i in range(size)]


def backtest(
    ws: Workspace,
    rule: LeadRule,
    start: datetime,
    end: datetime,
    *,
    goal: str = GOAL_EVENT,
    days: int = GOAL_DAYS,
    how: Matcher = "reference",
    sample: int = SAMPLE,
) -> dict[str, Any]:
    """The numbers of ``simulate`` for people: leads, what became of them, per day, a sample."""
    if _utc(end) <= _utc(start):
        raise ValueError("the period is empty: its end must come after its start")
    began = time.perf_counter()
    hits, counts = simulate(ws, rule, start, end, how)
    converted, latest = conversions(ws, hits, goal, days)
    n = len(hits)
    never = n - converted
    share = round(100 * never / n) if n else 0
    summary = f"would have produced {n:,} lead{'s' if n != 1 else ''}" + (
        f", {share}% of them never did {goal} within {days} days" if n else ""
    )
    return {
        "rule": {"id": rule.id, "name": rule.name, "version": rule.version},
        "start": _utc(start).isoformat(),
        "end": _utc(end).isoformat(),
        "matcher": how,
        **counts,
        "suppressed_by_cooldown": counts["passed"] - n,
        "persons": len({h.person for h in hits}),
        "goal": {
            "event": goal,
            "days": days,
            "converted": converted,
            "never": never,
            "never_share": share,
            "data_until": latest.isoformat() if latest else None,
        },
        "daily": _daily(hits, _utc(start), _utc(end)),
        "sample": [lead_row(rule, h) for h in _sample(hits, sample)],
        "summary": summary,
        "seconds": round(time.perf_counter() - began, 3),
    }


def dry_run(
    ws: Workspace, rule: LeadRule, hours: float = 24, end: datetime | None = None, **kw: Any
) -> dict[str, Any]:
    """The live rule's stream logic over the last ``hours`` of event time before ``end``
    (default: now), writing nothing: the same numbers as ``backtest`` of that period."""
    if hours <= 0:
        raise ValueError("hours must be more than 0")
    end = _utc(end) if end is not None else datetime.now(UTC)
    return backtest(ws, rule, end - timedelta(hours=hours), end, how="stream", **kw)
