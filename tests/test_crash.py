"""SIGKILL in the middle of a load loses no acknowledged event."""

from __future__ import annotations

import signal
import threading
import uuid

import httpx

from rapport.log import EventLog
from rapport.settings import load_settings


def test_sigkill_mid_load_loses_no_acknowledged_event(server):
    key = server.cli_json("source", "create", "web")["write_key"]
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, auth=(key, ""), timeout=10) as http:
            while not stop.is_set():
                batch = [
                    {"type": "track", "event": "tick", "userId": "u", "messageId": uuid.uuid4().hex}
                    for _ in range(100)
                ]
                try:
                    r = http.post("/v1/batch", json={"batch": batch})
                except httpx.HTTPError:
                    return  # the server died under us: nothing of this batch was acknowledged
                if r.status_code == 200:
                    ok = [x["messageId"] for x in r.json()["results"] if x["status"] == "accepted"]
                    with lock:
                        acked.update(ok)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 5000 and all(t.is_alive() for t in threads):
        threading.Event().wait(0.05)
    server.stop(signal.SIGKILL)  # no shutdown hooks, no final commit
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 5000

    server.start()
    log = EventLog.open(load_settings(home=server.home))
    stored = {r.message_id for _, r in log.read(0, 10_000_000)}
    log.close()
    assert acked <= stored, f"{len(acked - stored)} acknowledged events were lost"
    assert int(server.cli("events", "count")) == len(stored)
