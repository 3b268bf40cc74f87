"""The seeds' lead rule (PRODUCT.md section 4), as the rule language says it today.

"A person tagged strong purchasing power and strong consumption intent views a fridge of 5,000
yuan or more for at least 60 seconds, and orders nothing within 30 minutes" → lead type
"high-value user viewing fridges in detail", routed to outbound call.

TODO(step references): "no order *for that item*" needs a property condition that refers to an
earlier step (``order_paid.item_id == view_product.item_id``, issue 5's sequence extensions);
until the language has step references the absence is "no ``order_paid`` at all within 30
minutes", which is stricter (any order cancels the lead).
"""

from __future__ import annotations

from typing import Any

LEAD_TYPE = "high-value user viewing fridges in detail"
#: the tags the seed names (defined by the demo: ``rapport.tags.demo``)
TAGS = ("strong_purchasing_power", "strong_consumption_intent")

SEED_RULE: dict[str, Any] = {
    "name": "fridge_detail_viewers",
    "lead_type": LEAD_TYPE,
    "description": "High-value person studying a fridge of 5,000+ yuan for a minute or more, "
    "with no order within 30 minutes",
    "trigger": 'sequence view_product where category = "fridge" and price >= 5000 '
    "and duration_s >= 60 then not order_paid within 30 minutes",
    "conditions": f"has tag {TAGS[0]} and has tag {TAGS[1]}",
    "cooldown": {"amount": 7, "unit": "days"},
    "score": 80,
    "priority": 1,
    "route": "outbound_call",
    "mode": "realtime",
}
