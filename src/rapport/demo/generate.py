"""Generate the demo's source systems as files, chunk by chunk, in worker processes.

Output (under ``RAPPORT_HOME/demo/``), each written as chunks arrive so memory stays flat
for a million persons:

- ``member_db.sqlite``      table ``members`` (the "MariaDB-like" member DB)
- ``orders.parquet``        the order system
- ``tickets.csv``           the customer-service system
- ``products.csv``, ``hotels.csv``  the item catalogue (product and hotel properties)
- ``tracking/{app,web,server}.jsonl``  Segment messages as the SDKs would send them
- ``ground_truth.parquet``  (source, record_key) -> true_person, never loaded into Rapport
- ``manifest.json``         seed, size, window and counts of this generation
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rapport.demo.people import Pools
from rapport.demo.products import HOTELS, PRODUCTS
from rapport.demo.systems import (
    MEMBER_COLUMNS,
    TICKET_COLUMNS,
    TRACKING_SOURCES,
    Chunk,
    generate_chunk,
)

CHUNK_PERSONS = 2000  # fixed: the output of a seed must not depend on the number of workers

ORDERS_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("customer_id", pa.string()),
        ("mobile", pa.string()),
        ("model", pa.string()),
        ("category", pa.string()),
        ("amount", pa.float64()),
        ("paid_at", pa.timestamp("us", tz="UTC")),
        ("item_id", pa.string()),
    ]
)
TRUTH_SCHEMA = pa.schema(
    [("source", pa.string()), ("record_key", pa.string()), ("true_person", pa.int64())]
)
MEMBERS_DDL = """CREATE TABLE members (
    member_id VARCHAR(20) PRIMARY KEY,
    name VARCHAR(100),
    gender VARCHAR(8),
    birthday VARCHAR(20),
    mobile VARCHAR(32),
    email VARCHAR(200),
    id_card VARCHAR(18),
    city VARCHAR(50),
    member_level VARCHAR(16),
    registered_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL
)"""


@dataclass
class DemoFiles:
    """Where the generated systems are and how many records each holds."""

    root: Path
    seed: int
    persons: int
    window_end: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def member_db(self) -> Path:
        return self.root / "member_db.sqlite"

    @property
    def orders(self) -> Path:
        return self.root / "orders.parquet"

    @property
    def tickets(self) -> Path:
        return self.root / "tickets.csv"

    @property
    def products(self) -> Path:
        return self.root / "products.csv"

    @property
    def hotels(self) -> Path:
        return self.root / "hotels.csv"

    @property
    def ground_truth(self) -> Path:
        return self.root / "ground_truth.parquet"

    def tracking(self, source: str) -> Path:
        return self.root / "tracking" / f"{source}.jsonl"

    @classmethod
    def read(cls, root: Path) -> DemoFiles:
        data = json.loads((root / "manifest.json").read_text())
        return cls(root=root, **{k: v for k, v in data.items() if k != "root"})


def _write_catalogue(files: DemoFiles) -> None:
    stock = 50  # the demo does not model inventory; every product is in stock
    with files.products.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["item_id", "model", "brand", "category", "price", "stock"])
        out.writerows((p.item_id, p.model, p.brand, p.category, p.price, stock) for p in PRODUCTS)
    with files.hotels.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["item_id", "name", "city", "star", "price"])
        out.writerows((h.item_id, h.name, h.city, h.star, h.price) for h in HOTELS)


class _Writers:
    """Append-only writers of every output file."""

    def __init__(self, files: DemoFiles) -> None:
        self.files = files
        (files.root / "tracking").mkdir(parents=True)
        self.sqlite = sqlite3.connect(files.member_db)
        self.sqlite.execute("PRAGMA journal_mode=OFF")
        self.sqlite.execute("PRAGMA synchronous=OFF")
        self.sqlite.execute(MEMBERS_DDL)
        self.orders = pq.ParquetWriter(files.orders, ORDERS_SCHEMA, compression="zstd")
        self.truth = pq.ParquetWriter(files.ground_truth, TRUTH_SCHEMA, compression="zstd")
        self.tickets_fh = files.tickets.open("w", newline="", encoding="utf-8")
        self.tickets = csv.writer(self.tickets_fh)
        self.tickets.writerow(TICKET_COLUMNS)
        self.tracking = {s: files.tracking(s).open("wb") for s in TRACKING_SOURCES}
        self.counts = {"members": 0, "orders": 0, "tickets": 0, "truth": 0}
        self.counts.update({f"events_{s}": 0 for s in TRACKING_SOURCES})

    def write(self, chunk: Chunk) -> None:
        placeholders = ",".join("?" * len(MEMBER_COLUMNS))
        self.sqlite.executemany(f"INSERT INTO members VALUES ({placeholders})", chunk.members)
        self.sqlite.commit()
        if chunk.orders:
            columns = list(zip(*chunk.orders, strict=True))
            arrays = [pa.array(c, t) for c, t in zip(columns, ORDERS_SCHEMA.types, strict=True)]
            self.orders.write_table(pa.Table.from_arrays(arrays, schema=ORDERS_SCHEMA))
        self.tickets.writerows(chunk.tickets)
        for source, blob in chunk.jsonl.items():
            self.tracking[source].write(blob)
            self.counts[f"events_{source}"] += chunk.event_counts[source]
        arrays = [pa.array(c, t) for c, t in zip(chunk.truth, TRUTH_SCHEMA.types, strict=True)]
        self.truth.write_table(pa.Table.from_arrays(arrays, schema=TRUTH_SCHEMA))
        self.counts["members"] += len(chunk.members)
        self.counts["orders"] += len(chunk.orders)
        self.counts["tickets"] += len(chunk.tickets)
        self.counts["truth"] += len(chunk.truth[0])

    def close(self) -> None:
        self.sqlite.close()
        self.orders.close()
        self.truth.close()
        self.tickets_fh.close()
        for fh in self.tracking.values():
            fh.close()


_pools: Pools | None = None


def _init_worker(seed: int) -> None:
    global _pools
    _pools = Pools.build(seed)


def _chunk_in_worker(seed: int, index: int, persons: int, end: datetime) -> Chunk:
    assert _pools is not None, "worker not initialised"
    first = index * CHUNK_PERSONS
    return generate_chunk(seed, index, first, min(CHUNK_PERSONS, persons - first), end, _pools)


def _chunks(seed: int, persons: int, end: datetime, workers: int) -> Iterator[Chunk]:
    """Chunks in order; at most two per worker in flight so memory does not grow with size."""
    n_chunks = -(-persons // CHUNK_PERSONS)
    if workers <= 1 or n_chunks == 1:
        _init_worker(seed)
        for index in range(n_chunks):
            yield _chunk_in_worker(seed, index, persons, end)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(seed,)) as pool:
        pending: deque[Future[Chunk]] = deque()
        for index in range(n_chunks):
            pending.append(pool.submit(_chunk_in_worker, seed, index, persons, end))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def generate(
    root: Path,
    *,
    persons: int,
    seed: int,
    end: datetime,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> DemoFiles:
    """Write every source system of the demo under ``root`` (replacing an earlier demo)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    files = DemoFiles(root=root, seed=seed, persons=persons, window_end=end.isoformat())
    _write_catalogue(files)
    writers = _Writers(files)
    try:
        for chunk in _chunks(seed, persons, end, workers):
            writers.write(chunk)
            if progress:
                progress(chunk.persons)
    finally:
        writers.close()
    files.counts = writers.counts
    manifest = {k: v for k, v in asdict(files).items() if k != "root"}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return files
