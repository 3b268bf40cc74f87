"""The demo's leads: the seed rule live, routed to an outbound-call list, backtested over the
demo's last 30 days and caught up on them.

``rapport demo`` calls ``setup_demo_leads`` after the tags are computed (the rule reads two of
them). The catch-up fires the leads of the last 30 days of event time exactly as the stream
engine would (same dedupe keys: when ``rapport serve``'s engine later reads the log, it finds
them made already), so the inbox and the call list have leads at once.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rapport.leads import backtest, offline, routing, rules
from rapport.leads.seed import SEED_RULE

if TYPE_CHECKING:
    from rapport.workspace import Workspace

CHANNEL = "outbound_call"
DAYS = 30


def outbound_call(ws: Workspace) -> str:
    """The call-list channel and the route to it (kept when they exist)."""
    from rapport.delivery.channels import ChannelSpec, create_channel, get_channel

    if get_channel(ws.db, CHANNEL) is None:
        create_channel(
            ws.db,
            ChannelSpec.model_validate(
                {
                    "name": CHANNEL,
                    "kind": "call_list",
                    "description": "The outbound call team's list (CSV/XLSX export)",
                }
            ),
        )
    with contextlib.suppress(routing.RoutingError):  # it exists
        routing.create_route(
            ws.db,
            routing.RouteIn.model_validate(
                {"name": SEED_RULE["route"], "target_kind": "channel", "target": CHANNEL}
            ),
        )
    return CHANNEL


def seed_rule(ws: Workspace) -> rules.LeadRule:
    """The seed rule, live (created, or its definition reset)."""
    from rapport.conditions.validate import context

    ctx = context(ws)
    try:
        saved = rules.create_rule(ws.db, rules.RuleIn(**{**SEED_RULE, "owner": "demo"}), ctx)
    except rules.RuleExists:
        patch = {k: v for k, v in SEED_RULE.items() if k in rules.RulePatch.model_fields}
        saved = rules.update_rule(ws.db, SEED_RULE["name"], rules.RulePatch(**patch), ctx)
    rules.set_status(ws.db, saved["id"], "live")
    with ws.db.connect() as conn:
        return rules.load(conn, saved["id"])


def setup_demo_leads(ws: Workspace, days: int = DAYS) -> dict[str, Any]:
    """Channel, route and live seed rule; the backtest of the last ``days`` of event time and
    the leads made for them. The numbers for the demo's summary."""
    outbound_call(ws)
    rule = seed_rule(ws)
    with ws.warehouse.connect() as con:
        latest = con.table("events").ts.max().to_pyarrow().as_py()
    if latest is None:
        return {"rule": rule.name, "leads": 0, "backtest": None}
    end = latest + timedelta(microseconds=1)
    start = end - timedelta(days=days)
    tested = backtest.backtest(ws, rule, start, end)
    made = offline.run(ws, rule, end, start=start)
    return {
        "rule": rule.name,
        "days": days,
        "backtest": {k: tested[k] for k in ("matches", "passed", "leads", "persons", "goal")}
        | {"summary": tested["summary"], "seconds": tested["seconds"]},
        "leads": made["leads"],
    }
