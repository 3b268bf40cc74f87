"""The seeds' lead rule (PRODUCT.md section 4), verbatim.

"A person tagged strong purchasing power and strong consumption intent views a fridge of 5,000
yuan or more for at least 60 seconds, and orders nothing for that item within 30 minutes" →
lead type "high-value user viewing fridges in detail", routed to outbound call. "That item" is
a step reference (``v.item_id``): ``order_paid`` carries the ``item_id`` it paid for.
"""

from __future__ import annotations

from typing import Any

LEAD_TYPE = "high-value user viewing fridges in detail"
#: the tags the seed names (defined by the demo: ``rapport.tags.demo``)
TAGS = ("strong_purchasing_power", "strong_consumption_intent")

#: the seed's trigger: "no order for that item" refers to the view's ``item_id``
ITEM_TRIGGER = (
    'sequence view_product as v where category = "fridge" and price >= 5000 '
    "and duration_s >= 60 then not order_paid where item_id = v.item_id within 30 minutes"
)

SEED_RULE: dict[str, Any] = {
    "name": "fridge_detail_viewers",
    "lead_type": LEAD_TYPE,
    "description": "High-value person studying a fridge of 5,000+ yuan for a minute or more, "
    "with no order for it within 30 minutes",
    "trigger": ITEM_TRIGGER,
    "conditions": f"has tag {TAGS[0]} and has tag {TAGS[1]}",
    "cooldown": {"amount": 7, "unit": "days"},
    "score": 80,
    "priority": 1,
    "route": "outbound_call",
    "mode": "realtime",
}
