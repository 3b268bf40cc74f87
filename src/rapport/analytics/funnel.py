"""Funnels: ordered steps, a conversion window, an optional breakdown.

The meaning, exactly (tests hold it):

- a person **enters** with their first event of step 1 in ``[start, end)`` (the earliest;
  later step-1 events never restart the funnel — one start per person, like Amplitude's
  "first" mode, so a person counts once and the answer does not depend on search order);
- they **reach step k** when they did steps 1..k in that order, each event strictly later
  than the one before (equal timestamps do not count as "after"), all within ``window`` of
  the entering event (inclusive), whatever the range's end. For a fixed start the earliest
  qualifying event of each step is the best continuation, so each step is one bounded join
  and a min per person; nothing loops over events in Python;
- events between steps are allowed (the order is strict, the contiguity is not);
- the breakdown value is the entering event's property, or the person's profile attribute;
  the ``top`` values by entering persons are shown, the rest summed under ``(other)``, a
  missing value under ``(none)``;
- the median time to convert of step k is over the persons who reached it, from the step
  before, in seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir

from rapport.analytics.base import batch, labelled, rate, table, top_or_other
from rapport.analytics.specs import AnalyticsError, FunnelSpec
from rapport.conditions.model import Step
from rapport.conditions.to_ibis import BatchContext, event_prop_text, step_events

if TYPE_CHECKING:
    from rapport.workspace import Workspace

ALL = "(all)"


def funnel(ws: Workspace, spec: FunnelSpec) -> dict[str, Any]:
    window = timedelta(seconds=spec.window.seconds())
    with batch(ws, spec.end + window) as ctx:
        chains = _chains(ctx, spec, window)
        n = len(spec.steps)
        overall = _measure(chains, n).to_pyarrow().to_pylist()
        groups = []
        if spec.breakdown is not None:
            shown = top_or_other(chains, "__b", chains.person_key.count(), spec.top)
            groups = _measure(shown, n, "__b").to_pyarrow().to_pylist()
    names = [s.event for s in spec.steps]
    rows = [(ALL, _steps(names, overall[0]))]
    groups.sort(key=lambda g: (-int(g["n0"] or 0), str(g["__b"])))
    rows += [(str(g["__b"]), _steps(names, g)) for g in groups]
    columns = ["breakdown", "step", "event", "persons", "conversion_from_previous"]
    columns += ["conversion_from_first", "median_seconds_from_previous"]
    return {
        "steps": rows[0][1],
        "breakdown": [{"value": v, "steps": s} for v, s in rows[1:]],
        "table": table(columns, [[v, *s.values()] for v, steps in rows for s in steps]),
    }


def _chains(ctx: BatchContext, spec: FunnelSpec, window: timedelta) -> ir.Table:
    """One row per entering person: ``person_key``, ``__b`` (breakdown value), ``t0``..``tN-1``
    (when each step was reached; NULL once a step is missed)."""
    first = spec.steps[0]
    e = step_events(ctx, Step(event=first.event, where=first.where), "$.steps[0]")
    e = e.filter(e.ts >= spec.start, e.ts < spec.end)
    b = spec.breakdown
    value = event_prop_text(ctx, e, b.name) if b and b.kind == "property" else ibis.null("string")
    e = e.mutate(
        __b=labelled(value),
        __r=ibis.row_number().over(group_by=e.person_key, order_by=[e.ts, e.event_id]),
    )
    chains = e.filter(e["__r"] == 0).select("person_key", "__b", t0=e.ts)
    if b is not None and b.kind == "attribute":
        chains = _with_attribute(ctx, chains, b.name)
    span = ibis.interval(seconds=int(window.total_seconds()))
    for k, step in enumerate(spec.steps[1:], start=1):
        s = step_events(ctx, Step(event=step.event, where=step.where), f"$.steps[{k}]")
        s = s.select(__pk=s.person_key, __tk=s.ts)
        j = chains.join(
            s,
            [
                chains.person_key == s["__pk"],
                s["__tk"] > chains[f"t{k - 1}"],
                s["__tk"] <= chains.t0 + span,
            ],
        )
        reached = j.group_by("person_key").aggregate(**{f"t{k}": j["__tk"].min()})
        chains = chains.left_join(reached, chains.person_key == reached.person_key).select(
            chains, reached[f"t{k}"]
        )
    return chains


def _with_attribute(ctx: BatchContext, chains: ir.Table, name: str) -> ir.Table:
    if "profiles" not in ctx.con.list_tables():
        raise AnalyticsError(
            "breakdown.name", "no profiles yet: build them to break down by an attribute"
        )
    p = ctx.table("profiles")
    if name not in p.columns:
        return chains  # declared but nobody has it: everyone under (none)
    j = chains.left_join(p, chains.person_key == p.person_key)
    return j.select(chains.person_key, chains.t0, __b=labelled(p[name].cast("string").nullif("")))


def _measure(chains: ir.Table, n: int, by: str | None = None) -> ir.Table:
    aggs: dict[str, ir.Value] = {"n0": chains.count()}
    for k in range(1, n):
        t, prev = chains[f"t{k}"], chains[f"t{k - 1}"]
        aggs[f"n{k}"] = t.count()
        aggs[f"m{k}"] = (t.epoch_seconds() - prev.epoch_seconds()).median()
    return chains.group_by(by).aggregate(**aggs) if by else chains.aggregate(**aggs)


def _steps(names: list[str], row: dict[str, Any]) -> list[dict[str, Any]]:
    first = int(row["n0"] or 0)
    out: list[dict[str, Any]] = []
    for k, event in enumerate(names):
        n = int(row[f"n{k}"] or 0)
        prev = out[-1]["persons"] if out else n
        median = row.get(f"m{k}")
        out.append(
            {
                "step": k + 1,
                "event": event,
                "persons": n,
                "conversion_from_previous": rate(n, prev) if out else 1.0 if n else 0.0,
                "conversion_from_first": rate(n, first),
                "median_seconds_from_previous": None if median is None else round(float(median), 1),
            }
        )
    return out
