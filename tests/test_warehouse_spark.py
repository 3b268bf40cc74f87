"""The warehouse on Spark (issue 7): tags (mined ones too), audiences, segmentations, the
lifecycle and offline lead rules give the same results reading the Parquet export through
Spark as reading the DuckDB file; Spark's ``person_daily`` is rebuilt only for the days the
export rewrote.

One small seeded world (profiles with messy birthdays, 400 persons' events over 60 days, some
unresolved) is computed on DuckDB, exported with ``rapport warehouse export-parquet``, and
computed again with ``warehouse_backend = "spark"`` (local[1]) over the same home: the same
tag values, audience members and lead hits, written where the product reads them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pyarrow as pa
import pytest
from pyroaring import BitMap
from typer.testing import CliRunner

from conftest import small_spark
from rapport.catalog import import_plan
from rapport.catalog.cache import invalidate
from rapport.settings import Settings, load_settings
from rapport.workspace import Workspace

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),  # PySpark on pandas 3
]
pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)
# Spark's Python workers (Ibis compiles a few operations to UDFs) run this environment's
# Python, as the product sets it: at collection, before any test of the run starts a session
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

PLAN = """
events:
  order_paid:
    kind: user
    properties: {amount: number, category: string, item_id: string}
  view_product:
    kind: user
    properties: {category: string, price: number, item_id: string, duration_s: integer}
  book_hotel:
    kind: user
    properties: {price: number, nights: integer}
  login:
    kind: user
user_properties:
  birthday: string
  gender: string
  city: string
