"""Event trends: events (or unique persons) per hour, day or week, per event, optionally
broken down by an event property: the ``top`` values by the chosen measure over the whole
range, the rest as ``(other)`` (unique persons of ``(other)`` are counted once, not summed),
a missing value as ``(none)``. Buckets are UTC; a week starts on Monday; empty buckets are 0.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis

from rapport.analytics.base import batch, labelled, table, top_or_other
from rapport.analytics.specs import TrendsSpec
from rapport.conditions.to_ibis import event_prop_text

if TYPE_CHECKING:
    from rapport.workspace import Workspace

UNIT = {"hour": "h", "day": "D", "week": "W"}


def trends(ws: Workspace, spec: TrendsSpec) -> dict[str, Any]:
    with batch(ws, spec.end) as ctx:
        e = ctx.table("events")
        e = e.filter(
            e.person_key >= 0, e.event.isin(spec.events), e.ts >= spec.start, e.ts < spec.end
        )
        value = event_prop_text(ctx, e, spec.breakdown) if spec.breakdown else None
        e = e.mutate(
            bucket=e.ts.truncate(UNIT[spec.interval]),
            value=labelled(value) if value is not None else ibis.literal(""),
        )
        if spec.breakdown:
            weight = e.person_key.nunique() if spec.measure == "persons" else e.person_key.count()
            e = top_or_other(e, "value", weight, spec.top)
        measure = e.person_key.nunique() if spec.measure == "persons" else e.count()
        rows = (
            e.group_by(["bucket", "event", "value"]).aggregate(n=measure).to_pyarrow().to_pylist()
        )
    counts = {(r["event"], r["value"], _key(r["bucket"])): int(r["n"]) for r in rows}
    buckets = _buckets(spec)
    totals: dict[tuple[str, str], int] = {}
    for (event, value, _), n in counts.items():
        totals[(event, value)] = totals.get((event, value), 0) + n
    order = sorted(
        totals, key=lambda s: (spec.events.index(s[0]), s[1] == "(other)", -totals[s], s[1])
    )
    series: list[dict[str, Any]] = [
        {
            "event": event,
            "value": value if spec.breakdown else None,
            "name": f"{event} · {value}" if spec.breakdown else event,
            "data": [counts.get((event, value, b), 0) for b in buckets],
        }
        for event, value in order
    ]
    columns = ["bucket", "event", *(["breakdown"] if spec.breakdown else []), spec.measure]
    out_rows = [
        [b, s["event"], *([s["value"]] if spec.breakdown else []), s["data"][i]]
        for s in series
        for i, b in enumerate(buckets)
    ]
    return {
        "measure": spec.measure,
        "interval": spec.interval,
        "buckets": buckets,
        "series": series,
        "table": table(columns, out_rows),
    }


def _key(bucket: datetime) -> str:
    return (
        bucket.astimezone(UTC).isoformat()
        if bucket.tzinfo
        else bucket.replace(tzinfo=UTC).isoformat()
    )


def _buckets(spec: TrendsSpec) -> list[str]:
    start = spec.start.astimezone(UTC)
    if spec.interval == "hour":
        at, step = start.replace(minute=0, second=0, microsecond=0), timedelta(hours=1)
    else:
        at, step = start.replace(hour=0, minute=0, second=0, microsecond=0), timedelta(days=1)
    if spec.interval == "week":
        at, step = at - timedelta(days=at.weekday()), timedelta(days=7)
    out = []
    while at < spec.end:
        out.append(at.isoformat())
        at += step
    return out
