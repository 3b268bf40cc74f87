"""The warehouse on Spark: the Parquet tables of ``rapport.warehouse.parquet`` as Spark views,
reached through Ibis' PySpark backend with the same ``connect()`` contract as ``Warehouse``.

``warehouse_backend = "spark"`` makes tags (mined ones' features included), audiences,
segmentations, the lifecycle and offline lead rules *read* here: the compiled Ibis
expressions (``rapport.conditions.to_ibis``, the rollup tags, the attribute and statistical
tags, ``mined.features``, ``lifecycle.compute_stages``) run on Spark unchanged; their results
(tag values, audience and segment members, lead candidates) are collected as Arrow (tag
values, the large one, as Parquet: ``to_duckdb``) and written where the rest of the product
reads them (DuckDB ``tag_values`` / ``tag_history`` / ``segment_members``, the bitmap index,
the metadata DB), so the console works as before.
``reader(ws)`` is the one switch.

``person_daily`` is Spark's own (``refresh_rollups``): partitioned by day and rebuilt only
for the days the export rewrote, after the fingerprints in ``ROLLUPS_MANIFEST``.

One Spark session per process (``session``): starting a JVM costs seconds. The views are
re-registered when an export rewrote the files (its manifest changed), since Spark caches a
directory's file list.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir

from rapport.warehouse import parquet

if TYPE_CHECKING:
    from ibis.backends import BaseBackend

    from rapport.settings import Settings
    from rapport.warehouse.store import Warehouse
    from rapport.workspace import Workspace

BACKENDS = ("duckdb", "spark")
ROLLUPS = "person_daily"
#: beside the tables: the export fingerprints of the days ``person_daily`` was built from
ROLLUPS_MANIFEST = "_rapport_person_daily.json"
_LOCK = threading.Lock()
_SESSION: Any = None
_VIEWS: dict[str, tuple[str, float]] = {}  # view -> (path, manifest stamp) registered


class SparkUnavailable(RuntimeError):
    """PySpark or a Java runtime is missing, or the Parquet tables were never exported."""


def backend_of(settings: Settings) -> str:
    name = settings.warehouse_backend
    if name not in BACKENDS:
        raise ValueError(f"warehouse_backend = {name!r}: one of {', '.join(BACKENDS)}")
    return name


def on_spark(ws: Workspace) -> bool:
    return backend_of(ws.settings) == "spark"


def session(settings: Settings) -> Any:
    """The process's Spark session (created on first use with the settings' master and
    driver memory; days are UTC days, as in DuckDB)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None and _SESSION.sparkContext._jsc is not None:
            return _SESSION
        try:
            from pyspark.sql import SparkSession
        except ImportError as exc:  # pragma: no cover - pyspark is a dependency
            raise SparkUnavailable("warehouse_backend = 'spark' needs pyspark") from exc
        # the Python of Spark's workers (Ibis compiles a few operations to Python UDFs)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        home = Path(settings.spark_dir)
        cores = _local_cores(settings.spark_master)
        builder = (
            SparkSession.builder.master(settings.spark_master)
            .appName("rapport")
            .config("spark.driver.memory", settings.spark_driver_memory)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.adaptive.enabled", "true")
            # on one machine, a few shuffle partitions per core (Spark's 200 are for clusters)
            .config("spark.sql.shuffle.partitions", str(4 * cores) if cores else "200")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            # results handed to DuckDB as Parquet (``to_duckdb``): standard timestamps, not INT96
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            .config("spark.sql.warehouse.dir", str(home / "_catalog"))
            .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={home / '_catalog'}")
        )
        try:
            _SESSION = builder.getOrCreate()
        except Exception as exc:  # noqa: BLE001 - most often: no Java runtime
            raise SparkUnavailable(
                f"could not start Spark (master {settings.spark_master!r}): {exc}; "
                "is a Java 17+ runtime installed (JAVA_HOME)?"
            ) from exc
        _SESSION.sparkContext.setLogLevel("ERROR")
        _VIEWS.clear()
        return _SESSION


def _local_cores(master: str) -> int | None:
    """The cores of a ``local[N]`` master (``local[*]``: this machine's); None for a cluster."""
    if master == "local":
        return 1
    if master.startswith("local[") and master.endswith("]"):
        n = master[6:-1].split(",")[0]
        return os.cpu_count() or 1 if n == "*" else int(n)
    return None


