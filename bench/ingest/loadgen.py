"""Load generator for ``/v1/batch``: run as its own process, prints one JSON line of results.

Bodies are built before the clock starts, so the measurement is the server's, not ours.
Only events the server acknowledged (status ``accepted``) count.

    python bench/ingest/loadgen.py --url http://127.0.0.1:8000 --key WRITE_KEY --events 200000
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx


def build_bodies(events: int, batch: int) -> list[bytes]:
    now = datetime.now(UTC).isoformat()
    bodies = []
    for start in range(0, events, batch):
        messages = [
            {
                "type": "track",
                "event": "view_product",
                "userId": f"user-{(start + i) % 50_000}",
                "anonymousId": f"device-{(start + i) % 70_000}",
                "messageId": uuid.uuid4().hex,
                "timestamp": now,
                "properties": {
                    "item_id": f"F-{i % 300}",
                    "category": "fridge",
                    "price": 6999.0,
                    "duration_s": 75,
                    "scene": "search",
                },
                "context": {
                    "library": {"name": "loadgen", "version": "1"},
                    "ip": "203.0.113.7",
                    "app": {"version": "8.2.0"},
                },
            }
            for i in range(min(batch, events - start))
        ]
        bodies.append(json.dumps({"batch": messages, "sentAt": now}).encode())
    return bodies


def run(url: str, key: str, bodies: list[bytes], connections: int) -> dict[str, float]:
    work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    for body in bodies:
        work.put(body)
    accepted = [0] * connections
    retries = [0] * connections
    latencies: list[float] = []

    def worker(n: int) -> None:
        headers = {"Content-Type": "application/json"}
        with httpx.Client(base_url=url, auth=(key, ""), timeout=60) as http:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                while True:
                    t0 = time.perf_counter()
                    r = http.post("/v1/batch", content=body, headers=headers)
                    if r.status_code == 503:  # overloaded: back off, send the same batch again
                        retries[n] += 1
                        time.sleep(0.05)
                        continue
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t0)
                    results = r.json()["results"]
                    accepted[n] += sum(1 for x in results if x["status"] == "accepted")
                    break

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "accepted": sum(accepted),
        "seconds": round(seconds, 3),
        "events_per_s": round(sum(accepted) / seconds),
        "requests": len(latencies),
        "retries_503": sum(retries),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    bodies = build_bodies(args.events, args.batch)
    result = run(args.url, args.key, bodies, args.connections)
    result.update(batch=args.batch, connections=args.connections, body_bytes=len(bodies[0]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
