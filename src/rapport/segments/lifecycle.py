"""The lifecycle: a built-in segmentation into stages, whose every transition is an event.

Stages at ``as_of`` (days are whole UTC days between the last activity's date and as_of's):

- ``new_not_activated``: known to Rapport (in ``profiles`` or with events) but no activation
  event (by default an order or a hotel booking) yet;
- ``retained``: activated, last activity at most ``retained_days`` (30) days ago;
- ``silent``: activated, last activity more than 30 and less than ``lost_days`` (61) days ago;
- ``lost``: activated, last activity ``lost_days`` or more days ago.

Activity = any tracked event except Rapport's own (source ``rapport``: lifecycle and audience
changes). The thresholds and the activation events are the segment's definition (editable like
any segment).

Each refresh compares with the stages written by the previous one and appends one
``lifecycle_changed`` event per changed person to the event log, through the collector like a
server event (source ``rapport``), so that campaigns can trigger on "became silent". The first
refresh only places people (there is nothing to transition from). The counts of the last
refresh (distribution, from → to matrix) are kept in the definition for the charts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
from pyroaring import BitMap

from rapport.conditions.validate import LIFECYCLE_STAGES
from rapport.segments import bitmaps, system_events
from rapport.segments.store import find_segment, insert_segment, members, update_segment
from rapport.segments.store import write_members as _write

if TYPE_CHECKING:
    from rapport.workspace import Workspace

NAME = "lifecycle"
STAGES = LIFECYCLE_STAGES  # defined with the conditions that name them
EVENT = "lifecycle_changed"
SOURCE = system_events.SOURCE
DEFAULTS: dict[str, Any] = {
    "activation_events": ["order_paid", "book_hotel"],
    "retained_days": 30,
    "lost_days": 61,
}

PLAN = f"""
events:
  {EVENT}:
    kind: system
    description: A person moved from one lifecycle stage to another (emitted by Rapport).
    properties:
      from: string
      to:
        type: string
        required: true
      person:
        type: integer
        required: true
"""


def definition(ws: Workspace) -> dict[str, Any]:
    """The lifecycle segment's settings (created with the defaults on first use)."""
    seg = find_segment(ws, NAME)
    if seg is None:
        seg = insert_segment(ws, NAME, "lifecycle", dict(DEFAULTS), "dynamic", "Built-in lifecycle")
    return {**DEFAULTS, **(seg["definition"] or {})}


def configure(ws: Workspace, **settings: Any) -> dict[str, Any]:
    """Change thresholds / activation events; keeps the last refresh's counts."""
    current = definition(ws)
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown lifecycle setting(s): {', '.join(sorted(unknown))}")
    current.update({k: v for k, v in settings.items() if v is not None})
    if not 0 < int(current["retained_days"]) < int(current["lost_days"]):
        raise ValueError("need 0 < retained_days < lost_days")
    update_segment(ws, NAME, definition=current)
    return current


def compute_stages(ws: Workspace, as_of: datetime, conf: dict[str, Any]) -> dict[str, BitMap]:
    """stage -> persons at ``as_of`` (one warehouse query: DuckDB's, or Spark's)."""
    from rapport.warehouse.spark import reader  # DuckDB, or Spark (warehouse_backend)

    with reader(ws).connect() as con:
        ev = con.table("events")
        ev = ev.filter(ev.person_key >= 0, ev.ts <= as_of, ev.source != system_events.SOURCE)
        per = ev.group_by("person_key").aggregate(
            last=ev.ts.max(),
            activated=ev.event.isin(list(conf["activation_events"])).any(),
        )
        everyone = bitmaps.universe_table(con)
        joined = everyone.left_join(per, "person_key")
        days = ibis.literal(as_of.date()).delta(joined["last"].date(), unit="day")
        stage = ibis.cases(
            (joined.activated.isnull() | ~joined.activated, "new_not_activated"),
            (days <= int(conf["retained_days"]), "retained"),
            (days < int(conf["lost_days"]), "silent"),
            else_="lost",
        )
        rows = joined.select("person_key", stage=stage).to_pyarrow()
    out = {s: BitMap() for s in STAGES}
    keys = rows["person_key"].to_pylist()
    for key, name in zip(keys, rows["stage"].to_pylist(), strict=True):
        out[name].add(key)
    return out


def _previous(ws: Workspace) -> dict[str, BitMap]:
    return {s: members(ws, NAME, s) for s in STAGES}


def transitions(
    before: dict[str, BitMap], after: dict[str, BitMap]
) -> dict[tuple[str, str], BitMap]:
    """(from, to) -> persons who moved (persons new to the lifecycle are not transitions)."""
    out: dict[tuple[str, str], BitMap] = {}
    for a, was in before.items():
        for b, now_in in after.items():
            if a != b:
                moved = was & now_in
                if moved:
                    out[(a, b)] = moved
    return out


def refresh_lifecycle(ws: Workspace, as_of: datetime | None = None) -> dict[str, Any]:
    """Compute the stages, write them, and log a ``lifecycle_changed`` event per transition."""
    when = as_of or datetime.now(UTC)
    conf = definition(ws)
    before = _previous(ws)
    after = compute_stages(ws, when, conf)
    moved = transitions(before, after)
    emitted = emit_transitions(ws, moved, when) if moved else {"accepted": 0}
    stages: dict[str | None, BitMap] = {s: after[s] for s in STAGES}
    _write(ws, NAME, stages, at=when)
    bitmaps.store(ws).put(bitmaps.UNIVERSE, BitMap.union(*after.values()))  # everyone, fresh
    stats = {
        "as_of": when.isoformat(),
        "distribution": {s: len(after[s]) for s in STAGES},
        "transitions": [
            {"from": a, "to": b, "count": len(p)} for (a, b), p in sorted(moved.items())
        ],
        "events": emitted,
    }
    update_segment(ws, NAME, definition={**conf, "last_refresh": stats})
    return stats


def summary(ws: Workspace) -> dict[str, Any]:
    """For the charts: the settings, the current distribution and the last transitions."""
    conf = definition(ws)
    last = conf.pop("last_refresh", None) or {}
    current = {s: len(members(ws, NAME, s)) for s in STAGES}
    return {
        "settings": conf,
        "stages": list(STAGES),
        "distribution": current,
        "as_of": last.get("as_of"),
        "transitions": last.get("transitions", []),
        "matrix": _matrix(last.get("transitions", [])),
    }


def _matrix(moves: list[dict[str, Any]]) -> list[list[int]]:
    index = {s: i for i, s in enumerate(STAGES)}
    grid = [[0] * len(STAGES) for _ in STAGES]
    for m in moves:
        grid[index[m["from"]]][index[m["to"]]] = m["count"]
    return grid


# -- the system events --------------------------------------------------------------------------
def emit_transitions(
    ws: Workspace, moved: dict[tuple[str, str], BitMap], as_of: datetime
) -> dict[str, int]:
    """One ``lifecycle_changed`` per moved person, through the collector's checks into the
    log. The message id is derived from (person, as_of, to), so a repeated refresh at the same
    instant is deduplicated by the log."""
    source = system_events.system_source(ws, [EVENT], PLAN)
    everyone = BitMap.union(*moved.values())
    members_ids = system_events.user_ids(ws, everyone)
    stamp = system_events.stamp(as_of)
    messages = [
        system_events.message(
            EVENT,
            person,
            as_of,
            f"lifecycle:{person}:{stamp}:{b}",
            {"from": a, "to": b, "person": person},
            members_ids.get(person),
        )
        for (a, b), persons in moved.items()
        for person in persons
    ]
    return system_events.submit(ws, source, messages)