"""
AS_OF = datetime(2025, 6, 30, 12, tzinfo=UTC)
PERSONS = 400
CATEGORIES = ["fridge", "tv", "washer", "phone"]
BIRTHDAYS = ["1990-01-02", "1985/7/3", "19701231", "02/01/2001", "1999年3月4日", "", "soon", None]

BANDS = [{"label": "<100", "max": 100}, {"label": "100-999", "min": 100, "max": 1000}]
BANDS += [{"label": "1000+", "min": 1000}]
AGE_BANDS = [{"label": "<30", "max": 30}, {"label": "30-44", "min": 30, "max": 45}]
AGE_BANDS += [{"label": "45+", "min": 45}]
TAGS: dict[str, tuple[str, dict[str, Any]]] = {
    # attribute
    "age_band": ("attribute", {"field": "birthday", "transform": "age_band", "bands": AGE_BANDS}),
    "sex": ("attribute", {"field": "gender", "map": {"f": "female", "m": "male"}, "default": "?"}),
    "city_upper": ("attribute", {"field": "city", "transform": "upper"}),
    # statistical, from the rollups (one pass)
    "orders_30d": ("statistical", {"event": "order_paid", "agg": "count", "window_days": 30}),
    "views_7d": ("statistical", {"event": "view_product", "agg": "count", "window_days": 7}),
    "spend_90d": (
        "statistical",
        {"event": "order_paid", "agg": "sum", "property": "amount", "window_days": 90},
    ),
    "spender": (
        "statistical",
        {"event": "order_paid", "agg": "sum", "property": "amount", "bands": BANDS},
    ),
    "avg_order": ("statistical", {"event": "order_paid", "agg": "avg", "property": "amount"}),
    # statistical, from the events
    "max_view_price": (
        "statistical",
        {"event": "view_product", "agg": "max", "property": "price", "window_days": 30},
    ),
    "last_order": ("statistical", {"event": "order_paid", "agg": "last_date"}),
    "fav_category": (
        "statistical",
        {"event": "view_product", "agg": "top_value", "property": "category"},
    ),
    # rule
    "hotel_lover": (
        "rule",
        {"condition": "did book_hotel where price > 800 count >= 3 in last 30 days"},
    ),
    "quiet_viewer": (
        "rule",
        {
            "condition": 'did view_product where category = "fridge" in last 30 days '
            "and not did order_paid in last 30 days",
            "value": "fridge",
        },
    ),
}
AUDIENCES = {
    "fridge_women": 'gender = "f" and did view_product where category = "fridge" '
    "count >= 2 in last 30 days",
    "buyers_not_logged_in": "has tag orders_30d and not did login in last 14 days",
    "view_then_buy": "sequence view_product then order_paid within 1 day",
    "spend_or_hotels": "did order_paid sum(amount) >= 1500 in last 60 days or has tag hotel_lover",
}
RULES = {
    "fridge_no_order": {
        "trigger": 'sequence view_product as v where category = "fridge" and price >= 3000 '
        "then not order_paid where item_id = v.item_id within 2 days",
        "conditions": 'gender = "f" or has tag hotel_lover',
    },
    "big_orders": {"trigger": "event order_paid where amount > 900", "conditions": None},
}


def _world(ws: Workspace) -> None:
    """Seeded profiles and events, written as the loader would (typed property columns)."""
    rng = random.Random(7)
    profiles = {
        "person_key": pa.array(range(PERSONS), pa.int64()),
        "birthday": [rng.choice(BIRTHDAYS) for _ in range(PERSONS)],
        "gender": [rng.choice(["f", "m", "x", None]) for _ in range(PERSONS)],
        "city": [rng.choice(["shanghai", "beijing", " wuhan ", None]) for _ in range(PERSONS)],
        "updated_at": pa.array([AS_OF] * PERSONS, pa.timestamp("us", "UTC")),
    }
    rows: list[tuple[int | None, str, dict[str, Any], datetime]] = []
    for p in range(PERSONS):
        for _ in range(rng.randint(0, 30)):
            ts = AS_OF - timedelta(minutes=rng.randint(-600, 60 * 24 * 60))  # some after as_of
            kind = rng.choices(["view_product", "order_paid", "book_hotel", "login"], [5, 2, 1, 2])
            item = f"I{rng.randint(1, 8)}"
            props: dict[str, Any] = {}
            if kind[0] == "view_product":
                props = {
                    "category": rng.choice(CATEGORIES),
                    "price": rng.choice([99, 1999.5, 3500, 6999]),
                    "item_id": item,
                    "duration_s": rng.randint(1, 200),
                }
            elif kind[0] == "order_paid":
                props = {
                    "amount": round(rng.uniform(5, 1500), 2),
                    "category": rng.choice(CATEGORIES),
                    "item_id": item,
                    "order_id": f"O{len(rows)}",  # undeclared: mined tags read it from the JSON
                }
            elif kind[0] == "book_hotel":
                props = {"price": rng.choice([300, 900, 2500]), "nights": rng.randint(1, 5)}
            person = p if rng.random() > 0.03 else rng.choice([None, -1])
            rows.append((person, kind[0], props, ts))
    # some orders recorded twice (order system + tracking), as the mined tags expect
    orders = [r for r in rows if r[1] == "order_paid"]
    rows += [(r[0], r[1], dict(r[2]), r[3] + timedelta(minutes=2)) for r in orders[::9]]
    n = len(rows)
    ts = [r[3] for r in rows]
    events = pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": ["web"] * n,
            "type": ["track"] * n,
            "event": [r[1] for r in rows],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for t in ts], pa.date32()),
            "received_at": pa.array([AS_OF] * n, pa.timestamp("us", "UTC")),
            "log_offset": pa.array(range(n), pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([r[0] for r in rows], pa.int64()),
            "properties": [json.dumps(r[2]) for r in rows],
            "context": ["{}"] * n,
        }
    )
    from rapport.warehouse import layout

    with ws.warehouse.connect() as con:
        t = ibis.memtable(events)
        con.insert("events", t.select(**{c: t[c].cast(d) for c, d in layout.EVENTS.items()}))
        ws.warehouse.add_prop_columns(con)  # the typed columns, backfilled from the JSON
        con.create_table("profiles", pa.table(profiles), overwrite=True)


@pytest.fixture(scope="module")
def spark_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A small local session made before the product asks for one (it then reuses it): one
    core, one shuffle partition, no code generation (for a few thousand rows compiling Java
    costs more than it saves); the product's own settings are the bench's."""
    from rapport.warehouse import spark

    session = small_spark("rapport-warehouse", tmp_path_factory.mktemp("spark-catalog"))
    yield session
    spark.forget()


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Settings]]:
    """The world's home, computed on DuckDB (tags, audiences): settings for both backends."""
    from rapport.leads import rules
    from rapport.segments import audiences
    from rapport.tags.compute import compute_tags
    from rapport.tags.definitions import TagIn, create_tag

    home = tmp_path_factory.mktemp("spark_world") / "home"
    settings = load_settings(home=home, spark_master="local[1]", spark_driver_memory="1g")
    ws = Workspace(settings)
    ws.init()
    import_plan(ws.db, PLAN)
    invalidate(ws.db)  # the warehouse reads the plan now, not the cached one of a second ago
    _world(ws)
    for name, (kind, definition) in TAGS.items():
        if kind == "rule":
            definition = {**definition, "condition": _json(definition["condition"])}
        create_tag(ws.db, TagIn(name=name, kind=kind, definition=definition))
    compute_tags(ws, list(TAGS), AS_OF)
    for name, text in AUDIENCES.items():
        audiences.create_audience(ws, name, text)
    for name, body in RULES.items():
        rules.create_rule(
            ws.db,
            rules.RuleIn(name=name, lead_type=name, mode="offline", schedule="daily", **body),
            None,
        )
    ws.close()
    yield {"duckdb": settings, "spark": replace(settings, warehouse_backend="spark")}


