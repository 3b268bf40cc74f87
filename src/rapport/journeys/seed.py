"""The three seed journeys of issue 6, created live by ``install(ws)`` (the demo calls it).

- welcome: ``register`` → wait 1 day → did not order? → welcome coupon SMS → wait 3 days →
  still no order? → reminder SMS; leaves on the first ``order_paid`` (the goal);
- win-back: ``lifecycle_changed`` to silent or lost → branch "high value" (at least 3 paid
  orders ever) → sets the manual tag ``winback=yes`` (created by ``install``) → win-back SMS;
  leaves on ``order_paid``;
- repurchase: every ``order_paid`` → wait the person's own purchase cycle (the median
  interval between their orders of the last year; 30 days with fewer than 2 orders) →
  reminder SMS, unless they ordered again (the goal: a new order restarts the clock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapport.journeys import store
from rapport.segments import lifecycle, system_events

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def _sms(nid: str, text: str, channel: str, nxt: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": nid,
        "kind": "send",
        "params": {"channel": channel, "content": {"text": text}},
    }
    if nxt:
        node["next"] = nxt
    return node


def definitions(channel: str = "sms") -> dict[str, dict[str, Any]]:
    no_order = "not did order_paid"
    return {
        "welcome": {
            "entry": {"event": "register"},
            "entry_rule": "once",
            "goal": {"event": "order_paid"},
            "nodes": [
                {"id": "day1", "kind": "wait", "params": {"duration": "1 days"}, "next": "ordered"},
                {"id": "ordered", "kind": "branch", "params": {"condition": no_order},
                 "next": {"yes": "coupon", "no": "end"}},
                _sms("coupon", "Welcome! Your first-order coupon: WELCOME10", channel, "day4"),
                {"id": "day4", "kind": "wait", "params": {"duration": "3 days"}, "next": "still"},
                {"id": "still", "kind": "branch", "params": {"condition": no_order},
                 "next": {"yes": "reminder", "no": "end"}},
                _sms("reminder", "Your WELCOME10 coupon is waiting for you", channel),
                {"id": "end", "kind": "exit"},
            ],
        },
        "winback": {
            "entry": {"event": lifecycle.EVENT,
                      "where": [{"field": "to", "op": "in", "value": ["silent", "lost"]}]},
            "entry_rule": {"once_per": "60 days"},
            "goal": {"event": "order_paid"},
            "nodes": [
                {"id": "valuable", "kind": "branch",
                 "params": {"condition": "did order_paid at least 3 times"},
                 "next": {"yes": "tag", "no": "end"}},
                {"id": "tag", "kind": "tag", "params": {"tag": "winback", "value": "yes"},
                 "next": "send"},
                _sms("send", "We miss you: 20% off your next order with BACK20", channel),
                {"id": "end", "kind": "exit"},
            ],
        },
        "repurchase": {
            "entry": {"event": "order_paid"},
            "entry_rule": "every_time",
            "goal": {"event": "order_paid"},
            "nodes": [
                {"id": "cycle", "kind": "wait",
                 "params": {"cycle": "order_paid", "fallback_days": 30, "min_orders": 2},
                 "next": "nudge"},
                _sms("nudge", "Time to stock up again?", channel),
            ],
        },
    }  # fmt: skip


def install(ws: Workspace, channel: str = "sms") -> list[dict[str, Any]]:
    """Create the seed journeys (live) that do not exist yet; ``channel`` must exist."""
    system_events.system_source(ws, [lifecycle.EVENT], lifecycle.PLAN)
    _winback_tag(ws)
    have = {j["name"] for j in store.list_all(ws)}
    return [
        store.create(ws, name, d, description=(__doc__ or "").strip(), status="live")
        for name, d in definitions(channel).items()
        if name not in have
    ]


def _winback_tag(ws: Workspace) -> None:
    """The manual tag the win-back journey sets (its values reach the warehouse every 5
    minutes, see ``docs/tags.md``)."""
    from rapport.tags.definitions import MANUAL_SCHEDULE, TagIn, create_tag, get_tag

    if get_tag(ws.db, "winback") is None:
        body = {"name": "winback", "kind": "manual", "schedule": MANUAL_SCHEDULE,
                "description": "Set by the win-back journey to high-value lapsed customers",
                "owner": "journeys", "definition": {"values": ["yes"]}}  # fmt: skip
        create_tag(ws.db, TagIn.model_validate(body))
