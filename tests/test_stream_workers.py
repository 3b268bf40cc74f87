"""Stage 2 scaled out: lead rules in worker processes over NATS JetStream partitions.

Real NATS (127.0.0.1:4222, skipped when absent unless RAPPORT_REQUIRE_SERVICES=1), real
``rapport worker rules`` subprocesses over a file workspace. The same seeded events go to two
workspaces: one runs the rules embedded (the expected leads), the other publishes to NATS
where three workers run them — one SIGKILLed mid-stream and restarted. The leads must be the
same, each exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import copy_home, service_unavailable
from rapport.db.tables import leads
from rapport.leads import rules
from rapport.log import nats as natslog
from rapport.settings import load_settings
from rapport.stream import engine, follow, partitions, worker
from rapport.workspace import Workspace
from test_stream_engine import send

NATS_URL = os.environ.get("RAPPORT_TEST_NATS", "nats://127.0.0.1:4222")
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
PARTITIONS = 6
WORKERS = [[0, 1], [2, 3], [4, 5]]
RULES = [
    {
        "name": "big_view",
        "lead_type": "big view",
        "trigger": "event view_product where price >= 3000",
        "cooldown": {"amount": 1, "unit": "hours"},
    },
    {
        "name": "view_then_cart",
        "lead_type": "view then cart",
        "trigger": "sequence view_product then add_to_cart within 20 minutes",
        "cooldown": {"amount": 90, "unit": "minutes"},
    },
    {
        "name": "cart_abandoned",
        "lead_type": "cart abandoned",
        "trigger": "sequence add_to_cart then not order_paid within 30 minutes",
        "cooldown": {"amount": 2, "unit": "hours"},
    },
]


def _home(migrated_home: Path, tmp_path: Path, backend: str, stream: str) -> Workspace:
    home = tmp_path / "home"
    copy_home(migrated_home, tmp_path)
    # a rapport.toml, so that the worker subprocesses read the same settings
    (home / "rapport.toml").write_text(
        "[rapport]\n"
        f'stream_backend = "{backend}"\nnats_url = "{NATS_URL}"\nnats_stream = "{stream}"\n'
        f"stream_partitions = {PARTITIONS}\nstream_idle_seconds = 0\n"
    )
    ws = Workspace(load_settings(home=home))
    from rapport.ingest.sources import create_source

    create_source(ws.db, "web", kind="server")
    for spec in RULES:
        rules.create_rule(ws.db, rules.RuleIn(**spec, status="live"), None)
    return ws


@pytest.fixture
def pair(migrated_home: Path, tmp_path: Path) -> Iterator[tuple[Workspace, Workspace]]:
    """(embedded, scaled out): the same rules; the second publishes to its own stream."""
    stream = f"RAPPORT_TEST_{uuid.uuid4().hex[:10].upper()}"
    scaled = _home(migrated_home, tmp_path / "scaled", "nats", stream)
    try:
        asyncio.run(natslog.delete_stream(scaled.settings))
    except ConnectionError as exc:
        service_unavailable("NATS", exc)
    embedded = _home(migrated_home, tmp_path / "embedded", "embedded", stream)
    yield embedded, scaled
    asyncio.run(natslog.delete_stream(scaled.settings))  # the stream and its consumers
    for ws in (embedded, scaled):
        engine.forget(ws)
        ws.close()


def start_worker(ws: Workspace, partitions: list[int]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAPPORT_HOME": str(ws.settings.home)}
    return subprocess.Popen(
        [sys.executable, "-m", "rapport", "worker", "rules", "--partitions"]
        + [",".join(map(str, partitions)), "--batch", "50"],
        env=env,
        cwd=ws.settings.home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def events(seed: int, persons: int, batches: int, per_batch: int) -> list[list[dict[str, Any]]]:
    """Batches of track messages: views, carts and orders of ``persons``, in time order."""
    rng = random.Random(seed)
    clock = T0
    out = []
    for _ in range(batches):
        batch = []
        for _ in range(per_batch):
            clock += timedelta(seconds=rng.choice([1, 5, 20, 60]))
            name = rng.choice(["view_product", "view_product", "add_to_cart", "order_paid"])
            props = {"price": rng.choice([500, 1500, 3500, 6000])} if name == "view_product" else {}
            batch.append(
                {
                    "type": "track",
                    "event": name,
                    "anonymousId": f"a{rng.randrange(persons)}",
                    "timestamp": clock.isoformat(),
                    "properties": props,
                    "messageId": uuid.uuid4().hex,
                }
            )
        out.append(batch)
    # one last event a day later: every absence due by then matures in both
    closing = {**batch[-1], "timestamp": (clock + timedelta(days=1)).isoformat()}
    out.append([{**closing, "event": "login", "messageId": uuid.uuid4().hex}])
    return out


def wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def lead_rows(ws: Workspace) -> list[tuple[str, int, int, datetime]]:
    query = select(leads.c.dedupe_key, leads.c.rule_id, leads.c.person_key, leads.c.created_at)
    with ws.db.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(query))  # type: ignore[misc]


def caught_up(ws: Workspace) -> bool:
    """Every partition's checkpoint is at the last message of its subject."""

    async def last_seqs() -> list[int]:
        nc, js = await natslog.connect(ws.settings.nats_url)
        try:
            out = []
            for p in range(PARTITIONS):
                subj = natslog.subject(ws.settings.nats_stream, p)
                out.append((await js.get_last_msg(ws.settings.nats_stream, subj)).seq or 0)
            return out
        finally:
            await nc.close()

    want = asyncio.run(last_seqs())
    for p, seq in enumerate(want):
        ckpt = worker.read_checkpoint(worker.checkpoint_path(ws, p))
        if ckpt is None or ckpt.seq < seq:
            return False
    return True


