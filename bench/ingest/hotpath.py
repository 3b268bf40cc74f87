"""CPU per event of each step of the collector's path, in one process (no HTTP, no contention).

.venv/bin/python bench/ingest/hotpath.py [EVENTS]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import build_bodies  # noqa: E402

from rapport.ingest.collector import Collector  # noqa: E402
from rapport.ingest.messages import decode_body  # noqa: E402
from rapport.ingest.sources import create_source, source_by_key  # noqa: E402
from rapport.settings import load_settings  # noqa: E402
from rapport.workspace import Workspace  # noqa: E402


def main(events: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        ws = Workspace(load_settings(home=Path(home)))
        ws.init()
        source = source_by_key(ws.db, create_source(ws.db, "bench")["write_key"])
        assert source is not None
        bodies = build_bodies(events, 500)
        collector = Collector(ws)
        steps = {}
        t0 = time.process_time()
        decoded = [decode_body(body) for body in bodies]
        steps["decode"] = time.process_time() - t0
        t0 = time.process_time()
        checked = [collector.check(source, d["batch"], received=datetime.now(UTC)) for d in decoded]
        steps["check"] = time.process_time() - t0
        t0 = time.perf_counter()
        for batch in checked:
            ws.log.append_many(batch.records)
        steps["append (wall, one commit per 500)"] = time.perf_counter() - t0
        t0 = time.process_time()
        for batch in checked:
            msgspec.json.encode({"success": True, "results": batch.results})
        steps["encode response"] = time.process_time() - t0
        ws.close()
    for name, seconds in steps.items():
        print(f"{name:36s} {1e6 * seconds / events:6.1f} µs/event")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
