"""PostgreSQL (the metadata DB, ``database_url``) stopped and started under load.

The collector keeps acknowledging (the event log is not in PostgreSQL; the write key and the
tracking plan are cached), the API answers a clear 503 while the database is down (never a
500 with a traceback), and afterwards everything works again without restarting Rapport. The
dispatcher, mid-delivery, survives the restart and every outbox message is applied once.

PostgreSQL is shared with the other tests of this machine: the outage is a few seconds, and
the cluster is started again in a ``finally``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest

from faults.helpers import Load, log_ids, postgres_stopped, report, warehouse_ids
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_delivery import Receiver, put, webhook

pytestmark = pytest.mark.long
OUTAGE_S = 6


class ApiProbe:
    """GET /api/sources every 0.2 s; the statuses, and one body per status."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.statuses: Counter[int] = Counter()
        self.bodies: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=15) as http:
            while not self.stop.is_set():
                r = http.get("/api/sources")
                self.statuses[r.status_code] += 1
                self.bodies.setdefault(r.status_code, r.text[:300])
                time.sleep(0.2)

    def __enter__(self) -> ApiProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_postgres_restart_under_load(pg_db, fault_server):
    srv = fault_server(RAPPORT_DATABASE_URL=pg_db)
    key = srv.cli_json("source", "create", "web")["write_key"]
    token = srv.cli_json("token", "create", "--role", "admin")["token"]
    with Load(srv.url, key, threads=2, pause=0.05) as load, ApiProbe(srv.url, token) as api:
        load.wait_for(2000)
        before = len(load.acked)
        with postgres_stopped():
            time.sleep(OUTAGE_S)
            during = len(load.acked) - before
            api_down = dict(api.statuses)
        time.sleep(3)  # back up: the pools reconnect on their own
        api_after = api.statuses[200]
        time.sleep(2)
        assert api.statuses[200] > api_after, "the API works again without a restart"
        load.wait_for(len(load.acked) + 1000)
    print(f"collector answers: {dict(load.statuses)}; acknowledged during the outage: {during}")
    print(f"API answers: {dict(api.statuses)}; {api.bodies}")
    assert set(load.statuses) == {200}, load.bodies
    assert during > 0, "the collector kept acknowledging while PostgreSQL was down"
    assert api_down.get(503), f"the API said 503 during the outage: {api_down}"
    assert set(api.statuses) <= {200, 503}, api.bodies
    assert "metadata database unavailable" in api.bodies[503]
    acked = load.acked
    stored = set(log_ids(srv.home))
    report("PostgreSQL restart, log", len(acked), len(acked & stored))
    loaded = set(warehouse_ids(srv.home))
    report("PostgreSQL restart, warehouse", len(acked), len(acked & loaded))
    assert acked <= stored and acked <= loaded


def test_dispatcher_on_postgres_survives_its_restart(pg_db, fault_server):
    receiver = Receiver().start()
    receiver.delay = 0.03
    try:
        srv = fault_server(
            RAPPORT_DATABASE_URL=pg_db,
            RAPPORT_DELIVERY_LEASE_SECONDS="3",
            RAPPORT_DELIVERY_BATCH="50",
            RAPPORT_DELIVERY_CONCURRENCY="8",
            RAPPORT_DELIVERY_POLL_INTERVAL="0.1",
        )
        ws = Workspace(load_settings(home=srv.home, database_url=pg_db))
        webhook(ws, receiver.url)
        keys = put(ws, 400)
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 100:
            assert time.monotonic() < deadline, "the dispatcher did not start sending"
            time.sleep(0.02)
        with postgres_stopped():
            time.sleep(OUTAGE_S)
        deadline = time.monotonic() + 120
        while len(receiver.applied) < len(keys):
            assert time.monotonic() < deadline, f"{len(receiver.applied)} of {len(keys)} applied"
            time.sleep(0.2)
        time.sleep(1)
        assert srv.children().get("dispatch"), "the dispatcher is still running"
        ws.close()
    finally:
        receiver.stop()
    seen = receiver.keys_seen()
    report("PostgreSQL restart, dispatcher", len(keys), len(receiver.applied))
    print(f"sent twice (deduped by the Idempotency-Key): {sum(seen.values()) - len(keys)}")
    assert set(receiver.applied.values()) == {1} and set(receiver.applied) == set(keys)
