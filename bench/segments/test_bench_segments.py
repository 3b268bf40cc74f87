"""Benchmark: audiences and statistical tags on 1 M persons / 100 M events (issue 4).

Run: ``.venv/bin/pytest -m bench -s bench/segments`` (``PERSONS`` / ``EVENTS`` scale the data
down, ``RUNS`` sets the repeats). Each engine measurement is the median of ``RUNS`` runs and is
also given as a ratio to a hand-written DuckDB SQL query for the same result, run the same
number of times on the same file and connection (target: engine / SQL <= 1.5x):

(a) audience count of a bitmap-only condition (tags, segments, and/or/not): <= 50 ms;
(b) a 5-leaf condition with 2 behaviour leaves: <= 2 s;
(c) computing 50 statistical tags (from the ``person_daily`` rollups, ``compute_tags``):
    <= 120 s;
(d) peak memory (VmHWM of this process, reset before each phase): < 12 GB.

The data comes from ``generate.py`` (cached under /tmp/rapport-bench-segments/, built in a
child process so its memory is not counted); each session works on a copy, so the cache
stays as generated. Engine parts are imported lazily: a missing one prints "engine part
missing" for its measurement instead of failing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import generate as gen  # noqa: E402

from rapport.conditions.model import (  # noqa: E402
    And,
    Attr,
    Compare,
    Condition,
    Did,
    Duration,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Window,
)

RUNS = int(os.environ.get("RUNS", "5"))
TAG_RUNS = int(os.environ.get("TAG_RUNS", "3"))
#: e.g. "8GB"; empty: DuckDB's default (80 % of RAM)
MEMORY_LIMIT = os.environ.get("MEMORY_LIMIT", "")
GB = 1024**3

PLAN = """
events:
  view_product:
    properties: {item_id: string, category: string, price: number}
  add_to_cart:
    properties: {item_id: string, price: number}
  order_paid:
    properties: {amount: number}
  book_hotel:
    properties: {item_id: string, price: number, nights: integer}
  search:
    properties: {keyword: string}
  login:
    properties: {}
user_properties:
  gender: string
  birthday: datetime
  city: string
  member_level: string
  registered_at: datetime
"""

# (a) bitmap-only: high-value persons in the VIP audience or preferring hotels, not lost
BITMAP_COND: Condition = And(
    all=[
        HasTag(tag="value_tier", values=["high", "top"]),
        Or(any=[InSegment(segment="vip"), HasTag(tag="prefers_hotel")]),
        Not(cond=InSegment(segment="lifecycle", bucket="lost")),
    ]
)
BITMAP_SQL = """
SELECT count(*) FROM (
    SELECT person_key FROM tag_values WHERE tag = 'value_tier' AND value IN ('high', 'top')
    INTERSECT
    (SELECT person_key FROM segment_members WHERE segment = 'vip'
     UNION
     SELECT person_key FROM tag_values WHERE tag = 'prefers_hotel')
    EXCEPT
    SELECT person_key FROM segment_members WHERE segment = 'lifecycle' AND bucket = 'lost'
)
"""

# (b) 5 leaves, 2 of them behaviour: gold/platinum members in three cities, app users, who
# viewed 3+ phones in the last 30 days and paid no order in the last 30 days
LAST_30 = Window(last=Duration(amount=30))
MIXED_COND: Condition = And(
    all=[
        Attr(field="city", op=Op.in_, value=["上海", "北京", "深圳"]),
        Attr(field="member_level", op=Op.in_, value=["gold", "platinum"]),
        HasTag(tag="app_user"),
        Did(
            event="view_product",
            where=[Compare(field="category", op=Op.eq, value="phone")],
            op=Op.ge,
            threshold=3,
            window=LAST_30,
        ),
        Not(cond=Did(event="order_paid", window=LAST_30)),
    ]
)
MIXED_SQL = """
WITH viewers AS (
    SELECT person_key FROM events
    WHERE event = 'view_product' AND prop_category = 'phone'
      AND ts > $as_of - INTERVAL 30 DAY AND ts <= $as_of AND person_key >= 0
    GROUP BY person_key HAVING count(*) >= 3
), buyers AS (
    SELECT DISTINCT person_key FROM events
    WHERE event = 'order_paid' AND ts > $as_of - INTERVAL 30 DAY AND ts <= $as_of
)
SELECT count(*) FROM profiles p
WHERE p.city IN ('上海', '北京', '深圳') AND p.member_level IN ('gold', 'platinum')
  AND p.person_key IN (SELECT person_key FROM tag_values WHERE tag = 'app_user')
  AND p.person_key IN (SELECT person_key FROM viewers)
  AND p.person_key NOT IN (SELECT person_key FROM buyers)
