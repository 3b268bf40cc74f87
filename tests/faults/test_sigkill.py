"""SIGKILL of each process of ``rapport serve`` under load: nothing acknowledged is lost.

- the server itself (the collector): every acknowledged messageId is in the log, and in the
  warehouse exactly once after the follower catches up (``tests/test_crash.py`` checks the log
  only, with the plain server fixture); its children end with it;
- the follower child mid-load: ``serve`` starts it again, and the warehouse holds every event
  exactly once;
- the dispatcher child mid-delivery: ``serve`` starts it again, and every outbox message
  reaches the receiver, applied once;
- a rules worker: ``tests/test_stream_workers.py::
  test_three_workers_one_killed_make_every_lead_exactly_once``.

A dead child is restarted by ``serve`` itself (``rapport.supervise``); a dead ``serve`` by an
operator or systemd, which is what the first test does.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from faults.helpers import FaultServer, Load, log_ids, report, warehouse_ids
from rapport.db.tables import outbox
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_delivery import Receiver, put, webhook
from test_supervise import children_left

pytestmark = pytest.mark.long


def test_server_sigkill_under_load_keeps_every_acknowledged_event(fault_server):
    srv = fault_server()
    key = srv.cli_json("source", "create", "web")["write_key"]
    with Load(srv.url, key) as load:
        load.wait_for(5000)
        assert srv.proc is not None
        pid = srv.proc.pid
        srv.stop(signal.SIGKILL)  # no shutdown hooks, no final commit
    acked = set(load.acked)
    deadline = time.monotonic() + 30  # the children end with it (their parent-death signal)
    while left := children_left(pid):
        assert time.monotonic() < deadline, f"children of the killed serve still run: {left}"
        time.sleep(0.1)
    srv.start()  # the follower loads what the dead one had not
    stored = log_ids(srv.home)
    report("server SIGKILL, log", len(acked), len(acked & set(stored)))
    assert acked <= set(stored), f"{len(acked - set(stored))} acknowledged events were lost"
    loaded = warehouse_ids(srv.home)
    report("server SIGKILL, warehouse", len(acked), len(acked & set(loaded)))
    assert acked <= set(loaded)
    assert len(loaded) == len(set(loaded)) == len(stored), "each event once in the warehouse"


def _restarted(srv: FaultServer, role: str, killed: int) -> None:
    """Wait for ``serve`` to start a new ``role`` child in place of ``killed``."""
    deadline = time.monotonic() + 30
    while srv.children().get(role, killed) == killed:
        assert time.monotonic() < deadline, f"the {role} was not restarted:\n{srv.log_tail()}"
        time.sleep(0.1)


def test_follower_sigkill_under_load_is_restarted_and_loads_every_event_once(fault_server):
    srv = fault_server()
    key = srv.cli_json("source", "create", "web")["write_key"]
    with Load(srv.url, key) as load:
        load.wait_for(3000)
        follower = srv.children()["follow"]
        os.kill(follower, signal.SIGKILL)  # mid-pass: DuckDB rolls back its transaction
        killed_at = len(load.acked)
        load.wait_for(killed_at + 3000)  # the collector keeps acknowledging meanwhile
        _restarted(srv, "follow", follower)
    acked = set(load.acked)
    assert srv.proc is not None and srv.proc.poll() is None, "serve itself kept running"
    loaded = warehouse_ids(srv.home)  # the new follower catches up: no restart of serve
    assert f"the follower (pid {follower}) was killed by SIGKILL" in srv.log_path.read_text()
    report("follower SIGKILL, warehouse", len(acked), len(acked & set(loaded)))
    assert acked <= set(loaded)
    duplicates = [k for k, n in Counter(loaded).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} events loaded twice"


def test_dispatcher_sigkill_mid_delivery_delivers_every_message_once(fault_server, tmp_path):
    receiver = Receiver().start()
    receiver.delay = 0.05
    try:
        srv = fault_server(
            RAPPORT_DELIVERY_LEASE_SECONDS="2",
            RAPPORT_DELIVERY_BATCH="50",
            RAPPORT_DELIVERY_CONCURRENCY="8",
            RAPPORT_DELIVERY_POLL_INTERVAL="0.1",
        )
        ws = Workspace(load_settings(home=srv.home))
        webhook(ws, receiver.url)
        keys = put(ws, 300)  # as lead rules would: outbox rows in the metadata DB
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 100:
            assert time.monotonic() < deadline, "the dispatcher did not start sending"
            time.sleep(0.02)
        dispatcher = srv.children()["dispatch"]
        os.kill(dispatcher, signal.SIGKILL)
        with ws.db.connect() as conn:
            states = dict(
                conn.execute(select(outbox.c.status, func.count()).group_by(outbox.c.status)).all()
            )
        assert states.get("sending", 0) > 0, f"the kill should land mid-batch: {states}"
        _restarted(srv, "dispatch", dispatcher)  # the dead one's claims return after their lease
        deadline = time.monotonic() + 90
        while len(receiver.applied) < len(keys):
            assert time.monotonic() < deadline, f"{len(receiver.applied)} of {len(keys)} applied"
            time.sleep(0.1)
        time.sleep(1)  # nothing more arrives
        ws.close()
    finally:
        receiver.stop()
    seen = receiver.keys_seen()
    report("dispatcher SIGKILL, receiver", len(keys), len(receiver.applied))
    print(f"in flight at the kill: {states.get('sending')}; sent twice (deduped by the "
          f"Idempotency-Key): {sum(seen.values()) - len(keys)}")  # fmt: skip
    assert set(seen) == set(keys)
    assert set(receiver.applied.values()) == {1} and len(receiver.applied) == len(keys)
    assert all(r["valid"] for r in receiver.requests), "every request signed"
