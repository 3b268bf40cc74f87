"""Benchmark: 10 million order rows from Parquet imported as ``order_paid`` events.

Run: ``.venv/bin/pytest -m bench -s bench/import`` (ROWS=... to change the size).
Target (issue 2): under 60 s on a 2-core machine.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import duckdb
import pytest

from rapport.ingest.importer import ImportSpec, run_import
from rapport.settings import load_settings
from rapport.workspace import Workspace

ROWS = int(os.environ.get("ROWS", "10000000"))
RUNS = int(os.environ.get("RUNS", "3"))


def generate(path: Path, rows: int) -> None:
    """Orders of 1M customers; mobiles in messy formats, ~1% invalid, ~20% missing."""
    duckdb.sql(
        f"""
        COPY (
          SELECT
            'o' || i AS order_id,
            'c' || c AS customer_id,
            CASE  -- one mobile per customer, in the format of that customer's system
              WHEN c % 5 = 0 THEN NULL
              WHEN c % 101 = 0 THEN '12345'
              WHEN c % 3 = 0 THEN '+86-138' || lpad(CAST(c AS VARCHAR), 8, '0')
              WHEN c % 3 = 1 THEN '139 ' || lpad(CAST(c AS VARCHAR), 8, '0')
              ELSE '86137' || lpad(CAST(c AS VARCHAR), 8, '0')
            END AS mobile,
            round(10 + (i * 7919 % 100000) / 10.0, 2) AS amount,
            ['fridge', 'washer', 'tv', 'aircon', 'hotel'][1 + i % 5] AS category,
            TIMESTAMP '2024-01-01' + to_seconds(i * 3) AS created_at
          FROM (SELECT i, i % 1000000 AS c FROM range({rows}) t(i))
        ) TO '{path}' (FORMAT parquet)
        """
    )


MAPPING = {
    "target": "events",
    "identifiers": {"customer_id": "customer_id", "mobile": "mobile"},
    "event": {"name": "order_paid", "time": "created_at", "id": "order_id"},
    "properties": ["amount", "category"],
}


@pytest.mark.bench
def test_import_10m_orders(tmp_path):
    data = tmp_path / "orders.parquet"
    t0 = time.perf_counter()
    generate(data, ROWS)
    print(f"\ngenerated {ROWS:,} rows in {time.perf_counter() - t0:.1f}s")
    timings = []
    for n in range(RUNS):
        ws = Workspace(load_settings(home=tmp_path / f"home{n}"))
        ws.init()
        spec = ImportSpec(source="orders", uri=str(data), mapping=MAPPING)
        start = time.perf_counter()
        run = run_import(ws, spec)
        elapsed = time.perf_counter() - start
        timings.append(elapsed)
        print(
            f"run {n + 1}: {elapsed:.1f}s  read {run['rows_read']:,} loaded {run['rows_loaded']:,}"
            f" quarantined {run['rows_quarantined']:,} ({ROWS / elapsed:,.0f} rows/s)"
        )
        assert run["rows_loaded"] + run["rows_quarantined"] == ROWS
        ws.close()
    median = statistics.median(timings)
    print(f"median of {RUNS}: {median:.1f}s -> {median / 60:.2f} of the 60 s target")
