"""Issue 7's cluster, every part a real process: metadata on PostgreSQL, the event log on NATS
JetStream, three ``rapport serve --role collector`` processes taking events from the official
Segment client, one ``rapport warehouse follow`` publishing the persons' partitions, and three
``rapport worker rules`` processes on disjoint partitions, checkpointing to the JetStream object
store as the ``cluster`` profile does. Its leads must be those of the embedded process (SQLite
log, rules in the follower) fed the same events.

The embedded run is fed the cluster's own log records, in the order they were sent: the client
stamps each batch with ``sentAt`` and the collector corrects event times by the network delay
(as Segment does), so only the stored records are exactly "the same events".
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import segment.analytics as analytics

from conftest import copy_home, free_port, service_unavailable
from rapport import accounts
from rapport.ingest.sources import create_source
from rapport.leads import rules
from rapport.log import nats as natslog
from rapport.settings import load_settings
from rapport.stream import checkpoints, engine, follow, partitions
from rapport.workspace import Workspace
from test_log_jetstream import _delete_stream
from test_stream_workers import NATS_URL, RULES, WORKERS, caught_up, events, lead_rows

#: seconds for each stage (processes starting, the follower, the workers): generous, because a
#: loaded machine starts seven interpreters slowly
PATIENCE = 180
#: events of a round travel through three collectors at once, so the log mixes up to a
#: round's span of event time (about 70 minutes): the lateness covers it, in both runs
LATENESS = 2 * 3600


def _settings_file(home: Path, **values: Any) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
    (home / "rapport.toml").write_text("[rapport]\n" + "\n".join(lines) + "\n")


def _prepare(ws: Workspace) -> str:
    """The source ``web`` and the rules of ``test_stream_workers``, live; the write key."""
    source = create_source(ws.db, "web")
    for spec in RULES:
        rules.create_rule(ws.db, rules.RuleIn(**spec, status="live"), None)
    return str(source["write_key"])


def _spawn(home: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "rapport", *args],
        env={**os.environ, "RAPPORT_HOME": str(home)},
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=open(home / f"{args[0]}-{uuid.uuid4().hex[:6]}.log", "wb"),  # noqa: SIM115
    )


def _healthy(ports: list[int], procs: list[subprocess.Popen[bytes]], home: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    for port in ports:
        while True:
            if any(p.poll() is not None for p in procs):
                logs = "\n".join(f.read_text()[-2000:] for f in home.glob("serve-*.log"))
                pytest.fail(f"a collector died:\n{logs}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the collectors did not start"
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Workspace]:
    tag = uuid.uuid4().hex[:10].upper()
    home = tmp_path / "cluster"
    _settings_file(
        home,
        database_url=pg_url,
        log_backend="nats",
        nats_url=NATS_URL,
        nats_log_stream=f"RAPPORT_TEST_EVENTS_{tag}",
        stream_backend="nats",
        nats_stream=f"RAPPORT_TEST_PERSONS_{tag}",
        checkpoint_store="nats",
        stream_partitions=6,
        stream_idle_seconds=0,
        stream_lateness_seconds=LATENESS,
        max_clock_skew_hours=1_000_000,  # the events are from 2025: keep their times
    )
    settings = load_settings(home=home)
    try:
        asyncio.run(natslog.delete_stream(settings))
    except ConnectionError as exc:
        service_unavailable("NATS", exc)
    ws = Workspace(settings)
    ws.init()
    yield ws
    ws.close()
    asyncio.run(natslog.delete_stream(settings))
    asyncio.run(checkpoints.delete_bucket(settings))
    asyncio.run(_delete_stream(settings.nats_log_stream))


@pytest.fixture
def embedded(migrated_home: Path, tmp_path: Path) -> Iterator[Workspace]:
    copy_home(migrated_home, tmp_path / "embedded")
    home = tmp_path / "embedded" / "home"
    _settings_file(home, stream_idle_seconds=0, stream_lateness_seconds=LATENESS)
    ws = Workspace(load_settings(home=home))
    yield ws
    engine.forget(ws)
    ws.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


def _send(clients: list[analytics.Client], batch: list[dict[str, Any]]) -> None:
    """One round: each person's events through one collector, the three at once."""
    for e in batch:
        client = clients[int(e["anonymousId"][1:]) % len(clients)]
        client.track(
            anonymous_id=e["anonymousId"],
            event=e["event"],
            properties=e["properties"],
            timestamp=datetime.fromisoformat(e["timestamp"]),
            message_id=e["messageId"],
        )
    for client in clients:
        client.flush()  # every client's upload thread has been sending meanwhile


