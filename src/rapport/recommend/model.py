"""The model in memory: each kind of recommendation for a person (or an item), no query.

Every answer is a list of ``Rec`` (item, score, reason); the scores of one kind are comparable
with each other, not across kinds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from rapport.recommend.build import ModelData
from rapport.recommend.params import Params

KINDS = ("guess_you_like", "repurchase", "cross_sell", "up_sell")
DAY = 86400.0


@dataclass(frozen=True)
class Rec:
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Item:
    item_id: str
    name: str
    category: str
    price: float | None
    tier: int | None
    popularity: float
    accessories: tuple[str, ...]


@dataclass(frozen=True)
class Touch:
    """What one person did with one item: the strongest signal, when, and the purchases."""

    item_id: str
    weight: float
    last: float  # epoch seconds
    bought: tuple[float, ...]


def epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _median_gap(times: Iterable[float], least: int) -> float | None:
    """The median interval in days, from at least ``least`` purchases."""
    ordered = sorted(set(times))
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    return statistics.median(gaps) / DAY if gaps and len(ordered) >= least else None


def _days(value: float) -> str:
    return f"{value:.0f} day{'' if round(value) == 1 else 's'}"


class Model:
    def __init__(self, data: ModelData, params: Params | None = None) -> None:
        self.params = params or Params()
        self.as_of = data.as_of
        self.items = {
            r["item_id"]: Item(
                r["item_id"],
                r["name"],
                r["category"],
                r["price"],
                r["tier"],
                r["popularity"],
                tuple(r["accessories"] or ()),
            )
            for r in data.items.to_pylist()
        }
        self.neighbours: dict[str, list[tuple[str, float]]] = {}
        for r in data.neighbours.sort_by(
            [("item_id", "ascending"), ("rank", "ascending")]
        ).to_pylist():
            self.neighbours.setdefault(r["item_id"], []).append((r["neighbour_id"], r["score"]))
        self.rules: dict[str, list[tuple[str, float, float]]] = {}
        for r in data.rules.to_pylist():
            self.rules.setdefault(r["antecedent"], []).append(
                (r["consequent"], r["confidence"], r["lift"])
            )
        self.cycles: dict[tuple[str, str], float] = {
            (r["level"], r["key"]): r["cycle_days"]
            for r in data.cycles.to_pylist()
            if r["repurchasable"] and r["cycle_days"]
        }
        self.persons: dict[int, list[Touch]] = {}
        for r in data.person_items.to_pylist():
            bought = tuple(epoch(t) for t in r["purchases"] or ())
            touch = Touch(r["item_id"], r["weight"], epoch(r["last_ts"]), bought)
            self.persons.setdefault(r["person_key"], []).append(touch)
        for touches in self.persons.values():
            touches.sort(key=lambda t: -t.last)
        self.popular = sorted(self.items.values(), key=lambda i: (-i.popularity, i.item_id))
        self.by_category: dict[str, list[Item]] = {}
        for item in self.popular:
            self.by_category.setdefault(item.category, []).append(item)

    # -- helpers --------------------------------------------------------------------------
    def name(self, item_id: str) -> str:
        item = self.items.get(item_id)
        return item.name if item else item_id

    def repurchasable(self, item_id: str) -> bool:
        item = self.items.get(item_id)
        in_category = item is not None and ("category", item.category) in self.cycles
        return in_category or ("item", item_id) in self.cycles

    def _excluded(self, touches: list[Touch], now: float) -> set[str]:
        """Bought recently and not a repeat-purchase item: do not offer it again."""
        horizon = now - self.params.exclude_bought_days * DAY
        return {
            t.item_id
            for t in touches
            if t.bought and t.bought[-1] >= horizon and not self.repurchasable(t.item_id)
        }

    def _anchors(self, person: int | None, item: str | None) -> list[Touch]:
        if item is not None:
            strongest = max(self.params.weights.values())  # as if the person had bought it
            return [Touch(item, strongest, epoch(self.as_of), ())]
        return self.persons.get(person, []) if person is not None else []

    @staticmethod
    def _top(scores: dict[str, tuple[float, str]], n: int) -> list[Rec]:
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
        return [Rec(item, round(score, 6), reason) for item, (score, reason) in ranked]

    # -- the four kinds ---------------------------------------------------------------------
    def recommend(
        self,
        kind: str,
        person: int | None = None,
        n: int = 10,
        at: datetime | None = None,
        item: str | None = None,
    ) -> list[Rec]:
        """``kind`` for a person (by key) or, for the item-based kinds, for one item."""
        now = epoch(at or datetime.now(UTC))
        if kind == "repurchase":
            return self.repurchase(person, n, now)
        touches = self._anchors(person, item)
        if kind == "guess_you_like":
            return self.guess_you_like(touches, n, now, fill=item is None)
        if kind == "cross_sell":
            return self.cross_sell(touches, n)
        if kind == "up_sell":
            return self.up_sell(touches, n)
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")

    def guess_you_like(self, touches: list[Touch], n: int, now: float, fill: bool) -> list[Rec]:
        """Neighbours of the person's recent items, each seed weighted by its signal and age;
        topped up with popular items for a person with little history."""
        excluded = self._excluded(touches, now)
        scores: dict[str, float] = {}
        because: dict[str, tuple[float, str]] = {}
        for t in touches[: self.params.recent_items]:
            decay = 0.5 ** (max(0.0, now - t.last) / DAY / self.params.half_life_days)
            for other, similarity in self.neighbours.get(t.item_id, ()):
                if other in excluded:
                    continue
                part = similarity * t.weight * decay
                scores[other] = scores.get(other, 0.0) + part
                if part > because.get(other, (0.0, ""))[0]:
                    because[other] = (part, t.item_id)
        out = {
            i: (s, f"similar to {self.name(because[i][1])}, which you looked at or bought")
            for i, s in scores.items()
        }
        ranked = self._top(out, n)
        if fill and len(ranked) < n:
            have = {r.item_id for r in ranked} | excluded
            extra = [i for i in self.popular if i.item_id not in have][: n - len(ranked)]
            ranked += [Rec(i.item_id, 0.0, "popular with other shoppers") for i in extra]
        return ranked

    def repurchase(self, person: int | None, n: int, now: float) -> list[Rec]:
        """Items bought before whose cycle is due: the person's own median interval between
        purchases of the item, else of its category (from ``min_own_purchases``), else the
        item's (or category's) cycle across all buyers when it is repurchasable."""
        touches = self.persons.get(person, []) if person is not None else []
        by_category: dict[str, list[float]] = {}
        for t in touches:
            item = self.items.get(t.item_id)
            if item is not None and t.bought:
                by_category.setdefault(item.category, []).extend(t.bought)
        scores: dict[str, tuple[float, str]] = {}
        for t in touches:
            if not t.bought:
                continue
            category = self.items[t.item_id].category if t.item_id in self.items else ""
            least = self.params.min_own_purchases
            own_item = _median_gap(t.bought, least)
            own_category = _median_gap(by_category.get(category, ()), least)
            found = [
                (own_item, "your usual interval"),
                (own_category, f"your usual interval for {category}"),
                (self.cycles.get(("item", t.item_id)), "the usual interval of its buyers"),
                (self.cycles.get(("category", category)), f"the usual {category} interval"),
            ]
            cycle, source = next(((c, s) for c, s in found if c), (None, ""))
            if cycle is None:
                continue
            elapsed = (now - t.bought[-1]) / DAY
            ratio = elapsed / cycle
            if self.params.due_share <= ratio <= self.params.overdue_cycles:
                reason = f"last bought {_days(elapsed)} ago; {source} is {_days(cycle)}"
                scores[t.item_id] = (1.0 / (1.0 + abs(ratio - 1.0)), reason)
        return self._top(scores, n)

    def cross_sell(self, touches: list[Touch], n: int) -> list[Rec]:
        """Accessories of the items bought (from item attributes), then the association rules
        of the items bought (or put in the cart when nothing was bought)."""
        anchors = [t for t in touches if t.bought] or [
            t for t in touches if t.weight >= self.params.weights["add_to_cart"]
        ]
        owned = {t.item_id for t in touches if t.bought} - {
            t.item_id for t in touches if self.repurchasable(t.item_id)
        }
        scores: dict[str, tuple[float, str]] = {}

        def offer(item_id: str, score: float, reason: str) -> None:
            if item_id not in owned and score > scores.get(item_id, (0.0, ""))[0]:
                scores[item_id] = (score, reason)

        for t in anchors[: self.params.recent_items]:
            anchor = self.items.get(t.item_id)
            for accessory in anchor.accessories if anchor else ():
                offer(accessory, 1.0, f"goes with {self.name(t.item_id)}")
            for other, confidence, lift in self.rules.get(t.item_id, ()):
                offer(
                    other, confidence, f"often bought with {self.name(t.item_id)} (lift {lift:.1f})"
                )
        return self._top(scores, n)

    def up_sell(self, touches: list[Touch], n: int) -> list[Rec]:
        """Items of the same category in a higher price tier than what the person looked at or
        bought (and not one of those), the next tier first, popular ones first in a tier."""
        top_pop = self.popular[0].popularity if self.popular else 0.0
        scores: dict[str, tuple[float, str]] = {}
        seen = {t.item_id for t in touches}
        for t in touches[: self.params.recent_items]:
            anchor = self.items.get(t.item_id)
            if anchor is None or anchor.tier is None or anchor.price is None:
                continue
            for item in self.by_category.get(anchor.category, ()):
                if (
                    item.tier is None
                    or item.price is None
                    or item.tier <= anchor.tier
                    or item.price <= anchor.price
                    or item.item_id in seen
                ):
                    continue
                gap = item.tier - anchor.tier
                score = 1.0 / gap + 0.5 * item.popularity / (top_pop or 1.0)
                reason = f"a step up from {anchor.name} ({anchor.price:,.0f} to {item.price:,.0f})"
                if score > scores.get(item.item_id, (0.0, ""))[0]:
                    scores[item.item_id] = (score, reason)
        return self._top(scores, n)
