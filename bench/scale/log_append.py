"""Append throughput of the event log: SQLite (embedded) vs NATS JetStream, events/s
acknowledged, in one process.

    .venv/bin/python bench/scale/log_append.py            # EVENTS=100000 BATCH=100

Each backend gets the same records (a ~400-byte Segment track payload) in batches of
``BATCH``, two ways: ``append_many`` one batch after the other (an importer), and ``append``
with ``INFLIGHT`` batches awaited at once (a collector under load: the SQLite log group-commits
them, the NATS log has them all in flight). Every number counts only acknowledged events: the
SQLite commit is fsync'd, the NATS PubAck means JetStream stored the message (file storage, one
replica, its default sync). NATS at ``RAPPORT_NATS_URL`` (default ``nats://127.0.0.1:4222``);
the stream is made for the run and deleted after.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable

import nats

from rapport.log import EventLog, LogRecord
from rapport.settings import Settings, load_settings

EVENTS = int(os.environ.get("EVENTS", "100000"))
BATCH = int(os.environ.get("BATCH", "100"))
INFLIGHT = int(os.environ.get("INFLIGHT", "32"))
NATS_URL = os.environ.get("RAPPORT_NATS_URL", "nats://127.0.0.1:4222")


def records(run: str, n: int) -> list[LogRecord]:
    payload = json.dumps(
        {
            "type": "track",
            "event": "view_product",
            "anonymousId": "a123456",
            "properties": {"item_id": "F-1", "category": "fridge", "price": 5999},
            "context": {"library": {"name": "analytics-python", "version": "2.3.2"}},
            "timestamp": "2026-11-01T08:00:00.000Z",
            "receivedAt": "2026-11-01T08:00:00.100Z",
        }
    ).encode()
    return [
        LogRecord(
            "web", f"{run}-{i}", "track", "view_product", None, "a123456",
            "2026-11-01T08:00:00.000Z", "2026-11-01T08:00:00.100Z", payload,
        )
        for i in range(n)
    ]  # fmt: skip


def sequential(log: EventLog, recs: list[LogRecord]) -> float:
    start = time.perf_counter()
    for i in range(0, len(recs), BATCH):
        log.append_many(recs[i : i + BATCH])
    return len(recs) / (time.perf_counter() - start)


def concurrent(log: EventLog, recs: list[LogRecord]) -> float:
    batches = [recs[i : i + BATCH] for i in range(0, len(recs), BATCH)]

    async def main() -> None:
        queue = iter(batches)

        async def sender() -> None:
            for batch in queue:
                await log.append(batch)

        await asyncio.gather(*(sender() for _ in range(INFLIGHT)))

    start = time.perf_counter()
    asyncio.run(main())
    return len(recs) / (time.perf_counter() - start)


def run(name: str, settings: Settings, cleanup: Callable[[], None]) -> dict[str, float]:
    log = EventLog.open(settings)
    try:
        out = {
            "append_many": sequential(log, records("s", EVENTS)),
            f"append x{INFLIGHT}": concurrent(log, records("c", EVENTS)),
        }
        assert log.count() == 2 * EVENTS, log.count()
    finally:
        log.close()
        cleanup()
    print(f"{name:7} " + "  ".join(f"{k}: {v:,.0f} events/s" for k, v in out.items()))  # noqa: T201
    return out


def main() -> None:
    print(f"{EVENTS:,} events per way, batches of {BATCH}, {INFLIGHT} in flight")  # noqa: T201
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", load_settings(home=tmp), lambda: None)
    stream = f"RAPPORT_BENCH_{uuid.uuid4().hex[:8].upper()}"

    async def drop() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    with tempfile.TemporaryDirectory() as tmp:
        nats_settings = load_settings(
            home=tmp, log_backend="nats", nats_url=NATS_URL, nats_log_stream=stream
        )
        run("nats", nats_settings, lambda: asyncio.run(drop()))


if __name__ == "__main__":
    main()
