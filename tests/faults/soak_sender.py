"""The soak test's sender, a process of its own: ``/v1/batch`` at a steady rate.

Every acknowledged messageId goes to ``--acked`` (one per line); on exit one JSON line of
counts is printed: sent, acknowledged, errors (non-200 answers and connection errors), and how
far behind the schedule it fell (a sender that cannot keep the rate says so).

    python tests/faults/soak_sender.py --url URL --key KEY --rate 16000 --seconds 600 --acked F
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from datetime import UTC, datetime

BATCH = 500


def body() -> tuple[bytes, list[str]]:
    now = datetime.now(UTC).isoformat()
    ids = [uuid.uuid4().hex for _ in range(BATCH)]
    messages = [
        {
            "type": "track",
            "event": "view_product",
            "userId": f"user-{hash(mid) % 50_000}",
            "messageId": mid,
            "timestamp": now,
            "properties": {"item_id": f"F-{i % 300}", "category": "fridge", "price": 6999.0},
        }
        for i, mid in enumerate(ids)
    ]
    return json.dumps({"batch": messages, "sentAt": now}).encode(), ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--rate", type=float, required=True, help="events per second")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--acked", required=True)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()

    target = urllib.parse.urlparse(args.url)
    auth = "Basic " + base64.b64encode(f"{args.key}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": auth}
    interval = BATCH / args.rate  # one batch per interval, over all connections
    start = time.monotonic()
    total = int(args.seconds / interval)
    counts: Counter[str] = Counter()
    lag = [0.0]
    lock = threading.Lock()
    next_slot = [0]
    out = open(args.acked, "w")  # noqa: SIM115

    def worker() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        while True:
            with lock:
                slot = next_slot[0]
                if slot >= total:
                    return
                next_slot[0] += 1
            due = start + slot * interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            data, _ = body()
            try:
                conn.request("POST", "/v1/batch", data, headers)
                resp = conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    counts[f"error {type(exc).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                continue
            with lock:
                counts["sent"] += BATCH
                lag[0] = max(lag[0], time.monotonic() - due)
                if resp.status != 200:
                    counts[f"error {resp.status}"] += 1
                    continue
                results = json.loads(answer)["results"]
                ok = [r["messageId"] for r in results if r["status"] == "accepted"]
                counts["acknowledged"] += len(ok)
                out.write("\n".join(ok) + "\n")

    threads = [threading.Thread(target=worker) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    elapsed = time.monotonic() - start
    print(json.dumps({**counts, "seconds": round(elapsed, 1), "max_lag_s": round(lag[0], 2),
                      "events_per_s": round(counts["acknowledged"] / elapsed)}))  # fmt: skip


if __name__ == "__main__":
    main()
