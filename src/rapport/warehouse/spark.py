"""The warehouse on Spark: the Parquet tables of ``rapport.warehouse.parquet`` as Spark views,
reached through Ibis' PySpark backend with the same ``connect()`` contract as ``Warehouse``.

``warehouse_backend = "spark"`` makes tags, audiences and offline lead rules *read* here: the
compiled Ibis expressions (``rapport.conditions.to_ibis``, the rollup tags, the attribute
and statistical tags) run on Spark unchanged; their results (tag values, audience members,
lead candidates) are collected as Arrow and written where the rest of the product reads
them (DuckDB ``tag_values`` / ``tag_history``, the bitmap index, the metadata DB), so the
console works as before. ``reader(ws)`` is the one switch.

One Spark session per process (``session``): starting a JVM costs seconds. The views are
re-registered when an export rewrote the files (its manifest changed), since Spark caches a
directory's file list.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
                if not path.exists():
                    continue
                key = str(path)
                # rollups are rewritten by Spark itself (build_rollups), not by an export
                mark = path.stat().st_mtime if name == ROLLUPS else stamp
                if _VIEWS.get(name) == (key, mark):
                    continue
                spark.read.parquet(key).createOrReplaceTempView(name)
                _VIEWS[name] = (key, mark)


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


def to_duckdb(con: BaseBackend, name: str, expr: ir.Table) -> ir.Table:
    """Spark's result of ``expr`` as a DuckDB temp table of ``con``: results are written
    where the product reads them."""
    return con.create_table(name, expr.to_pyarrow(), temp=True, overwrite=True)  # type: ignore[attr-defined]


# -- rollups on Spark ---------------------------------------------------------------------------
def build_rollups(ws: Workspace) -> int:
    """``person_daily`` rebuilt by Spark from the exported events (the same Ibis aggregate as
    ``rollups.refresh``; always in full) and written as Parquet; its rows."""
    from rapport.tags import rollups

    props = rollups.numeric_properties(ws)
    wh = SparkWarehouse(ws.settings)
    target = wh.root / ROLLUPS
    with wh.connect() as con:
        events = con.table("events")
        props = [p for p in props if f"prop_{p}" in events.columns]
        daily = rollups.aggregate(rollups.resolved_events(con), props)
        daily = daily.select(
            person_key=daily.person_key.cast("int64"),
            day=daily.day.cast("date"),
            event=daily.event,
            n=daily.n.cast("int64"),
            **{rollups.sum_column(p): daily[rollups.sum_column(p)].cast("float64") for p in props},
        )
        spark = wh.session()
        df = spark.sql(con.compile(daily))
        df.write.mode("overwrite").parquet(str(target))
        with _LOCK:
            _VIEWS.pop(ROLLUPS, None)
        wh._register(spark)
        return int(spark.table(ROLLUPS).count())


def forget() -> None:
    """Stop the process's Spark session (tests; a long-lived process keeps it)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None:
            _SESSION.stop()
        _SESSION = None
        _VIEWS.clear()
