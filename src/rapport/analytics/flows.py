"""Lifecycle transitions over a period, read from what the lifecycle stores: one
``lifecycle_changed`` event (source ``rapport``, properties ``from`` and ``to``) per person
who moved at a refresh (``rapport.segments.lifecycle``). Counts are transitions and distinct
persons per (from, to) in ``[start, end)``; a person who moved twice along the same edge is
two transitions and one person.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapport.analytics.base import batch, labelled, table
from rapport.analytics.specs import LifecycleSpec
from rapport.conditions.to_ibis import event_prop_text
from rapport.segments import lifecycle

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def lifecycle_flows(ws: Workspace, spec: LifecycleSpec) -> dict[str, Any]:
    with batch(ws, spec.end) as ctx:
        e = ctx.table("events")
        e = e.filter(
            e.event == lifecycle.EVENT,
            e.source == lifecycle.SOURCE,
            e.ts >= spec.start,
            e.ts < spec.end,
        )
        e = e.mutate(
            src=labelled(event_prop_text(ctx, e, "from")),
            dst=labelled(event_prop_text(ctx, e, "to")),
        )
        per = e.group_by(["src", "dst"]).aggregate(
            transitions=e.count(), persons=e.person_key.nunique()
        )
        rows = per.order_by(["src", "dst"]).to_pyarrow().to_pylist()
    flows = [
        {
            "from": r["src"],
            "to": r["dst"],
            "transitions": int(r["transitions"]),
            "persons": int(r["persons"]),
        }
        for r in rows
    ]
    columns = ["from", "to", "transitions", "persons"]
    return {
        "stages": list(lifecycle.STAGES),
        "flows": flows,
        "table": table(columns, [[f[c] for c in columns] for f in flows]),
    }
