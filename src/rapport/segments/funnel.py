"""The AARRR funnel (acquisition, activation, retention, revenue, referral) at ``as_of``.

- acquisition: every person seen (the universe);
- activation: did an activation event (the lifecycle's: an order or a hotel booking);
- retention: activated, and active in the last ``retained_days`` days after activating;
- revenue: two or more purchases (activation events);
- referral: did ``share`` or ``invite`` (0 when the plan has no such event).

Each stage's conversion is given against the stage before and against acquisition (referral
counts referrers among the activated).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rapport.segments import bitmaps, lifecycle, system_events

if TYPE_CHECKING:
    from rapport.workspace import Workspace

REFERRAL_EVENTS = ("share", "invite")
STAGES = ("acquisition", "activation", "retention", "revenue", "referral")


def funnel(ws: Workspace, as_of: datetime | None = None) -> dict[str, Any]:
    when = as_of or datetime.now(UTC)
    conf = lifecycle.definition(ws)
    activation = list(conf["activation_events"])
    since = when - timedelta(days=int(conf["retained_days"]))
    with ws.warehouse.connect() as con:
        ev = con.table("events")
        ev = ev.filter(ev.person_key >= 0, ev.ts <= when, ev.source != system_events.SOURCE)
        is_act = ev.event.isin(activation)
        per = ev.group_by("person_key").aggregate(
            first_act=ev.ts.min(where=is_act),
            purchases=is_act.sum(),
            last=ev.ts.max(),
            referred=ev.event.isin(list(REFERRAL_EVENTS)).any(),
        )
        acquired = bitmaps.universe_table(con).count()
        activated = per.first_act.notnull()
        counts = per.aggregate(
            activation=activated.sum(),
            retention=(activated & (per["last"] > per.first_act) & (per["last"] > since)).sum(),
            revenue=(per.purchases >= 2).sum(),
            referral=(activated & per.referred).sum(),
        ).to_pyarrow()
        total = int(acquired.to_pyarrow().as_py())
    row = {k: int(v or 0) for k, v in counts.to_pylist()[0].items()}
    sizes = {"acquisition": total, **row}
    stages = []
    previous = None
    for name in STAGES:
        n = sizes[name]
        stages.append(
            {
                "stage": name,
                "persons": n,
                "of_previous": _rate(n, previous if previous is not None else n),
                "of_acquired": _rate(n, total),
            }
        )
        previous = n
    return {"as_of": when.isoformat(), "activation_events": activation, "stages": stages}


def _rate(n: int, of: int) -> float:
    return round(n / of, 4) if of else 0.0