"""
# the seed rule tag's condition, verbatim (an extra row)
HNW_COND: Condition = Did(
    event="book_hotel",
    where=[Compare(field="price", op=Op.gt, value=2000)],
    op=Op.ge,
    threshold=30,
    window=LAST_30,
)
HNW_SQL = """
SELECT count(*) FROM (
    SELECT person_key FROM events
    WHERE event = 'book_hotel' AND prop_price > 2000
      AND ts > $as_of - INTERVAL 30 DAY AND ts <= $as_of AND person_key >= 0
    GROUP BY person_key HAVING count(*) >= 30
)
"""

ROLLUP_SQL = """
CREATE OR REPLACE TABLE ref_person_daily AS
SELECT person_key, day, event, count(*) AS n,
       sum(prop_amount) AS sum_amount, sum(prop_nights) AS sum_nights,
       sum(prop_price) AS sum_price
FROM events WHERE person_key >= 0 AND event IS NOT NULL
GROUP BY person_key, day, event
"""


def stat_tags() -> list[dict[str, Any]]:
    """50 statistical tag definitions over the rollups (count / sum / avg, 7-180 days)."""
    windows = [7, 30, 90, 180]
    tags: list[dict[str, Any]] = []
    for event in gen.EVENT_NAMES:  # 24 counts, the 30-day ones banded
        for w in windows:
            d: dict[str, Any] = {"event": event, "agg": "count", "window_days": w}
            if w == 30:
                d["bands"] = [
                    {"label": "1-2", "min": 1, "max": 3},
                    {"label": "3-9", "min": 3, "max": 10},
                    {"label": "10+", "min": 10},
                ]
            tags.append({"name": f"n_{event}_{w}d", "definition": d})
    sums = [("order_paid", "amount"), ("view_product", "price")]
    sums += [("book_hotel", "price"), ("add_to_cart", "price")]
    for event, prop in sums:  # 16 sums
        for w in windows:
            d = {"event": event, "agg": "sum", "property": prop, "window_days": w}
            tags.append({"name": f"sum_{event}_{prop}_{w}d", "definition": d})
    avgs = [("order_paid", "amount", w) for w in windows] + [
        ("book_hotel", "nights", w) for w in windows
    ]
    avgs += [("book_hotel", "price", 30), ("book_hotel", "price", 180)]
    for event, prop, w in avgs:  # 10 averages
        d = {"event": event, "agg": "avg", "property": prop, "window_days": w}
        tags.append({"name": f"avg_{event}_{prop}_{w}d", "definition": d})
    assert len(tags) == 50
    return tags


def number_sql(x: str) -> str:
    """``12`` for whole numbers, else rounded to 2 decimals (the tag value text)."""
    return (
        f"CASE WHEN {x} = round({x}, 0) THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) "
        f"ELSE CAST(round({x}, 2) AS VARCHAR) END"
    )


def stat_tag_sql(name: str, d: dict[str, Any]) -> list[str]:
    """Hand-written SQL for one tag: replace its rows in ``ref_tag_values``."""
    agg = d["agg"]
    if agg == "count":
        measure = "sum(n)"
    elif agg == "sum":
        measure = f"coalesce(sum(sum_{d['property']}), 0)"
    else:
        measure = f"sum(sum_{d['property']}) / sum(n)"
    if d.get("bands"):
        whens = " ".join(
            f"WHEN m >= {b['min']}"
            + (f" AND m < {b['max']}" if "max" in b else "")
            + f" THEN '{b['label']}'"
            for b in d["bands"]
        )
        value = f"CASE {whens} END"
    else:
        value = number_sql("m")
    having = f"HAVING sum(sum_{d.get('property')}) IS NOT NULL" if agg == "avg" else ""
    return [
        f"DELETE FROM ref_tag_values WHERE tag = '{name}'",
        f"""INSERT INTO ref_tag_values
        SELECT person_key, '{name}' AS tag, value FROM (
            SELECT person_key, {value} AS value FROM (
                SELECT person_key, {measure} AS m FROM person_daily
                WHERE event = '{d["event"]}' AND day <= $day
                  AND day > $day - INTERVAL {d["window_days"]} DAY
                GROUP BY person_key {having}
            )
        ) WHERE value IS NOT NULL AND value <> '' AND person_key >= 0""",
    ]


# -- harness -------------------------------------------------------------------------------------
def peak_reset() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next reading is one phase's."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any]:
    """Median seconds over ``runs`` calls, every time, and the last result."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def report(
    what: str,
    engine: tuple[float, list[float], Any],
    sql: tuple[float, list[float], Any],
    target: float,
) -> dict[str, Any]:
    ratio = engine[0] / sql[0]
    line = (
        f"{what}: engine {fmt(engine[0])} (runs {', '.join(fmt(t) for t in engine[1])}), "
        f"SQL {fmt(sql[0])} (runs {', '.join(fmt(t) for t in sql[1])}), "
        f"engine/SQL {ratio:.2f}x; target {fmt(target)}: "
        + ("met" if engine[0] <= target else "MISSED")
    )
    print(line, flush=True)
    return {"engine": engine[0], "sql": sql[0], "ratio": ratio}


