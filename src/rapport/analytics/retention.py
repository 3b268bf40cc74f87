"""Retention cohorts: the classic triangle.

A person's **cohort** is the day (or the Monday-starting week) of their first-ever
``cohort_event``, kept when that first event falls in ``[start, end)``. They are **retained in
period n** (1..``periods``) when they did ``return_event`` on a day ``d`` with
``(d - first day) // period length == n``: periods count from each person's own first day
(n-day / n-week retention), so a same-day return is period 0 and not shown. A cell is
``None`` (the triangle's blank) when its period has not begun by ``end`` for the cohort's
first day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from rapport.analytics.base import batch, rate, table
from rapport.analytics.specs import RetentionSpec
from rapport.conditions.model import Step
from rapport.conditions.to_ibis import step_events

if TYPE_CHECKING:
    from rapport.workspace import Workspace

DAYS = {"day": 1, "week": 7}


def retention(ws: Workspace, spec: RetentionSpec) -> dict[str, Any]:
    length = DAYS[spec.period]
    with batch(ws, spec.end) as ctx:
        a = step_events(ctx, Step(event=spec.cohort_event), "$.cohort_event")
        firsts = a.group_by("person_key").aggregate(t0=a.ts.min())
        firsts = firsts.filter(firsts.t0 >= spec.start, firsts.t0 < spec.end)
        d0 = firsts.t0.date()
        firsts = firsts.select(
            "person_key", d0=d0, cohort=d0.truncate("W") if spec.period == "week" else d0
        )
        b = step_events(ctx, Step(event=spec.return_event), "$.return_event")
        b = b.filter(b.ts < spec.end).select(__pk=b.person_key, __d=b.ts.date()).distinct()
        j = firsts.join(b, [firsts.person_key == b["__pk"], b["__d"] > firsts.d0])
        j = j.mutate(n=j["__d"].delta(j.d0, unit="day") // length)
        j = j.filter(j.n <= spec.periods)
        back = j.group_by(["cohort", "n"]).aggregate(persons=j.person_key.nunique())
        sizes = firsts.group_by("cohort").aggregate(size=firsts.count())
        size_rows = sizes.order_by("cohort").to_pyarrow().to_pylist()
        back_rows = back.to_pyarrow().to_pylist()
    returned = {(r["cohort"], int(r["n"])): int(r["persons"]) for r in back_rows}
    cohorts: list[dict[str, Any]] = []
    for row in size_rows:
        cohort: date = row["cohort"]
        size = int(row["size"])
        cells = [
            returned.get((cohort, n), 0) if _begun(cohort, n, length, spec.end) else None
            for n in range(1, spec.periods + 1)
        ]
        rates = [None if c is None else rate(c, size) for c in cells]
        cohorts.append(
            {"cohort": cohort.isoformat(), "size": size, "returned": cells, "rates": rates}
        )
    columns = ["cohort", "size", *(f"{spec.period}_{n}" for n in range(1, spec.periods + 1))]
    rows = [[c["cohort"], c["size"], *c["returned"]] for c in cohorts]
    return {
        "period": spec.period,
        "periods": spec.periods,
        "cohorts": cohorts,
        "table": table(columns, rows),
    }


def _begun(cohort: date, n: int, length: int, end: datetime) -> bool:
    return datetime.combine(cohort + timedelta(days=n * length), time(), UTC) < end