def _utc(at: datetime) -> datetime:
    """PostgreSQL answers aware times, SQLite naive ones (UTC both)."""
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def _published(ws: Workspace) -> int:
    """The log offset up to which the follower has published the persons' partitions."""
    with ws.warehouse.connect(wait=30) as con:
        return int(ws.warehouse.get_state(con, partitions.OFFSET_KEY) or 0)


def test_a_collector_serves_only_v1_and_an_api_process_everything_else(workspace):
    from fastapi.testclient import TestClient

    from rapport.web.app import create_app
    from rapport.web.collector_app import create_collector_app, without_collector

    key = create_source(workspace.db, "web")["write_key"]
    auth = (key, "")
    body = {"userId": "u1", "event": "view_product"}
    with TestClient(create_collector_app(workspace)) as c:
        assert c.post("/v1/track", json=body, auth=auth).json()["success"] is True
        assert c.get("/healthz").status_code == 200
        assert c.get("/api/plan").status_code == 404
        assert c.get("/login").status_code == 404
        scraped = c.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code
        assert scraped == 401  # served, and guarded like the server's
    token = accounts.create_token(workspace.db, accounts.Role.admin, "t")
    with TestClient(without_collector(create_app(workspace=workspace))) as c:
        assert c.post("/v1/track", json=body, auth=auth).status_code == 404
        headers = {"Authorization": f"Bearer {token}"}
        assert c.post("/v1/track", json=body, headers=headers).status_code == 404
        assert c.get("/api/events/count", headers=headers).json() == {"count": 1}


#: ~200 s on this 2-core machine while other work ran (load 18); processes start slowly there
@pytest.mark.long
def test_three_collectors_and_three_workers_make_the_embedded_leads(cluster, embedded):
    write_key = _prepare(cluster)
    _prepare(embedded)
    home = cluster.settings.home
    ports = [free_port() for _ in range(3)]
    procs = [_spawn(home, "serve", "--role", "collector", "--port", str(p)) for p in ports]
    clients: list[analytics.Client] = []
    try:
        procs.append(_spawn(home, "worker", "identity"))
        procs += [
            _spawn(home, "worker", "rules", "--partitions", ",".join(map(str, parts)))
            for parts in WORKERS
        ]
        _healthy(ports, procs[:3], home)
        started = time.monotonic()
        errors: list[Any] = []
        for port in ports:
            client = analytics.Client(
                write_key=write_key, host=f"http://127.0.0.1:{port}", max_retries=3
            )
            client.on_error = lambda error, _batch: errors.append(error)
            clients.append(client)
        rounds = events(seed=11, persons=300, batches=15, per_batch=200)
        for batch in rounds:
            _send(clients, batch)
        assert errors == []
        print(f"sent in {time.monotonic() - started:.1f} s")  # noqa: T201
        sent = [e["messageId"] for batch in rounds for e in batch]
        assert cluster.log.count() == len(sent) == 3001

        last = cluster.log.last_offset()
        deadline = time.monotonic() + PATIENCE
        while _published(cluster) < last or not caught_up(cluster):
            for p in procs[3:]:
                if p.poll() is not None:
                    logs = [f.read_text()[-2000:] for f in home.glob("*.log")]
                    pytest.fail("the follower or a worker died:\n" + "\n".join(logs))
            assert time.monotonic() < deadline, "the follower and workers did not catch up"
            time.sleep(0.5)
        print(f"leads made {time.monotonic() - started:.1f} s after the first event")  # noqa: T201
    finally:
        for client in clients:
            client.shutdown()
        _stop(procs)

    # the embedded process, fed the records the collectors stored, in the order they were sent
    order = {m: i for i, m in enumerate(sent)}
    stored = [r for _, r in cluster.log.read(0, 10_000)]
    stored.sort(key=lambda r: order[r.message_id])
    embedded.log.append_many(stored)
    follow.one_pass(embedded)

    expected = [(k, rule, _utc(at)) for k, rule, _, at in lead_rows(embedded)]
    got = [(k, rule, _utc(at)) for k, rule, _, at in lead_rows(cluster)]
    by_rule = {r: sum(1 for e in expected if e[1] == r) for r in (1, 2, 3)}
    assert all(by_rule.values()), by_rule  # every rule made leads (an absence one too)
    assert len({g[0] for g in got}) == len(got)  # none twice
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, (len(expected), len(got), missing[:5], extra[:5])
    assert not list(home.glob("stream/**/*.ckpt"))  # caught up by the checkpoints in NATS
