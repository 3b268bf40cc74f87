"""Tag computation on DuckDB vs Spark local[2] over the same events (issue 7, bench/scale).

Reuses the segments benchmark's data (``bench/segments/generate.py``: 1 M persons / 100 M
events by default, cached) and its 50 statistical tags (``stat_tags``). On a copy of that
warehouse:

1. DuckDB: ``rollups.refresh(full=True)`` (``person_daily``), then ``compute_tags`` of the 50
   tags twice (the first run writes every value and its history; the second finds nothing
   changed, which is the state the Spark run meets);
2. ``rapport warehouse export-parquet`` (``rapport.warehouse.parquet.export``);
3. Spark (``warehouse_backend = "spark"``, ``SPARK_MASTER``, default local[2]):
   ``spark.build_rollups`` (``person_daily`` from the Parquet events), then the same
   ``compute_tags``: values computed by Spark, collected as Arrow, diffed and written into
   DuckDB's ``tag_values`` / ``tag_history`` exactly as the DuckDB run does.

Prints seconds and the Spark / DuckDB ratios; checks both engines give every tag the same
number of persons. Command (10 M events first, then the full size):

    PERSONS=100000 EVENTS=10000000 .venv/bin/pytest -m bench -s bench/scale/test_tags_engines.py
    MEMORY_LIMIT=8GB SPARK_MEMORY=8g .venv/bin/pytest -m bench -s bench/scale/test_tags_engines.py
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "segments"))
import generate as gen  # noqa: E402
from test_bench_segments import PLAN, stat_tags  # noqa: E402

SPARK_MASTER = os.environ.get("SPARK_MASTER", "local[2]")
SPARK_MEMORY = os.environ.get("SPARK_MEMORY", "4g")
MEMORY_LIMIT = os.environ.get("MEMORY_LIMIT", "")


def timed(what: str, fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    took = time.perf_counter() - started
    print(f"{what}: {took:.1f} s", flush=True)
    return took, result


@pytest.mark.bench
@pytest.mark.spark
@pytest.mark.timeout(4 * 3600)
def test_tags_duckdb_vs_spark(tmp_path: Path) -> None:
    from rapport.catalog import import_plan
    from rapport.settings import Settings
    from rapport.tags import rollups
    from rapport.tags.compute import compute_tags
    from rapport.tags.definitions import TagIn, create_tag
    from rapport.warehouse import parquet, spark
    from rapport.workspace import Workspace

    path = gen.ensure(gen.PERSONS, gen.EVENTS)
    print(f"\ndata: {gen.PERSONS:,} persons, {gen.EVENTS:,} events ({path})")
    work = tmp_path / "warehouse.duckdb"
    shutil.copyfile(path, work)
    settings = Settings(
        home=tmp_path / "home",
        warehouse_path=str(work),
        warehouse_memory_limit=MEMORY_LIMIT,
        spark_master=SPARK_MASTER,
        spark_driver_memory=SPARK_MEMORY,
    )
    ws = Workspace(settings)
    ws.init()
    import_plan(ws.db, PLAN)
    tags = stat_tags()
    for t in tags:
        create_tag(ws.db, TagIn(name=t["name"], kind="statistical", definition=t["definition"]))
    names = [t["name"] for t in tags]

    def tags_on(w: Workspace) -> dict[str, int]:
        reports = compute_tags(w, names, gen.AS_OF, full=True, refresh_rollups=False)
        return {r["tag"]: r["persons"] for r in reports}

    duck_rollups, report = timed(
        "DuckDB person_daily (full)", lambda: rollups.refresh(ws, full=True)
    )
    print(f"  {report.rows:,} rows")
    duck_first, _ = timed("DuckDB 50 tags, first run (writes every value)", lambda: tags_on(ws))
    duck_tags, duck_persons = timed("DuckDB 50 tags, again (nothing changed)", lambda: tags_on(ws))
    export_s, exported = timed("export-parquet (full)", lambda: parquet.export(ws))
    print(f"  {exported.days_written} days, {exported.events_written:,} events")
    again_s, _ = timed("export-parquet again (nothing changed)", lambda: parquet.export(ws))

    on_spark = Workspace(replace(settings, warehouse_backend="spark"))
    start_s, _ = timed(f"Spark session ({SPARK_MASTER})", lambda: spark.session(settings))
    spark_rollups, rows = timed("Spark person_daily (full)", lambda: spark.build_rollups(on_spark))
    print(f"  {rows:,} rows")
    spark_tags, spark_persons = timed(
        "Spark 50 tags (written to DuckDB)", lambda: tags_on(on_spark)
    )
    assert spark_persons == duck_persons, "both engines give every tag the same persons"
    print(
        f"RESULT {gen.PERSONS:,} persons / {gen.EVENTS:,} events: rollups DuckDB "
        f"{duck_rollups:.1f} s, Spark {spark_rollups:.1f} s ({spark_rollups / duck_rollups:.2f}x); "
        f"50 tags DuckDB {duck_tags:.1f} s (first run {duck_first:.1f} s), Spark "
        f"{spark_tags:.1f} s ({spark_tags / duck_tags:.2f}x); export {export_s:.1f} s "
        f"(again {again_s:.1f} s); Spark start {start_s:.1f} s; load "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        flush=True,
    )
    spark.forget()
    on_spark.close()
    ws.close()
