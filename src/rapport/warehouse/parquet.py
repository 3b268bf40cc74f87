"""The warehouse as Parquet, for Spark: ``rapport warehouse export-parquet``.

Layout under ``spark_dir`` (``settings.spark_warehouse_path``), one directory per table, which
``rapport.warehouse.spark`` reads as Spark views of the same names:

- ``events/day=YYYY-MM-DD/*.parquet``: partitioned by UTC day (Spark prunes days from the
  directory names), JSON columns as text;
- ``profiles``, ``items``, ``tag_values``, ``segment_members``, ``identity_history``: one
  file each, rewritten by every export (small next to the events).

``person_daily`` is not exported: on Spark it is Spark's own (``spark.build_rollups``).

Incremental: an export fingerprints every day of ``events`` (row count and the XOR of a hash
of each row's event id and person) in one DuckDB pass and rewrites only the days whose
fingerprint changed since the last export (new events, persons merged by identity
resolution, erasures), or every day when the columns changed. Each rewritten day is written
aside by DuckDB's ``COPY ... (PARTITION_BY day)`` and swapped in directory by directory.

In a cluster the loader would write these Parquet files itself (or Hive tables through the
Spark catalog); this export is the path from an embedded DuckDB warehouse, and what the
benchmarks measure.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

MANIFEST = "_rapport_export.json"
EVENTS = "events"
#: tables exported whole (when the warehouse has them)
WHOLE = ("profiles", "items", "tag_values", "segment_members", "identity_history")


@dataclass
class ExportReport:
    path: str
    days_written: int = 0
    days_unchanged: int = 0
    days_removed: int = 0
    events_written: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    full: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _columns(con: Backend, table: str) -> str:
    """The table's columns for a COPY, JSON as text (Spark has no JSON type)."""
    schema = con.table(table).schema()
    return ", ".join(
        f'CAST("{name}" AS VARCHAR) AS "{name}"' if dtype.is_json() else f'"{name}"'
        for name, dtype in schema.items()
    )


def read_manifest(root: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((root / MANIFEST).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=0), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)


def export(ws: Workspace, *, full: bool = False) -> ExportReport:
    """Write the warehouse's tables as Parquet under ``ws.settings.spark_dir`` (module doc)."""
    started = time.perf_counter()
    root = Path(ws.settings.spark_dir)
    root.mkdir(parents=True, exist_ok=True)
    report = ExportReport(path=str(root))
    old = read_manifest(root)
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with ws.warehouse.connect() as con:
            db = con.con
            present = set(con.list_tables())
            columns = _columns(con, EVENTS)
            full = full or old.get("events_columns") != columns
            report.full = full
            rows = db.execute(
                "SELECT CAST(day AS VARCHAR), count(*), "
                "bit_xor(hash(event_id, person_key, log_offset)) FROM events GROUP BY day"
            ).fetchall()
            prints = {day: [int(n), int(h)] for day, n, h in rows if day is not None}
            before: dict[str, list[int]] = {} if full else old.get("days", {})
            changed = sorted(d for d, fp in prints.items() if before.get(d) != fp)
            removed = sorted(set(before) - set(prints)) if not full else []
            if full:  # days on disk from an older layout go too
                removed = sorted(
                    p.name.split("=", 1)[1]
                    for p in (root / EVENTS).glob("day=*")
                    if p.name.split("=", 1)[1] not in prints
                )
            if changed:
                db.execute("CREATE OR REPLACE TEMP TABLE __export_days (day DATE)")
                db.executemany("INSERT INTO __export_days VALUES (?)", [[d] for d in changed])
                db.execute(
                    f"COPY (SELECT {columns} FROM events "
                    "WHERE day IN (SELECT day FROM __export_days) "
                    f") TO {_quote(staging / EVENTS)} "
                    "(FORMAT parquet, PARTITION_BY (day), COMPRESSION zstd)"
                )
                db.execute("DROP TABLE __export_days")
                report.events_written = sum(prints[d][0] for d in changed)
            for name in WHOLE:
                if name not in present:
                    continue
                out = staging / name
                out.mkdir()
                db.execute(
                    f'COPY (SELECT {_columns(con, name)} FROM "{name}") '
                    f"TO {_quote(out / 'part-0.parquet')} (FORMAT parquet, COMPRESSION zstd)"
                )
                report.tables[name] = int(
                    db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                )
        # swap in: each day directory, then each whole table
        events_dir = root / EVENTS
        events_dir.mkdir(exist_ok=True)
        for day in changed:
            target = events_dir / f"day={day}"
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging / EVENTS / f"day={day}", target)
        for day in removed:
            shutil.rmtree(events_dir / f"day={day}", ignore_errors=True)
        for name in report.tables:
            target = root / name
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.days_written = len(changed)
    report.days_unchanged = len(prints) - len(changed)
    report.days_removed = len(removed)
    _write_manifest(
        root,
        {
            "exported_at": datetime.now(UTC).isoformat(),
            "events_columns": columns,
            "days": prints,
            "tables": sorted([EVENTS, *report.tables]),
        },
    )
    report.seconds = round(time.perf_counter() - started, 3)
    return report
