"""Synthetic warehouse for the segments benchmark: 1 M persons, ~100 M events over 180 days.

Seeded and vectorised (numpy -> Arrow record batches -> DuckDB ``INSERT``), written straight
into a DuckDB file with the project's layout (``rapport.warehouse.layout``, via
``Warehouse.connect``): ``profiles``, ``events`` (typed ``prop_<name>`` columns and the
``properties`` JSON), ``items``, ``tag_values`` for 20 tags, ``segment_members`` for a few
audiences and one segmentation. ``person_daily`` is left empty: building it is the engine's
job (``rapport.tags.rollups``) and part of what the benchmark measures.

Events are generated one day at a time (~555,000 rows each) and inserted in
(day, person_key, ts) order, the order ``Warehouse.compact_events`` keeps, so peak memory is
one day's arrays. The finished file is cached under ``/tmp/rapport-bench-segments/`` keyed by
seed and size; a half-written file is never reused (it is renamed into place at the end).

Run as a script to (re)build the cache: ``PERSONS=100000 EVENTS=10000000 .venv/bin/python
bench/segments/generate.py``; it prints the path.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from rapport.warehouse import Warehouse

PERSONS = int(os.environ.get("PERSONS", "1000000"))
EVENTS = int(os.environ.get("EVENTS", "100000000"))
SEED = int(os.environ.get("SEED", "11"))
DAYS = 180
CACHE = Path(os.environ.get("BENCH_CACHE", "/tmp/rapport-bench-segments"))
#: the benchmark's "now": the end of the generated 180 days
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
FIRST_DAY = (AS_OF - timedelta(days=DAYS)).date()

EVENT_NAMES = ["view_product", "add_to_cart", "order_paid", "book_hotel", "search", "login"]
EVENT_SHARE = [0.45, 0.12, 0.06, 0.05, 0.17, 0.15]
CATEGORIES = ["phone", "laptop", "tablet", "audio", "camera", "watch", "tv", "gaming"]
CITIES = ["上海", "北京", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "重庆"]
CITY_SHARE = [0.16, 0.15, 0.11, 0.11, 0.09, 0.09, 0.08, 0.08, 0.07, 0.06]
LEVELS = ["bronze", "silver", "gold", "platinum"]
LEVEL_SHARE = [0.55, 0.28, 0.13, 0.04]
KEYWORDS = [f"kw{i:03d}" for i in range(200)]
PRODUCTS = 20_000
HOTELS = 3_000
#: 20 tags: name -> (values, share of persons with a value, values per person)
TAGS: dict[str, tuple[list[str], float, int]] = {
    "age_band": (["<25", "25-34", "35-44", "45-54", "55+"], 0.92, 1),
    "city_tier": (["tier1", "tier2", "tier3"], 0.97, 1),
    "gender": (["male", "female"], 0.95, 1),
    "value_tier": (["low", "mid", "high", "top"], 0.80, 1),
    "rfm": ([f"{r}{f}{m}" for r in "123" for f in "123" for m in "123"], 0.75, 1),
    "churn_risk": (["low", "medium", "high"], 0.70, 1),
    "cluster": ([f"c{i}" for i in range(8)], 0.85, 1),
    "favourite_category": (CATEGORIES, 0.60, 1),
    "interests": (["travel", "tech", "food", "sport", "music", "books", "beauty"], 0.55, 3),
    "prefers_hotel": (["yes"], 0.25, 1),
    "high_net_worth": (["yes"], 0.03, 1),
    "orders_30d": (["0", "1", "2-3", "4+"], 0.90, 1),
    "spend_90d": (["<500", "500-2000", "2000-10000", "10000+"], 0.90, 1),
    "app_user": (["yes"], 0.62, 1),
    "coupon_lover": (["yes"], 0.18, 1),
    "night_owl": (["yes"], 0.22, 1),
    "device": (["ios", "android", "web"], 0.88, 2),
    "channel": (["organic", "paid", "referral", "social"], 0.83, 1),
    "member_since": (["2020", "2021", "2022", "2023", "2024", "2025", "2026"], 0.99, 1),
    "newsletter": (["subscribed"], 0.41, 1),
}
#: audiences: name -> share of persons
AUDIENCES = {"vip": 0.05, "newsletter": 0.40, "winback_2026": 0.15, "app_push": 0.60}
#: typed event property columns (plan types)
PROPS = {
    "category": "string",
    "price": "number",
    "item_id": "string",
    "amount": "number",
    "nights": "integer",
    "keyword": "string",
}


def cache_path(persons: int = PERSONS, events: int = EVENTS, seed: int = SEED) -> Path:
    return CACHE / f"segments-p{persons}-e{events}-s{seed}.duckdb"


def ensure(persons: int = PERSONS, events: int = EVENTS, seed: int = SEED) -> Path:
    """The cached warehouse file for this size and seed, generated if missing."""
    path = cache_path(persons, events, seed)
    if not path.exists():
        generate(path, persons, events, seed)
    return path


def generate(path: Path, persons: int, events: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    for leftover in (partial, partial.with_suffix(".partial.wal")):
        leftover.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    with Warehouse(partial).connect() as con:
        db = con.con  # the DuckDB connection: bulk inserts from Arrow
        db.execute("SET preserve_insertion_order = false")
        for name, kind in PROPS.items():
            sql_type = {"string": "VARCHAR", "number": "DOUBLE", "integer": "BIGINT"}[kind]
            db.execute(f'ALTER TABLE events ADD COLUMN "prop_{name}" {sql_type}')
        _profiles(db, rng, persons)
        _items(db, rng)
        _tags(db, rng, persons)
        _audiences(db, rng, persons)
        _events(db, rng, persons, events)
        db.execute("CHECKPOINT")
    partial.rename(path)
    took = time.monotonic() - started
    print(f"generated {persons:,} persons, {events:,} events in {took:.0f} s -> {path}")


def _insert(db: object, table: str, batch: pa.Table | pa.RecordBatch, select: str = "*") -> None:
    db.register("batch", batch)  # type: ignore[attr-defined]
    db.execute(f"INSERT INTO {table} BY NAME SELECT {select} FROM batch")  # type: ignore[attr-defined]
    db.unregister("batch")  # type: ignore[attr-defined]


def _pick(rng: np.random.Generator, options: list[str], share: list[float], n: int) -> pa.Array:
    codes = rng.choice(len(options), size=n, p=share).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(options)).cast(pa.string())


def _iso_days(rng_days: np.ndarray) -> pa.Array:
    """Days since 1970 -> 'YYYY-MM-DD' strings."""
    return pa.array(rng_days.astype("datetime64[D]")).cast(pa.string())


def _profiles(db: object, rng: np.random.Generator, persons: int) -> None:
    """One row per person, every column text (as ``build_profiles`` writes them); ~3 % of
    birthdays and cities missing."""
    born = np.datetime64("1960-01-01").astype(int) + rng.integers(0, 365 * 45, persons)
    registered = np.datetime64("2020-01-01").astype(int) + rng.integers(0, 365 * 6 + 300, persons)
    birthday = _iso_days(born)
    city = _pick(rng, CITIES, CITY_SHARE, persons)
    birthday = pa.compute.if_else(pa.array(rng.random(persons) < 0.03), None, birthday)
    city = pa.compute.if_else(pa.array(rng.random(persons) < 0.03), None, city)
    table = pa.table(
        {
            "person_key": pa.array(np.arange(persons, dtype=np.int64)),
            "gender": _pick(rng, ["M", "F"], [0.48, 0.52], persons),
            "birthday": birthday,
            "city": city,
            "member_level": _pick(rng, LEVELS, LEVEL_SHARE, persons),
            "registered_at": pa.compute.binary_join_element_wise(
                _iso_days(registered), pa.scalar("T08:00:00+00:00"), ""
            ),
            "updated_at": pa.array(np.full(persons, AS_OF), type=pa.timestamp("us", tz="UTC")),
        }
    )
    db.register("batch", table)  # type: ignore[attr-defined]
    db.execute("CREATE TABLE profiles AS SELECT * FROM batch ORDER BY person_key")  # type: ignore[attr-defined]
    db.unregister("batch")  # type: ignore[attr-defined]


def _items(db: object, rng: np.random.Generator) -> None:
    ids = [f"p{i:05d}" for i in range(PRODUCTS)] + [f"h{i:04d}" for i in range(HOTELS)]
    kinds = ["product"] * PRODUCTS + ["hotel"] * HOTELS
    category = [CATEGORIES[i % len(CATEGORIES)] for i in range(PRODUCTS)] + ["hotel"] * HOTELS
    brand = rng.choice(["acme", "zeta", "nova", "orion", "lumen"], PRODUCTS + HOTELS).tolist()
    table = pa.table(
        {
            "item_key": [f"{k}:{i}:bench" for k, i in zip(kinds, ids, strict=True)],
            "item_type": kinds,
            "item_id": ids,
            "source": ["bench"] * len(ids),
            "category": category,
            "brand": brand,
        }
    )
    _insert(
        db,
        "items",
        table,
        "item_key, item_type, item_id, source, "
        "json_object('category', category, 'brand', brand) AS properties",
    )


def _tags(db: object, rng: np.random.Generator, persons: int) -> None:
    for tag, (values, share, per_person) in TAGS.items():
        have = np.flatnonzero(rng.random(persons) < share)
        keys, codes = [], []
        for k in range(per_person):  # multi-valued tags: each extra value for ~half of them
            who = have if k == 0 else have[rng.random(len(have)) < 0.5]
            keys.append(who)
            codes.append(rng.integers(0, len(values), len(who)))
        key = np.concatenate(keys)
        code = np.concatenate(codes)
        # a person's repeated value would be one row: keep (person, value) unique
        packed = np.unique(key * 64 + code)
        table = pa.table(
            {
                "person_key": pa.array(packed // 64),
                "tag": pa.array([tag] * len(packed)),
                "value": pa.DictionaryArray.from_arrays(
                    pa.array((packed % 64).astype(np.int32)), pa.array(values)
                ).cast(pa.string()),
                "run_id": pa.array(np.ones(len(packed), dtype=np.int64)),
            }
        )
        _insert(db, "tag_values", table)


def _audiences(db: object, rng: np.random.Generator, persons: int) -> None:
    for name, share in AUDIENCES.items():
        who = np.flatnonzero(rng.random(persons) < share)
        table = pa.table(
            {
                "segment": pa.array([name] * len(who)),
                "bucket": pa.nulls(len(who), pa.string()),
                "person_key": pa.array(who.astype(np.int64)),
            }
        )
        _insert(db, "segment_members", table)
    # a segmentation: everybody in exactly one lifecycle stage
    stages = ["new", "retained", "silent", "lost"]
    table = pa.table(
        {
            "segment": pa.array(["lifecycle"] * persons),
            "bucket": _pick(rng, stages, [0.1, 0.45, 0.2, 0.25], persons),
            "person_key": pa.array(np.arange(persons, dtype=np.int64)),
        }
    )
    _insert(db, "segment_members", table)


def _events(db: object, rng: np.random.Generator, persons: int, events: int) -> None:
    """Per day: pick the persons by a heavy-tailed activity weight, then event types, times
    and properties; insert sorted by (person_key, ts)."""
    weight = rng.lognormal(0.0, 1.2, persons)
    cdf = np.cumsum(weight / weight.sum())
    cdf[-1] = 1.0
    # hotel lovers: some persons book far more hotels (the "high net worth" seed rule)
    hotel_lover = (weight > np.quantile(weight, 0.97)) & (rng.random(persons) < 0.33)
    share = np.array(EVENT_SHARE)
    per_day = rng.multinomial(events, np.full(DAYS, 1 / DAYS))
    props_json = (
        "CASE event "
        "WHEN 'view_product' THEN json_object('category', prop_category, 'price', prop_price, "
        "'item_id', prop_item_id) "
        "WHEN 'add_to_cart' THEN json_object('item_id', prop_item_id, 'price', prop_price) "
        "WHEN 'order_paid' THEN json_object('amount', prop_amount) "
        "WHEN 'book_hotel' THEN json_object('price', prop_price, 'nights', prop_nights, "
        "'item_id', prop_item_id) "
        "WHEN 'search' THEN json_object('keyword', prop_keyword) "
        "ELSE json_object() END"
    )
    select = (
        "'track' AS type, 'bench' AS source, event, ts, CAST(ts AS DATE) AS day, person_key, "
        "prop_category, prop_price, prop_item_id, prop_amount, prop_nights, prop_keyword, "
        f"{props_json}::JSON AS properties"
    )
    for d in range(DAYS):
        n = int(per_day[d])
        person = np.searchsorted(cdf, rng.random(n)).astype(np.int64)
        kind = rng.choice(len(EVENT_NAMES), size=n, p=share).astype(np.int8)
        kind[hotel_lover[person] & (rng.random(n) < 0.35)] = 3  # book_hotel
        seconds = rng.integers(0, 86400, n)
        order = np.lexsort((seconds, person))
        person, kind, seconds = person[order], kind[order], seconds[order]
        day0 = np.datetime64(FIRST_DAY + timedelta(days=d), "s")
        ts = (day0 + seconds.astype("timedelta64[s]")).astype("datetime64[us]")

        product = rng.integers(0, PRODUCTS, n)
        item = np.char.add("p", np.char.zfill(product.astype("U5"), 5))
        hotel = kind == 3
        lover = hotel & hotel_lover[person]
        item[hotel] = np.char.add(
            "h", np.char.zfill(rng.integers(0, HOTELS, hotel.sum()).astype("U4"), 4)
        )
        has_item = (kind <= 1) | hotel
        price = np.round(rng.lognormal(6.0, 1.0, n), 2)
        price[hotel] = np.round(rng.lognormal(6.8, 0.8, hotel.sum()), 0)
        price[lover] = np.round(rng.lognormal(7.8, 0.5, lover.sum()), 0)
        has_price = has_item
        batch = pa.table(
            {
                "event": pa.DictionaryArray.from_arrays(
                    pa.array(kind.astype(np.int32)), pa.array(EVENT_NAMES)
                ).cast(pa.string()),
                "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
                "person_key": pa.array(person),
                "prop_category": pa.DictionaryArray.from_arrays(
                    pa.array((product % len(CATEGORIES)).astype(np.int32), mask=kind != 0),
                    pa.array(CATEGORIES),
                ).cast(pa.string()),
                "prop_price": pa.array(price, mask=~has_price),
                "prop_item_id": pa.array(item, mask=~has_item),
                "prop_amount": pa.array(np.round(rng.lognormal(5.5, 1.1, n), 2), mask=kind != 2),
                "prop_nights": pa.array(rng.integers(1, 8, n), mask=~hotel),
                "prop_keyword": pa.DictionaryArray.from_arrays(
                    pa.array(rng.integers(0, len(KEYWORDS), n).astype(np.int32), mask=kind != 4),
                    pa.array(KEYWORDS),
                ).cast(pa.string()),
            }
        )
        _insert(db, "events", batch, select)
        if d % 30 == 29:
            print(f"  events: day {d + 1}/{DAYS}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    print(ensure())
