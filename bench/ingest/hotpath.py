"""CPU per event of each step of the collector's path, in one process (no HTTP, no contention).

.venv/bin/python bench/ingest/hotpath.py [EVENTS]
"""

from __future__ import annotations

import gc
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
        steps = dict.fromkeys(
            ("decode", "check", "append (wall, one commit per 500)", "encode response"), 0.0
        )
        # One request at a time, as the server does: keeping every decoded batch alive would
        # time the cyclic GC walking a growing heap (decode looked 5 x slower: 6.1 against
        # 1.1 µs), and the server freezes its start-up heap (``rapport.web.collector.setup``).
        gc.collect()
        gc.freeze()
        for body in bodies:
            t0 = time.process_time()
            decoded = decode_body(body)
            t1 = time.process_time()
            checked = collector.check(source, decoded["batch"], received=datetime.now(UTC))
            t2 = time.process_time()
            w0 = time.perf_counter()
            ws.log.append_many(checked.records)
            w1 = time.perf_counter()
            t3 = time.process_time()
            msgspec.json.encode({"success": True, "results": checked.results})
            t4 = time.process_time()
            steps["decode"] += t1 - t0
            steps["check"] += t2 - t1
            steps["append (wall, one commit per 500)"] += w1 - w0
            steps["encode response"] += t4 - t3
            del decoded, checked  # freed here, not inside the next request's decode
        gc.unfreeze()
        ws.close()
    for name, seconds in steps.items():
        print(f"{name:36s} {1e6 * seconds / events:6.1f} µs/event")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