def _json(text: str) -> dict[str, Any]:
    from rapport.conditions.model import to_json
    from rapport.segments.audiences import parse_condition

    return to_json(parse_condition(text))


@pytest.fixture(scope="module")
def exported(homes: dict[str, Settings]) -> dict[str, Any]:
    """``rapport warehouse export-parquet`` of the world (the CLI, as an operator runs it)."""
    from rapport.cli import app

    env = {"RAPPORT_HOME": str(homes["duckdb"].home)}
    result = CliRunner().invoke(app, ["warehouse", "export-parquet", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


@pytest.fixture
def on(
    homes: dict[str, Settings], exported: dict[str, Any], spark_session: Any
) -> Iterator[dict[str, Workspace]]:
    spaces = {name: Workspace(s) for name, s in homes.items()}
    yield spaces
    for ws in spaces.values():
        ws.close()


def tag_values(ws: Workspace) -> dict[str, set[tuple[int, str]]]:
    with ws.warehouse.connect() as con:
        rows = con.table("tag_values").to_pyarrow().to_pylist()
    out: dict[str, set[tuple[int, str]]] = {}
    for r in rows:
        out.setdefault(r["tag"], set()).add((r["person_key"], r["value"]))
    return out


def same_values(a: set[tuple[int, str]], b: set[tuple[int, str]]) -> bool:
    """The same (person, value) pairs; a value to the cent may differ by one cent between
    engines where an average lands on a rounding tie (Spark rounds the decimal text half up,
    DuckDB the binary double), as in bench/segments."""
    if a == b:
        return True
    only_a, only_b = dict(sorted(a - b)), dict(sorted(b - a))
    if only_a.keys() != only_b.keys() or len(only_a) != len(a - b) or len(only_b) != len(b - a):
        return False
    return all(abs(float(only_a[p]) - float(only_b[p])) <= 0.0101 for p in only_a)


def test_export_writes_days_and_tables_and_then_only_what_changed(homes, exported):
    root = Path(homes["duckdb"].spark_dir)
    days = sorted(p.name for p in (root / "events").iterdir())
    assert exported["days_written"] == len(days) > 60 and exported["days_unchanged"] == 0
    assert exported["tables"]["profiles"] == PERSONS
    assert exported["tables"]["tag_values"] > 0
    from rapport.warehouse.parquet import export

    ws = Workspace(homes["duckdb"])
    try:
        again = export(ws)
        assert (again.days_written, again.days_unchanged) == (0, len(days))
        # one person merged into another on one day: only that day is rewritten
        with ws.warehouse.connect() as con:
            con.raw_sql("UPDATE events SET person_key = 1 WHERE event_id = 'e5'")
            day = con.raw_sql("SELECT CAST(day AS VARCHAR) FROM events WHERE event_id = 'e5'")
            day = day.fetchone()[0]
        moved = export(ws)
        assert (moved.days_written, moved.events_written > 0) == (1, True)
        files = list((root / "events" / f"day={day}").glob("*.parquet"))
        assert files, "the rewritten day has its file"
        with ws.warehouse.connect() as con:  # put it back: the other tests read the world
            con.raw_sql("UPDATE events SET person_key = 0 WHERE event_id = 'e5'")
        assert export(ws).days_written == 1
    finally:
        ws.close()


def test_tags_are_the_same_computed_on_spark(on):
    from rapport.tags.compute import compute_tags
    from rapport.tags.store import runs

    before = tag_values(on["duckdb"])
    assert set(before) == set(TAGS), "every tag has values on DuckDB"
    # Spark's values replace DuckDB's: anything Spark computed differently would show as a
    # change (the runs' reports say what came and went)
    reports = compute_tags(on["spark"], list(TAGS), AS_OF)
    assert all(r["engine"] == "spark" for r in reports)
    after = tag_values(on["spark"])
    for tag in set(before) | set(after):  # each tag with what differs, if anything does
        assert same_values(after.get(tag, set()), before.get(tag, set())), tag
    for r in reports:
        last = runs(on["spark"].db, r["tag"], limit=2)
        assert last[0]["detail"]["engine"] == "spark" and last[0]["status"] == "done"
        assert last[0]["persons"] == last[1]["persons"]
        if r["tag"] != "avg_order":  # (its cents, above)
            assert last[0]["distribution"] == last[1]["distribution"]


def test_a_spark_result_reaches_duckdb_as_parquet_even_an_empty_one(on):
    """Spark's results are handed to DuckDB as Parquet files (a large one would exceed the
    driver's collect limit), which are gone afterwards; an empty result keeps its columns."""
    from rapport.warehouse import spark

    ws = on["spark"]
    with ws.warehouse.connect() as con, spark.reading(ws, con) as reads:
        events = reads.table("events")
        orders = events.filter(events.event == "order_paid").select("person_key", "event_id")
        got = spark.to_duckdb(ws.settings, con, "_handoff", orders).to_pyarrow()
        assert got.num_rows == orders.count().to_pyarrow().as_py() > 0
        assert got.column_names == ["person_key", "event_id"]
        none = spark.to_duckdb(
            ws.settings, con, "_handoff", orders.filter(orders.event_id == "none")
        )
        assert none.count().to_pyarrow().as_py() == 0
        assert list(none.columns) == got.column_names
    assert not any((Path(ws.settings.spark_dir) / "_results").iterdir())


def test_audiences_have_the_same_members_on_spark(on):
    from rapport.segments import audiences, bitmaps
    from rapport.segments.store import members

    sizes = {}
    for name, text in AUDIENCES.items():
        cond = audiences.parse_condition(text)
        duck = bitmaps.evaluate(cond, on["duckdb"], AS_OF)
        spark = bitmaps.evaluate(cond, on["spark"], AS_OF)
        assert spark == duck, name
        sizes[name] = audiences.refresh_audience(on["spark"], name, AS_OF)  # written as usual
        assert members(on["spark"], name) == duck
    assert all(sizes.values()), sizes


def test_offline_lead_rules_find_the_same_leads_on_spark(on):
    from rapport.leads import backtest, offline, rules
    from rapport.leads.live import dedupe_key

    start, end = AS_OF - timedelta(days=20), AS_OF
    for name in RULES:
        with on["duckdb"].db.connect() as conn:
            rule = rules.load(conn, name)

        def found(ws: Workspace, rule: Any = rule) -> list[tuple[int, datetime, str]]:
            hits, _ = backtest.simulate(ws, rule, start, end, cooled=False)
            return [(h.person, h.match.fired_at, dedupe_key(rule, h.match)) for h in hits]

        duck, spark = found(on["duckdb"]), found(on["spark"])
        assert spark == duck, name
        assert duck, f"{name} finds leads in the world"
        ran = offline.run(on["spark"], rule, end, start=start)  # the job, reading Spark
        assert ran["passed"] == len(duck) and ran["leads"] > 0


# -- lifecycle, segmentations, mined tags ------------------------------------------------------
SEGMENTATION = {
    "dimension": "interest",
    "buckets": [
        {"name": "women", "condition": 'gender = "f"'},
        {
            "name": "fridge_viewers",
            "condition": 'did view_product where category = "fridge" in last 30 days',
        },
        {"name": "hotel_lovers", "condition": "has tag hotel_lover"},
    ],
    "other": True,
}
MINED = {
    "rfm_score": ({"model": "rfm", "part": "score", "share_categories": ["fridge"]}, False),
    "rfm_tier": ({"model": "rfm", "part": "tier"}, False),
    "prefers": ({"model": "category_preference", "lift": 1.5, "min_signals": 2}, True),
}


def test_lifecycle_stages_are_the_same_on_spark(on):
    from rapport.segments import lifecycle
    from rapport.segments.store import members

    # thresholds the 60 days of the world fill: every stage has persons
    conf = lifecycle.configure(on["duckdb"], retained_days=7, lost_days=20)
    duck = lifecycle.compute_stages(on["duckdb"], AS_OF, conf)
    spark = lifecycle.compute_stages(on["spark"], AS_OF, conf)
    assert all(duck.values()), {s: len(p) for s, p in duck.items()}
    assert spark == duck
    stats = lifecycle.refresh_lifecycle(on["spark"], AS_OF)  # written where it always is
    assert stats["distribution"] == {s: len(p) for s, p in duck.items()}
    for stage, persons in duck.items():
        assert members(on["duckdb"], lifecycle.NAME, stage) == persons, stage


def test_segmentations_split_the_same_on_spark(on):
    from rapport.segments import segmentations
    from rapport.segments.store import get_segment, members

    segmentations.create_segmentation(on["duckdb"], "interest", SEGMENTATION)
    duck = segmentations.check_mece(on["duckdb"], "interest", AS_OF)
    spark = segmentations.check_mece(on["spark"], "interest", AS_OF)
    assert spark == duck
    assert duck["overlaps"] and duck["uncovered"]["count"], "the world overlaps and leaves some"
    written = segmentations.refresh_segmentation(on["spark"], "interest", AS_OF)
    assert written["size"] == duck["persons"]  # ``other`` takes the rest: everyone is in
    definition = get_segment(on["duckdb"], "interest")["definition"]
    sets, everyone = segmentations.bucket_sets(on["duckdb"], definition, AS_OF)
    taken = BitMap()
    for bucket, persons in sets.items():  # the first bucket takes a person, as written
        assert members(on["duckdb"], "interest", bucket) == persons - taken, bucket
        taken |= persons
    assert members(on["duckdb"], "interest", segmentations.OTHER) == everyone - taken


def test_mined_tags_are_the_same_computed_on_spark(on):
    from rapport.tags import mined
    from rapport.tags.compute import compute_tags
    from rapport.tags.definitions import TagIn, create_tag

    spec = mined.FeatureSpec(share_categories=("fridge", "hotel"))
    duck = mined.load_features(on["duckdb"], AS_OF, spec)
    spark = mined.load_features(on["spark"], AS_OF, spec)
    assert list(spark.person_key) == list(duck.person_key) and len(duck) > PERSONS / 2
    assert spark.columns.keys() == duck.columns.keys()
    for name, values in duck.columns.items():
        assert np.allclose(spark[name], values, equal_nan=True, rtol=1e-9), name
    for name, (definition, multi) in MINED.items():
        tag = TagIn(name=name, kind="mined", multi=multi, definition=definition)
        create_tag(on["duckdb"].db, tag)
    compute_tags(on["duckdb"], list(MINED), AS_OF)
    before = tag_values(on["duckdb"])
    assert all(before.get(name) for name in MINED), "every mined tag has values on DuckDB"
    compute_tags(on["spark"], list(MINED), AS_OF)  # Spark's features, written as usual
    after = tag_values(on["spark"])
    for name in MINED:
        assert after[name] == before[name], name


# -- incremental rollups on Spark ---------------------------------------------------------------
ROLLUP_TAGS = ["orders_30d", "views_7d", "spend_90d", "spender", "avg_order"]
NEW_DAY = (AS_OF - timedelta(days=75)).date()  # before the world's days, inside spend_90d


@pytest.fixture
def copied(
    homes: dict[str, Settings], exported: dict[str, Any], spark_session: Any, tmp_path: Path
) -> Iterator[dict[str, Workspace]]:
    """The exported world copied to a home of its own (these tests change its events), with
    no ``person_daily`` yet (the rollup tags of other tests built one): built here."""
    from rapport.warehouse.spark import ROLLUPS, ROLLUPS_MANIFEST

    home = tmp_path / "home"
    shutil.copytree(
        homes["duckdb"].home, home, ignore=shutil.ignore_patterns(ROLLUPS, ROLLUPS_MANIFEST)
    )
    settings = replace(homes["duckdb"], home=home)
    spaces = {"duckdb": Workspace(settings)}
    spaces["spark"] = Workspace(replace(settings, warehouse_backend="spark"))
    yield spaces
    for ws in spaces.values():
        ws.close()


def day_files(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Every day directory of ``person_daily`` -> its files and their modification times."""
    return {
        d.name: sorted((f.name, f.stat().st_mtime_ns) for f in d.glob("*.parquet"))
        for d in sorted((root / "person_daily").glob("day=*"))
    }


def person_daily(ws: Workspace) -> list[dict[str, Any]]:
    from rapport.warehouse import spark

    with spark.reader(ws).connect() as con:
        t = con.table("person_daily")
        rows = t.order_by(["person_key", "day", "event"]).to_pyarrow().to_pylist()
    return [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def rollup_values(ws: Workspace) -> dict[str, set[tuple[int, str]]]:
    from rapport.tags.compute import compute_tags

    compute_tags(ws, ROLLUP_TAGS, AS_OF, refresh_rollups=False)
    return {tag: v for tag, v in tag_values(ws).items() if tag in ROLLUP_TAGS}


def full_rebuild_agrees(ws: Workspace) -> dict[str, set[tuple[int, str]]]:
    """The tag values and rollup rows after the incremental build equal a full rebuild's."""
    from rapport.warehouse import spark

    incremental, rows = rollup_values(ws), person_daily(ws)
    assert spark.refresh_rollups(ws, full=True).full
    assert person_daily(ws) == rows
    assert rollup_values(ws) == incremental
    return incremental


def test_spark_rollups_rebuild_only_the_days_the_export_rewrote(copied):
    from rapport.tags.compute import compute_tags
    from rapport.warehouse import parquet, spark

    ws, on_spark = copied["duckdb"], copied["spark"]
    root = Path(ws.settings.spark_dir)
    first = spark.refresh_rollups(on_spark)  # nothing built yet: in full
    days = sorted(parquet.read_manifest(root)["days"])
    assert first.full and first.days_built == days and first.rows > 0
    again = spark.refresh_rollups(on_spark)
    assert (again.full, again.days_built, again.days_unchanged) == (False, [], len(days))
    assert again.rows == first.rows
    before = rollup_values(on_spark)
    written = day_files(root)

    # the orders of 20 persons copied onto a day that had no events, then exported
    with ws.warehouse.connect() as con:
        con.raw_sql(
            "INSERT INTO events SELECT * REPLACE ('new-' || event_id AS event_id, "
            f"TIMESTAMPTZ '{NEW_DAY} 10:00:00+00' AS ts, DATE '{NEW_DAY}' AS day, "
            "log_offset + 1000000 AS log_offset) FROM events "
            "WHERE event = 'order_paid' AND person_key BETWEEN 0 AND 19"
        )
    assert parquet.export(ws).days_written == 1
    reports = compute_tags(on_spark, ROLLUP_TAGS, AS_OF)  # the product's path: builds first
    assert all(r["engine"] == "spark" for r in reports)
    built = spark.read_rollups_manifest(root)["last"]
    assert built == {"full": False, "days_built": 1, "days_removed": 0}
    now = day_files(root)
    assert set(now) == {*written, f"day={NEW_DAY}"}
    assert {d: f for d, f in now.items() if d != f"day={NEW_DAY}"} == written, "others untouched"
    values = full_rebuild_agrees(on_spark)
    assert values["spender"] != before["spender"], "the new day's orders count"

    # the day's events erased again: its rollup directory goes with it
    with ws.warehouse.connect() as con:
        con.raw_sql(f"DELETE FROM events WHERE day = DATE '{NEW_DAY}'")
    assert parquet.export(ws).days_removed == 1
    gone = spark.refresh_rollups(on_spark)
    assert (gone.full, gone.days_built, gone.days_removed) == (False, [], [str(NEW_DAY)])
    assert set(day_files(root)) == set(written)
    assert full_rebuild_agrees(on_spark) == before


def test_spark_rollups_follow_an_identity_merge_on_old_days(copied):
    """A person merged into another: resolution re-keys their events in place, the export
    rewrites every day holding them, and the build rebuilds exactly those days."""
    from rapport.warehouse import parquet, spark

    ws, on_spark = copied["duckdb"], copied["spark"]
    root = Path(ws.settings.spark_dir)
    spark.refresh_rollups(on_spark)
    rows = person_daily(on_spark)
    merged = next(r["person_key"] for r in rows if r["event"] == "order_paid")
    into = next(r["person_key"] for r in rows if r["person_key"] not in (merged, -1))
    with ws.warehouse.connect() as con:
        got = con.raw_sql(
            f"SELECT DISTINCT CAST(day AS VARCHAR) FROM events WHERE person_key = {merged}"
        ).fetchall()
        days = sorted(d for (d,) in got)
        con.raw_sql(f"UPDATE events SET person_key = {into} WHERE person_key = {merged}")
    assert len(days) > 1 and min(days) < str((AS_OF - timedelta(days=30)).date())
    assert parquet.export(ws).days_written == len(days)
    written = day_files(root)
    build = spark.refresh_rollups(on_spark)
    assert (build.full, build.days_built) == (False, days)
    now = day_files(root)
    assert {d for d in now if now[d] != written.get(d)} == {f"day={d}" for d in days}
    after = person_daily(on_spark)
    assert not [r for r in after if r["person_key"] == merged]
    moved = sum(r["n"] for r in rows if r["person_key"] in (merged, into))
    assert sum(r["n"] for r in after if r["person_key"] == into) == moved
    full_rebuild_agrees(on_spark)


def test_spark_rollups_rebuild_in_full_when_the_events_columns_change(copied):
    """A new event column (a property the loader now types) makes the export rewrite every
    day with the same fingerprints: the build notices the columns and rebuilds in full."""
    from rapport.warehouse import parquet, spark

    ws, on_spark = copied["duckdb"], copied["spark"]
    root = Path(ws.settings.spark_dir)
    spark.refresh_rollups(on_spark)
    rows = person_daily(on_spark)
    days = sorted(parquet.read_manifest(root)["days"])
    with ws.warehouse.connect() as con:
        con.raw_sql("ALTER TABLE events ADD COLUMN prop_coupon VARCHAR")
    assert parquet.export(ws).days_written == len(days)
    build = spark.refresh_rollups(on_spark)
    assert (build.full, build.days_built) == (True, days)
    assert person_daily(on_spark) == rows
