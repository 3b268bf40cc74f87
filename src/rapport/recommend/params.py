"""The knobs of the model, with the defaults docs/recommend.md explains."""

from __future__ import annotations

from dataclasses import dataclass, field

#: How much one kind of behaviour says about liking an item; a person-item pair keeps the
#: strongest signal it has (a purchase is not made stronger by the views that led to it).
WEIGHTS: dict[str, float] = {
    "view_product": 1.0,
    "add_to_cart": 2.0,
    "favorite": 3.0,
    "add_favorite": 3.0,
    "favourite": 3.0,
    "order_paid": 4.0,
    "book_hotel": 4.0,
}
#: Events that are purchases (their times feed repurchase cycles and association rules).
PURCHASES = ("order_paid", "book_hotel")


@dataclass(frozen=True)
class Params:
    weights: dict[str, float] = field(default_factory=lambda: dict(WEIGHTS))
    purchases: tuple[str, ...] = PURCHASES
    history_days: int = 180  # behaviour older than this is ignored
    max_items_per_person: int = 50  # most recent items of a person in the co-occurrence join
    neighbours: int = 20  # top-K similar items kept per item
    min_co_persons: int = 2  # persons who touched both items, for a similarity to count
    min_support: float = 0.001  # association rules: share of buyers holding both items
    min_confidence: float = 0.05
    min_lift: float = 1.1
    rules_per_item: int = 20
    min_repeat_share: float = 0.35  # an item/category is repurchasable when this share of its
    min_repeaters: int = 3  # buyers (and at least this many) bought it again
    recent_items: int = 20  # a person's items that seed guess-you-like and up-sell
    half_life_days: float = 30.0  # weight of a seed item halves every half-life
    exclude_bought_days: int = 90  # bought this recently: not recommended again (unless due)
    min_own_purchases: int = 3  # a person's own cycle needs this many purchases (a habit)
    due_share: float = 0.9  # repurchase is due from 0.9 x the cycle ...
    overdue_cycles: float = 3.0  # ... until 3 cycles have passed (then the habit is gone)
    tiers: int = 3  # price tiers per category for up-sell