class SparkWarehouse:
    """The Parquet tables of ``settings.spark_dir`` as Spark views (module doc)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.spark_dir)

    def session(self) -> Any:
        return session(self.settings)

    @contextmanager
    def connect(self, wait: float = 0.0) -> Iterator[BaseBackend]:
        """An Ibis PySpark connection over the exported tables (``wait``: for the same
        signature as ``Warehouse.connect``; Spark has no file lock)."""
        spark = self.session()
        self._register(spark)
        yield ibis.pyspark.connect(spark)

    def _register(self, spark: Any) -> None:
        manifest = self.root / parquet.MANIFEST
        try:
            stamp = manifest.stat().st_mtime
        except FileNotFoundError:
            raise SparkUnavailable(
                f"no Parquet tables in {self.root}: run `rapport warehouse export-parquet` first"
            ) from None
        names = [*parquet.read_manifest(self.root).get("tables", []), ROLLUPS]
        with _LOCK:
            for name in names:
                path = self.root / name
                if not path.exists() or (name == ROLLUPS and not _has_files(path)):
                    continue
                key = str(path)
                # rollups are rewritten by Spark itself (refresh_rollups), not by an export
                mark = _rollups_stamp(self.root) if name == ROLLUPS else stamp
                if _VIEWS.get(name) == (key, mark):
                    continue
                spark.read.parquet(key).createOrReplaceTempView(name)
                _VIEWS[name] = (key, mark)


def _rollups_stamp(root: Path) -> float:
    """When ``person_daily`` was last built (its manifest is written after the files)."""
    try:
        return (root / ROLLUPS_MANIFEST).stat().st_mtime_ns / 1e9
    except FileNotFoundError:
        return (root / ROLLUPS).stat().st_mtime


def reader(ws: Workspace) -> Warehouse | SparkWarehouse:
    """Where tags, audiences and offline lead rules read: the DuckDB warehouse, or Spark."""
    if on_spark(ws):
        return SparkWarehouse(ws.settings)
    return ws.warehouse


@contextmanager
def reading(ws: Workspace, con: BaseBackend) -> Iterator[BaseBackend]:
    """``con`` (the DuckDB connection already open), or a Spark connection on Spark."""
    if not on_spark(ws):
        yield con
        return
    with SparkWarehouse(ws.settings).connect() as spark:
        yield spark


# -- backend-neutral scratch tables ------------------------------------------------------------
def temp_table(con: BaseBackend, name: str, expr: ir.Table) -> ir.Table:
    """``expr`` computed once and kept for the connection: a DuckDB temp table, or a cached
    Spark view (Ibis' PySpark backend has no temporary tables)."""
    if con.name == "pyspark":
        con.raw_sql(f"DROP VIEW IF EXISTS `{name}`")
        con.raw_sql(f"CACHE TABLE `{name}` AS {con.compile(expr)}")
        return con.table(name)
    return con.create_table(name, expr, temp=True, overwrite=True)  # type: ignore[attr-defined]


def drop_temp(con: BaseBackend, name: str) -> None:
    if con.name == "pyspark":
        con.raw_sql(f"UNCACHE TABLE IF EXISTS `{name}`")
        con.raw_sql(f"DROP VIEW IF EXISTS `{name}`")
        return
    con.drop_table(name, force=True)  # type: ignore[attr-defined]


def to_duckdb(settings: Settings, con: BaseBackend, name: str, expr: ir.Table) -> ir.Table:
    """Spark's result of ``expr`` as a DuckDB temp table of ``con``: results are written
    where the product reads them.

    Spark writes the result as Parquet beside the tables it reads and DuckDB reads the files,
    so a large result never passes through Spark's driver: collected, the 50 tags of 1 M
    persons (~50 M rows) exceed its 1 GB result limit (``spark.driver.maxResultSize``)."""
    out = Path(settings.spark_dir) / "_results" / f"{name}-{uuid.uuid4().hex}"
    try:
        expr.to_parquet(out)
        if not any(out.glob("*.parquet")):  # an empty result may have no file, hence no schema
            return con.create_table(name, expr.to_pyarrow(), temp=True, overwrite=True)  # type: ignore[attr-defined]
        glob = str(out / "*.parquet").replace("'", "''")
        con.raw_sql(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM read_parquet('{glob}')")  # type: ignore[attr-defined]
        return con.table(name)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# -- rollups on Spark ---------------------------------------------------------------------------
@dataclass
class RollupBuild:
    """What ``refresh_rollups`` did: the days it rebuilt and removed, and the table's rows."""

    full: bool
    days_built: list[str] = field(default_factory=list)
    days_removed: list[str] = field(default_factory=list)
    days_unchanged: int = 0
    rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_rollups_manifest(root: Path) -> dict[str, Any]:
    """What the last ``refresh_rollups`` built from (``ROLLUPS_MANIFEST``); {} before the first."""
    try:
        return dict(json.loads((root / ROLLUPS_MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def build_rollups(ws: Workspace, *, full: bool = False) -> int:
    """``person_daily`` brought up to date by Spark (``refresh_rollups``); its rows."""
    return refresh_rollups(ws, full=full).rows


def refresh_rollups(ws: Workspace, *, full: bool = False) -> RollupBuild:
    """``person_daily`` from the exported events (the same Ibis aggregate as
    ``rollups.refresh``), written as Parquet partitioned by day, **incremental by day**.

    A day's rollup rows depend on that day's events alone, and the export fingerprints every
    day's events (count and a hash of each event id and person_key, so identity merges and
    erasures change it: ``rollups.resolved_events`` takes the person from the event row,
    which resolution re-keys in place). So a build rewrites only the days whose fingerprint
    differs from the one it last built from (dynamic partition overwrite) and drops the days
    the export dropped; it rebuilds everything on the first build, when the numeric property
    columns or the exported event columns changed, or with ``full``."""
    from rapport.tags import rollups

    started = time.perf_counter()
    wh = SparkWarehouse(ws.settings)
    target = wh.root / ROLLUPS
    exported = parquet.read_manifest(wh.root)  # before reading the events (see the doc above)
    prints: dict[str, list[int]] = exported.get("days", {})
    built = read_rollups_manifest(wh.root)
    with wh.connect() as con:
        events = con.table("events")
        props = [p for p in rollups.numeric_properties(ws) if f"prop_{p}" in events.columns]
        full = (
            full
            or not built
            or not target.is_dir()
            or built.get("props") != props
            or built.get("events_columns") != exported.get("events_columns")
        )
        before: dict[str, list[int]] = {} if full else built.get("days", {})
        days = sorted(d for d, fp in prints.items() if before.get(d) != fp)
        removed = sorted(set(before) - set(prints))
        report = RollupBuild(full, days, removed, len(prints) - len(days))
        spark = wh.session()
        # a rebuilt day without resolved events writes nothing, so its old rows go first
        for day in [] if full else [*days, *removed]:
            shutil.rmtree(target / f"day={day}", ignore_errors=True)
        if full or days:
            source = rollups.resolved_events(con)
            if not full:  # the rewritten days only (Spark prunes the other day directories)
                source = source.filter(source.day.isin([date.fromisoformat(d) for d in days]))
            daily = rollups.aggregate(source, props)
            daily = daily.select(
                person_key=daily.person_key.cast("int64"),
                day=daily.day.cast("date"),
                event=daily.event,
                n=daily.n.cast("int64"),
                **{
                    rollups.sum_column(p): daily[rollups.sum_column(p)].cast("float64")
                    for p in props
                },
            )
            # one task per day: a file per day, not one per task and day
            df = spark.sql(con.compile(daily)).repartition("day")
            (
                df.write.mode("overwrite")
                .option("partitionOverwriteMode", "static" if full else "dynamic")
                .partitionBy("day")
                .parquet(str(target))
            )
        target.mkdir(parents=True, exist_ok=True)
        _write_json(
            wh.root / ROLLUPS_MANIFEST,
            {
                "built_at": datetime.now(UTC).isoformat(),
                "last": {"full": full, "days_built": len(days), "days_removed": len(removed)},
                "props": props,
                "events_columns": exported.get("events_columns"),
                "days": prints,
            },
        )
        with _LOCK:
            _VIEWS.pop(ROLLUPS, None)
        if not _has_files(target):  # every day dropped: no view over files that are gone
            spark.catalog.dropTempView(ROLLUPS)
        wh._register(spark)
        report.rows = int(spark.table(ROLLUPS).count()) if _has_files(target) else 0
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _has_files(path: Path) -> bool:
    return any(path.glob("day=*/*.parquet"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=0), encoding="utf-8")
    os.replace(tmp, path)


def forget() -> None:
    """Stop the process's Spark session (tests; a long-lived process keeps it)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None:
            _SESSION.stop()
        _SESSION = None
        _VIEWS.clear()
