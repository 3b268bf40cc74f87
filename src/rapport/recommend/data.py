"""What the model reads from the warehouse, as Ibis expressions (run by DuckDB, not Python).

Purchases come from both the order system's import and the shop's tracking (``order_paid``
twice, or ``order_paid`` and ``book_hotel``, which has no order id): purchases of one item by
one person less than ``SAME_PURCHASE`` apart count as one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import orjson
from ibis import _
from ibis.backends.duckdb import Backend

from rapport.recommend.params import Params
from rapport.warehouse import Warehouse
from rapport.warehouse.loader import typed_value

DAY = 86400.0
SAME_PURCHASE = 3600.0  # seconds


def _prop(events: ir.Table, columns: dict[str, str], name: str, kind: str) -> ir.Value:
    """A property from its typed column when the plan declares it, else from the JSON."""
    if name in columns:
        return events[columns[name]].cast("float64" if kind == "number" else "string")
    return typed_value(events.properties[name], kind)


def interactions(wh: Warehouse, con: Backend, params: Params, until: datetime) -> ir.Table:
    """(person_key, item_id, event, weight, ts) of every weighted event before
    ``until`` within the history window."""
    events = con.table("events")
    columns = wh.event_prop_columns(con)
    since = until - timedelta(days=params.history_days)
    events = events.filter(
        events.event.isin(list(params.weights)),
        events.person_key >= 0,  # -1: records with no usable identifier (nobody)
        events.ts < until,
        events.ts >= since,
    )
    rows = events.select(
        "person_key", "event", "ts", item_id=_prop(events, columns, "item_id", "string")
    ).filter(_.item_id.notnull())
    weights = ibis.memtable(
        {"w_event": list(params.weights), "weight": list(params.weights.values())}
    )
    return rows.join(weights, rows.event == weights.w_event).drop("w_event")


def purchases(rows: ir.Table, params: Params) -> ir.Table:
    """(person_key, item_id, ts): one row per purchase, the copies of it dropped."""
    bought = rows.filter(rows.event.isin(list(params.purchases)))
    seconds = bought.ts.epoch_seconds()
    previous = seconds.lag().over(group_by=[bought.person_key, bought.item_id], order_by=bought.ts)
    bought = bought.mutate(gap=seconds - previous)
    first = bought.gap.isnull() | (bought.gap >= SAME_PURCHASE)
    return bought.filter(first).select("person_key", "item_id", "ts")


def person_items(rows: ir.Table, bought: ir.Table) -> ir.Table:
    """(person_key, item_id, weight, last_ts, purchases): what each person did with each item;
    ``purchases`` is the sorted list of purchase times."""
    touched = rows.group_by(["person_key", "item_id"]).agg(
        weight=_.weight.max(), last_ts=_.ts.max()
    )
    times = bought.group_by(["person_key", "item_id"]).agg(purchases=_.ts.collect(order_by=_.ts))
    joined = touched.left_join(times, ["person_key", "item_id"])
    return joined.select("person_key", "item_id", "weight", "last_ts", "purchases")


def neighbours(pairs: ir.Table, params: Params) -> ir.Table:
    """Item-item cosine similarity of the person x item weight matrix, top-K per item.

    Only each person's most recent items enter the self-join, which bounds its size.
    """
    rank = ibis.row_number().over(group_by=pairs.person_key, order_by=pairs.last_ts.desc())
    m = pairs.mutate(r=rank).filter(_.r < params.max_items_per_person).drop("r")
    other = m.view()
    products = m.join(other, [m.person_key == other.person_key, m.item_id != other.item_id]).select(
        item_id=m.item_id, neighbour_id=other.item_id, p=m.weight * other.weight
    )
    dots = products.group_by(["item_id", "neighbour_id"]).agg(dot=_.p.sum(), co=_.count())
    dots = dots.filter(dots.co >= params.min_co_persons)
    norms = m.group_by("item_id").agg(norm=(_.weight * _.weight).sum().sqrt())
    n2 = norms.view()
    scored = dots.join(norms, dots.item_id == norms.item_id).join(
        n2, dots.neighbour_id == n2.item_id
    )
    scored = scored.select(
        dots.item_id, dots.neighbour_id, dots.co, score=dots.dot / (norms.norm * n2.norm)
    )
    order = [scored.score.desc(), scored.neighbour_id]
    top = ibis.row_number().over(group_by=scored.item_id, order_by=order)
    return scored.mutate(rank=top).filter(_.rank < params.neighbours)


def rules(bought: ir.Table, params: Params) -> ir.Table:
    """Association rules A -> B over baskets: a basket is the set of items a person bought in
    the history window (the demo's orders hold one item each, so orders alone pair nothing).

    support = n(A and B) / buyers, confidence = n(A and B) / n(A), lift = confidence /
    (n(B) / buyers).
    """
    baskets = bought.select("person_key", "item_id").distinct()
    buyers = baskets.person_key.nunique().as_scalar()
    counts = baskets.group_by("item_id").agg(n=_.count())
    other = baskets.view()
    pairs = baskets.join(
        other, [baskets.person_key == other.person_key, baskets.item_id != other.item_id]
    ).select(antecedent=baskets.item_id, consequent=other.item_id)
    both = pairs.group_by(["antecedent", "consequent"]).agg(n=_.count())
    c2 = counts.view()
    stats = both.join(counts, both.antecedent == counts.item_id).join(
        c2, both.consequent == c2.item_id
    )
    stats = stats.select(
        both.antecedent,
        both.consequent,
        both.n,
        support=both.n / buyers,
        confidence=both.n / counts.n,
        lift=(both.n / counts.n) / (c2.n / buyers),
    ).filter(
        _.support >= params.min_support,
        _.confidence >= params.min_confidence,
        _.lift >= params.min_lift,
    )
    order = [stats.confidence.desc(), stats.lift.desc(), stats.consequent]
    top = ibis.row_number().over(group_by=stats.antecedent, order_by=order)
    return stats.mutate(rank=top).filter(_.rank < params.rules_per_item).drop("rank")


def cycles(bought: ir.Table, category: ir.Table, params: Params) -> ir.Table:
    """Population purchase cycles: (level, key, cycle_days, buyers, repeaters) for every item
    and every category, where ``cycle_days`` is the median interval between a person's
    consecutive purchases of it; ``repurchasable`` when enough of its buyers bought again."""
    rows = bought.left_join(category, bought.item_id == category.item_id).select(
        bought.person_key, bought.item_id, bought.ts, category=category.category
    )

    def level(name: str, key: ir.Value) -> ir.Table:
        t = rows.mutate(key=key).filter(_.key.notnull())
        seconds = t.ts.epoch_seconds()
        gap = (seconds - seconds.lag().over(group_by=[t.person_key, t.key], order_by=t.ts)) / DAY
        t = t.mutate(gap=gap)
        repeat = t.gap.notnull() & (t.gap > 0)
        out = t.group_by("key").agg(
            cycle_days=t.gap.median(where=repeat),
            buyers=t.person_key.nunique(),
            repeaters=t.person_key.nunique(where=repeat),
        )
        return out.mutate(
            level=ibis.literal(name),
            repurchasable=(out.repeaters >= params.min_repeaters)
            & (out.repeaters >= out.buyers * params.min_repeat_share),
        )

    by_item = level("item", rows.item_id)
    by_category = level("category", rows.category)
    return by_item.union(by_category).select(
        "level", "key", "cycle_days", "buyers", "repeaters", "repurchasable"
    )


def popularity(pairs: ir.Table) -> ir.Table:
    """(item_id, popularity, buyers): summed weights and persons who bought it."""
    return pairs.group_by("item_id").agg(
        popularity=_.weight.sum(), buyers=_.purchases.notnull().sum()
    )


def catalogue(con: Backend, rows: ir.Table, wh: Warehouse) -> list[dict[str, Any]]:
    """Every item with its attributes: the ``items`` table first, then what events say about
    items missing from it (category and price of the views)."""
    items = con.table("items").select("item_type", "item_id", "properties")
    found: dict[str, dict[str, Any]] = {}
    for row in items.to_pyarrow().to_pylist():
        props = orjson.loads(row["properties"]) if row["properties"] else {}
        props.setdefault("category", row["item_type"])
        found[row["item_id"]] = {**props, "item_id": row["item_id"]}
    events = con.table("events")
    columns = wh.event_prop_columns(con)
    seen = rows.select("item_id").distinct()
    missing = seen.filter(~seen.item_id.isin(list(found) or [""]))
    if missing.count().to_pyarrow().as_py():
        views = events.filter(events.event == "view_product").select(
            item_id=_prop(events, columns, "item_id", "string"),
            category=_prop(events, columns, "category", "string"),
            price=_prop(events, columns, "price", "number"),
        )
        views = views.join(missing, "item_id")
        facts = views.group_by("item_id").agg(category=_.category.mode(), price=_.price.median())
        for row in facts.to_pyarrow().to_pylist():
            found[row["item_id"]] = row
    return list(found.values())