def missing(what: str, exc: Exception) -> None:
    print(f"{what}: engine part missing ({type(exc).__name__}: {exc})", flush=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A workspace over a copy of the generated warehouse, with the bench's tracking plan."""
    started = time.monotonic()
    path = gen.cache_path()
    if not path.exists():
        env = {**os.environ, "PERSONS": str(gen.PERSONS), "EVENTS": str(gen.EVENTS)}
        subprocess.run([sys.executable, str(Path(gen.__file__))], check=True, env=env)
    print(
        f"\ndata: {gen.PERSONS:,} persons, {gen.EVENTS:,} events ({path}, "
        f"{path.stat().st_size / GB:.1f} GB); ready in {time.monotonic() - started:.0f} s"
    )
    from rapport.catalog.yaml_io import import_plan
    from rapport.settings import Settings
    from rapport.workspace import Workspace

    home = tmp_path_factory.mktemp("segments-home")
    work = home / "warehouse.duckdb"
    started = time.monotonic()
    shutil.copyfile(path, work)
    print(f"copied the warehouse in {time.monotonic() - started:.0f} s")
    workspace = Workspace(Settings(home=home, warehouse_path=str(work)))
    workspace.init()
    import_plan(workspace.db, PLAN)
    yield workspace
    workspace.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def con(ws: Any) -> Iterator[Any]:
    """One connection held open for the whole module, so the engine's own short-lived
    connections and the SQL references share one DuckDB instance (and its buffer pool)."""
    with ws.warehouse.connect() as c:
        if MEMORY_LIMIT:  # one DuckDB instance per file and process: this sets it for all
            c.con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        limit = c.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        print(f"DuckDB memory_limit: {limit}")
        yield c


def sql_runner(con: Any, sql: str, **params: Any) -> Callable[[], Any]:
    db = con.con

    def run() -> Any:
        return db.execute(sql, params or None).fetchone()[0]

    return run


def attr_types(ws: Any) -> dict[str, str]:
    from rapport.catalog import current_plan

    return dict(current_plan(ws.db).user_properties())


RESULTS: dict[str, Any] = {}


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_a_bitmap_only_count(ws: Any, con: Any) -> None:
    peak_reset()
    sql = timed(sql_runner(con, BITMAP_SQL), RUNS)
    try:
        from rapport.segments.bitmaps import bitmap_count, refresh_from_warehouse
    except ImportError as exc:
        missing("(a) bitmap-only count", exc)
        return
    took, _, sizes = timed(lambda: refresh_from_warehouse(ws), 1)
    print(f"(a) bitmap index refresh: {took:.1f} s, {len(sizes)} sets")
    bitmap_count(ws, BITMAP_COND)  # loads the sets from their files once (a server keeps them)
    engine = timed(lambda: bitmap_count(ws, BITMAP_COND), RUNS)
    assert engine[2] == sql[2], (engine[2], sql[2])
    print(f"(a) persons matching: {engine[2]:,}")
    RESULTS["a"] = report("(a) bitmap-only audience count", engine, sql, 0.050)
    RESULTS["a"]["peak"] = peak_gb()


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_b_five_leaves_two_behaviour(ws: Any, con: Any) -> None:
    peak_reset()
    as_of = gen.AS_OF
    try:
        from rapport.conditions.to_ibis import BatchContext, count
    except ImportError as exc:
        missing("(b) 5-leaf condition", exc)
        return
    # as the engine runs on the warehouse: declared properties live in their typed columns
    ctx = BatchContext(con, as_of, attr_types(ws), props_in_columns=True)
    for what, cond, sql_text in [
        ("(b) 5 leaves, 2 behaviour", MIXED_COND, MIXED_SQL),
        ("(b') seed rule: high net worth", HNW_COND, HNW_SQL),
    ]:
        sql = timed(sql_runner(con, sql_text, as_of=as_of), RUNS)
        engine = timed(lambda c=cond: count(c, ctx), RUNS)
        assert engine[2] == sql[2], (engine[2], sql[2])
        print(f"{what}: persons matching: {engine[2]:,}")
        RESULTS[what[:4]] = report(what, engine, sql, 2.0)
    try:
        from rapport.segments.bitmaps import evaluate
    except ImportError as exc:
        missing("(b) through the bitmap index", exc)
    else:
        engine = timed(lambda: len(evaluate(MIXED_COND, ws, as_of)), RUNS)
        sql = timed(sql_runner(con, MIXED_SQL, as_of=as_of), 1)
        assert engine[2] == sql[2]
        RESULTS["b_mixed"] = report(
            "(b) same, mixed bitmaps + warehouse (evaluate)", engine, sql, 2.0
        )
    RESULTS["b_peak"] = peak_gb()


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_c_fifty_statistical_tags(ws: Any, con: Any) -> None:
    peak_reset()
    day = gen.AS_OF.date()
    try:
        from rapport.tags import rollups
        from rapport.tags.compute import compute_tags
        from rapport.tags.definitions import TagIn, create_tag
    except ImportError as exc:
        missing("(c) 50 statistical tags", exc)
        return
    # the rollups the tags read: engine (full refresh) vs the same GROUP BY by hand
    sql = timed(sql_runner(con, ROLLUP_SQL + "; SELECT count(*) FROM ref_person_daily"), 1)
    peaks = {"rollups, SQL": peak_gb()}
    peak_reset()
    engine = timed(lambda: rollups.refresh(ws, full=True), 1)
    peaks["rollups, engine"] = peak_gb()
    print(f"(c) person_daily: {engine[2].rows:,} rows")
    RESULTS["rollups"] = report("(c) person_daily full refresh", engine, sql, 120.0)
    con.con.execute("DROP TABLE ref_person_daily")

    tags = stat_tags()
    for tag in tags:
        create_tag(ws.db, TagIn(name=tag["name"], kind="statistical", definition=tag["definition"]))

    names = [t["name"] for t in tags]

    def engine_all() -> int:  # the product's path: what ``compute_all`` and the CLI run
        reports = compute_tags(ws, names, gen.AS_OF, full=True, refresh_rollups=False)
        return sum(r["rows"] for r in reports)

    con.con.execute(
        "CREATE OR REPLACE TABLE ref_tag_values (person_key BIGINT, tag VARCHAR, value VARCHAR)"
    )
    statements = [s for t in tags for s in stat_tag_sql(t["name"], t["definition"])]

    def sql_all() -> int:
        db = con.con
        for s in statements:
            db.execute(s, {"day": day} if "$day" in s else None)
        return int(db.execute("SELECT count(*) FROM ref_tag_values").fetchone()[0])

    peak_reset()
    sql = timed(sql_all, TAG_RUNS)
    peaks["tags, SQL"] = peak_gb()
    peak_reset()
    engine = timed(engine_all, TAG_RUNS)
    peaks["tags, engine"] = peak_gb()
    print("(c) peak RSS: " + ", ".join(f"{k} {v:.2f} GB" for k, v in peaks.items()))
    print(f"(c) tag values written: engine {engine[2]:,}, SQL {sql[2]:,}")
    # same persons and values; averages may differ by a cent where the float sums (added in
    # another order) land either side of a rounding tie
    differ = con.con.execute(
        """SELECT person_key, tag, e.value AS engine, r.value AS sql
        FROM (SELECT * FROM tag_values WHERE tag IN (SELECT DISTINCT tag FROM ref_tag_values)) e
        FULL JOIN ref_tag_values r USING (person_key, tag)
        WHERE e.value IS DISTINCT FROM r.value
          AND NOT abs(TRY_CAST(e.value AS DOUBLE) - TRY_CAST(r.value AS DOUBLE)) <= 0.0101
        ORDER BY 2, 1"""
    ).fetchall()
    assert not differ, f"{len(differ)} tag values differ from the SQL reference: {differ[:6]}"
    RESULTS["c"] = report("(c) 50 statistical tags", engine, sql, 120.0)
    RESULTS["c_peak"] = max(peaks.values())


@pytest.mark.bench
def test_d_peak_memory() -> None:
    phases = {
        "(a)": RESULTS.get("a", {}).get("peak"),
        "(b)": RESULTS.get("b_peak"),
        "(c)": RESULTS.get("c_peak"),
    }
    shown = ", ".join(f"{k} {v:.2f} GB" for k, v in phases.items() if v is not None)
    print(
        f"(d) peak RSS of the bench process per phase: {shown}; whole process "
        f"{peak_gb():.2f} GB since the last reset (target < 12 GB)"
    )
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    measured = [v for v in phases.values() if v is not None]
    assert all(v < 12 for v in measured)
