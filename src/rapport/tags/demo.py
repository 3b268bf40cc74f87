"""The demo's tags: one of each kind the console shows, including the seed rule tag
``high_net_worth`` (30+ hotel bookings over 2,000 yuan in the last 30 days) and the two tags
the seed lead rule names (strong purchasing power, strong consumption intent)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapport.tags.definitions import TagIn, upsert_tag

if TYPE_CHECKING:
    from rapport.workspace import Workspace

HIGH_NET_WORTH = {
    "kind": "did",
    "event": "book_hotel",
    "where": [{"field": "price", "op": ">", "value": 2000}],
    "agg": "count",
    "op": ">=",
    "threshold": 30,
    "window": {"last": {"amount": 30, "unit": "days"}},
}

AGE_BANDS = [
    {"label": "under 18", "max": 18},
    {"label": "18-24", "min": 18, "max": 25},
    {"label": "25-34", "min": 25, "max": 35},
    {"label": "35-44", "min": 35, "max": 45},
    {"label": "45-54", "min": 45, "max": 55},
    {"label": "55+", "min": 55},
]
GENDER = {"男": "male", "M": "male", "m": "male", "1": "male", "male": "male"}
GENDER |= {"女": "female", "F": "female", "f": "female", "0": "female", "female": "female"}
CITY_TIER = {"北京": "tier 1", "上海": "tier 1", "广州": "tier 1", "深圳": "tier 1"}
CITY_TIER |= dict.fromkeys(
    ["成都", "杭州", "重庆", "西安", "苏州", "武汉", "南京", "天津", "郑州", "长沙"]
    + ["沈阳", "青岛", "宁波", "合肥", "昆明", "厦门"],
    "new tier 1",
)
SPEND_BANDS = [
    {"label": "< 1k", "max": 1000},
    {"label": "1k-5k", "min": 1000, "max": 5000},
    {"label": "5k-20k", "min": 5000, "max": 20000},
    {"label": "20k+", "min": 20000},
]

DEMO_TAGS: list[dict[str, Any]] = [
    {
        "name": "high_net_worth",
        "kind": "rule",
        "description": "30+ hotel bookings over 2,000 yuan in the last 30 days",
        "definition": {"condition": HIGH_NET_WORTH, "value": "yes"},
    },
    {
        "name": "prefers_hotel_stays",
        "kind": "rule",
        "description": "Booked a hotel at least 3 times in the last 180 days",
        "definition": {
            "condition": {
                "kind": "did",
                "event": "book_hotel",
                "op": ">=",
                "threshold": 3,
                "window": {"last": {"amount": 180, "unit": "days"}},
            },
            "value": "yes",
        },
    },
    {
        "name": "strong_purchasing_power",
        "kind": "rule",
        "description": "Paid 8,000 yuan or more in the last 365 days",
        "definition": {
            "condition": {
                "kind": "did",
                "event": "order_paid",
                "agg": "sum",
                "property": "amount",
                "op": ">=",
                "threshold": 8000,
                "window": {"last": {"amount": 365, "unit": "days"}},
            },
            "value": "yes",
        },
    },
    {
        "name": "strong_consumption_intent",
        "kind": "rule",
        "description": "Viewed products 5+ times or added to cart in the last 14 days",
        "definition": {
            "condition": {
                "kind": "or",
                "any": [
                    {
                        "kind": "did",
                        "event": "view_product",
                        "op": ">=",
                        "threshold": 5,
                        "window": {"last": {"amount": 14, "unit": "days"}},
                    },
                    {
                        "kind": "did",
                        "event": "add_to_cart",
                        "window": {"last": {"amount": 14, "unit": "days"}},
                    },
                ],
            },
            "value": "yes",
        },
    },
    {
        "name": "age_band",
        "kind": "attribute",
        "description": "Age band from the birthday (any of the spellings the sources use)",
        "definition": {"field": "birthday", "transform": "age_band", "bands": AGE_BANDS},
    },
    {
        "name": "gender",
        "kind": "attribute",
        "description": "男/女, M/F, 1/0 as male / female",
        "definition": {"field": "gender", "map": GENDER},
    },
    {
        "name": "city_tier",
        "kind": "attribute",
        "description": "City tier of the home city",
        "definition": {"field": "city", "map": CITY_TIER, "default": "other"},
    },
    {
        "name": "orders_30d",
        "kind": "statistical",
        "value_type": "number",
        "description": "Paid orders in the last 30 days",
        "definition": {"event": "order_paid", "agg": "count", "window_days": 30},
    },
    {
        "name": "spend_90d",
        "kind": "statistical",
        "description": "Amount paid in the last 90 days, banded",
        "definition": {
            "event": "order_paid",
            "agg": "sum",
            "property": "amount",
            "window_days": 90,
            "bands": SPEND_BANDS,
        },
    },
    {
        "name": "avg_order_value",
        "kind": "statistical",
        "value_type": "number",
        "description": "Average order amount in the last 365 days",
        "definition": {
            "event": "order_paid",
            "agg": "avg",
            "property": "amount",
            "window_days": 365,
        },
    },
    {
        "name": "last_purchase",
        "kind": "statistical",
        "value_type": "date",
        "description": "Day of the latest paid order",
        "definition": {"event": "order_paid", "agg": "last_date"},
    },
    {
        "name": "favourite_category",
        "kind": "statistical",
        "description": "Most viewed product category in the last 90 days",
        "definition": {
            "event": "view_product",
            "agg": "top_value",
            "property": "category",
            "window_days": 90,
        },
    },
]


def define_demo_tags(ws: Workspace) -> list[str]:
    """Create (or reset) the demo tags; returns their names. Compute them with ``compute_all``."""
    for spec in DEMO_TAGS:
        upsert_tag(ws.db, TagIn(owner="demo", schedule="daily", **spec))
    return [spec["name"] for spec in DEMO_TAGS]
