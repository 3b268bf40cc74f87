"""Load generator for ``/v1/batch``: run as its own process, prints one JSON line of results.

Bodies are built before the clock starts, so the measurement is the server's, not ours.
Only events the server acknowledged (status ``accepted``) count. Each connection is a plain
keep-alive ``http.client`` connection: the generator shares the machine's cores with the
server, and httpx cost it ~3.5 µs of CPU per event against ~1 µs (``client_cpu_us_per_event``).

    python bench/ingest/loadgen.py --url http://127.0.0.1:8000 --key WRITE_KEY --events 200000
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import queue
import threading
import time
import urllib.parse
import uuid
from datetime import UTC, datetime


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
    failures: list[BaseException] = []
    where = urllib.parse.urlsplit(url)
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
    }

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        try:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                while True:
                    t0 = time.perf_counter()
                    conn.request("POST", "/v1/batch", body=body, headers=headers)
                    response = conn.getresponse()
                    answer = response.read()
                    if response.status == 503:  # overloaded: back off, send the same batch again
                        retries[n] += 1
                        time.sleep(0.05)
                        continue
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {answer[:500]!r}")
                    latencies.append(time.perf_counter() - t0)
                    results = json.loads(answer)["results"]
                    accepted[n] += sum(1 for x in results if x["status"] == "accepted")
                    break
        except BaseException as exc:
            failures.append(exc)  # raised by run(), not lost in a thread
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    started = time.perf_counter()
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    if failures:
        raise failures[0]
    latencies.sort()
    return {
        "accepted": sum(accepted),
        "seconds": round(seconds, 3),
        "events_per_s": round(sum(accepted) / seconds),
        "requests": len(latencies),
        "retries_503": sum(retries),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "client_cpu_us_per_event": round(1e6 * cpu / max(sum(accepted), 1), 2),
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