def test_three_workers_one_killed_make_every_lead_exactly_once(pair):
    embedded, scaled = pair
    batches = events(seed=5, persons=500, batches=8, per_batch=600)
    procs = [start_worker(scaled, parts) for parts in WORKERS]
    killed = restarted = None
    try:
        for n, batch in enumerate(batches):
            send(scaled, *batch)
            follow.one_pass(scaled)  # loads, resolves, publishes to NATS
            if n == 3:  # mid-stream: the worker has applied some batches, not all
                wait_for(lambda: worker.checkpoint_path(scaled, 2).exists())
                killed = procs[1]
                killed.send_signal(signal.SIGKILL)
                killed.wait(10)
            if n == 5:
                restarted = start_worker(scaled, WORKERS[1])
                procs.append(restarted)
        assert killed is not None and killed.returncode == -signal.SIGKILL
        send(embedded, *(e for batch in batches for e in batch))
        follow.one_pass(embedded)  # the expected leads: the embedded engine's
        deadline = time.monotonic() + 60
        while not caught_up(scaled):
            for p in procs:
                if p is not killed and p.poll() is not None:
                    pytest.fail(f"a worker died: {p.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the workers did not catch up in 60 s"
            time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    expected, got = lead_rows(embedded), lead_rows(scaled)
    by_rule = {r: sum(1 for e in expected if e[1] == r) for r in (1, 2, 3)}
    assert all(by_rule.values()), by_rule  # every rule made leads (an absence one too)
    assert len({e[0] for e in got}) == len(got)  # none twice
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, (len(expected), len(got), missing[:5], extra[:5])
    # the restarted worker resumed from its checkpoints, not from the start
    assert restarted is not None and restarted.stderr is not None
    said = restarted.stderr.read().decode()
    resumed = re.search(r"partitions \[2, 3\] from sequences \[(\d+), (\d+)\]", said)
    assert resumed and int(resumed[1]) > 0, said[-2000:]


def test_a_worker_refuses_a_partition_that_does_not_exist(pair):
    _, scaled = pair
    env = {**os.environ, "RAPPORT_HOME": str(scaled.settings.home)}
    out = subprocess.run(
        [sys.executable, "-m", "rapport", "worker", "rules", "--partitions", "1,9"],
        env=env,
        cwd=scaled.settings.home,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert b"partitions are 0..5" in out.stderr


def test_a_republish_after_a_crash_is_deduplicated_by_jetstream(pair):
    _, scaled = pair
    send(scaled, *events(seed=1, persons=20, batches=1, per_batch=50)[0])
    follow.one_pass(scaled)

    async def count() -> int:
        nc, js = await natslog.connect(scaled.settings.nats_url)
        try:
            return (await js.stream_info(scaled.settings.nats_stream)).state.messages
        finally:
            await nc.close()

    first = asyncio.run(count())
    assert first == 50 + PARTITIONS  # the events, and a tick per partition
    wh = scaled.warehouse
    with wh.connect() as con:  # a publisher that died before its checkpoint
        wh.set_state(con, partitions.OFFSET_KEY, "0")
    assert partitions.publish_ready(scaled) == 50  # published again...
    assert asyncio.run(count()) == first  # ...and dropped by message id
