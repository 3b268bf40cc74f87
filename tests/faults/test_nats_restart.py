"""NATS restarted while the follower publishes to the partitions and rules workers consume:
after both reconnect, the leads are those of the embedded engine over the same events, each
exactly once (none lost, none duplicated).

The follower's pass fails while NATS is down (``rapport warehouse follow`` logs it and tries
again on its next pass; here the test calls the pass); the workers must ride out the outage.
JetStream keeps its data in /var/lib/nats-server, so the stream survives the restart.
"""

from __future__ import annotations

import time

import pytest

from faults.helpers import nats_stopped, report
from rapport.stream import follow
from rapport.stream.worker import checkpoint_path
from test_stream_workers import (
    WORKERS,
    events,
    lead_rows,
    pair,  # noqa: F401 - the fixture: (embedded, scaled out) workspaces
    send,
    start_worker,
    wait_caught_up,
    wait_for,
)

pytestmark = pytest.mark.long
OUTAGE_S = 8


def test_nats_restart_loses_and_duplicates_no_lead(pair):  # noqa: F811
    embedded, scaled = pair
    batches = events(seed=7, persons=400, batches=8, per_batch=500)
    procs = [start_worker(scaled, parts) for parts in WORKERS]
    failed_passes = 0
    try:
        for n, batch in enumerate(batches):
            if n == 4:
                continue  # sent during the outage
            send(scaled, *batch)
            if n == 3:  # the workers are consuming (each partition checkpointed once), then:
                wait_for(lambda: all(checkpoint_path(scaled, p).exists() for p in range(6)), 90)
                with nats_stopped():
                    time.sleep(1)
                    send(scaled, *batches[4])  # events keep arriving in the log meanwhile
                    try:
                        follow.one_pass(scaled)
                    except Exception as exc:  # noqa: BLE001 - what the follower logs and retries
                        failed_passes += 1
                        print(f"follower pass while NATS is down: {type(exc).__name__}: {exc}")
                    time.sleep(OUTAGE_S)
                    dead = [p.stderr.read()[-1500:] for p in procs if p.poll() is not None]  # type: ignore[union-attr]
                    assert not dead, f"workers died while NATS was down: {dead}"
                continue
            follow.one_pass(scaled)  # loads, resolves, publishes (NATS is back)
        send(embedded, *(e for batch in batches for e in batch))
        follow.one_pass(embedded)
        wait_caught_up(scaled, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except Exception:  # noqa: BLE001
                p.kill()
    expected, got = lead_rows(embedded), lead_rows(scaled)
    assert failed_passes == 1
    report("NATS restart, leads", len(expected), len(set(expected) & set(got)))
    assert len({e[0] for e in got}) == len(got), "a lead made twice"
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, (len(expected), len(got), missing[:5], extra[:5])
