"""Prometheus metrics: the server's /metrics moves with what the collector, the outbox and the
jobs do; who may scrape it; a worker process started with --metrics-port answers /metrics."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conftest import copy_home, free_port
from rapport import accounts, metrics
from rapport.accounts import Role, Scope
from rapport.delivery import enqueue
from rapport.delivery.dispatcher import Dispatcher
from rapport.ingest.sources import create_source
from rapport.jobs import registry
from rapport.jobs.registry import Job
from rapport.jobs.runner import run_now
from rapport.settings import Settings
from rapport.web.app import create_app
from rapport.workspace import Workspace
from test_delivery import Receiver, webhook


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    # messages stay queued: no dispatcher in the server process
    return copy_home(migrated_home, tmp_path, dispatcher_in_process=False)


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    workspace.init()
    yield workspace
    workspace.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition parsed: (sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def now_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_follow_the_collector_and_show_the_queued_outbox(ws: Workspace) -> None:
    key = create_source(ws.db, "web_h6")["write_key"]
    accepted = now_value("rapport_collector_events_total", source="web_h6", status="accepted")
    refused = now_value(
        "rapport_collector_rejected_requests_total", source="", code="unknown_write_key"
    )
    receiver = Receiver()  # never started: the messages only wait in the outbox
    webhook(ws, receiver.url, name="crm")
    with ws.db.begin() as conn:
        for i in range(3):
            enqueue(conn, channel="crm", payload={"n": i}, key=f"lead:{i}")
    token = accounts.create_token(ws.db, Role.admin, "prometheus")
    with TestClient(create_app(workspace=ws)) as client:
        batch = {
            "batch": [
                {"type": "track", "userId": "u1", "event": "view", "messageId": "m1"},
                {"type": "track", "userId": "u2", "event": "view", "messageId": "m2"},
                {"type": "track", "userId": "u3", "messageId": "m3"},  # no event: quarantined
            ]
        }
        assert client.post("/v1/batch", json=batch, auth=(key, "")).status_code == 200
        again = {"type": "track", "userId": "u1", "event": "view", "messageId": "m1"}
        assert client.post("/v1/track", json=again, auth=(key, "")).status_code == 200
        bad = client.post("/v1/track", json=again, auth=("wk_nobody", ""))
        assert bad.status_code == 401
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("rapport_collector_events_total", source="web_h6", status="accepted") == (
        accepted + 2
    )
    assert value("rapport_collector_events_total", source="web_h6", status="duplicate") >= 1
    assert value("rapport_collector_events_total", source="web_h6", status="quarantined") >= 1
    assert value(
        "rapport_collector_rejected_requests_total", source="", code="unknown_write_key"
    ) == (refused + 1)
    # the stores, read when scraped
    assert value("rapport_outbox_messages", channel="crm", status="pending") == 3
    assert value("rapport_outbox_due_messages") == 3
    assert value("rapport_quarantine_open", source="web_h6") == 1
    assert value("rapport_log_last_offset") == 2
    assert 0 <= value("rapport_warehouse_lag_records") <= 2
    assert value("rapport_leads_created_total") == 0
    # requests by route template and status; the log's group commit timed
    assert (
        value(
            "rapport_http_request_duration_seconds_count",
            method="POST",
            route="/v1/batch",
            status="200",
        )
        >= 1
    )
    assert value("rapport_log_append_seconds_count") >= 2
    assert not any(
        dict(labels).get("route") == "/metrics" for (name, labels) in found if "http" in name
    )


def test_scraping_needs_read_access_unless_from_loopback(ws: Workspace) -> None:
    app = create_app(workspace=ws)
    reader = accounts.create_token(ws.db, Role.viewer, "r", scopes=frozenset({Scope.read}))
    ingest = accounts.create_token(ws.db, Role.admin, "i", scopes=frozenset({Scope.ingest}))
    with TestClient(app) as remote:  # the test client's address is not loopback
        assert remote.get("/metrics").status_code == 401
        held = remote.get("/metrics", headers={"Authorization": f"Bearer {ingest}"})
        assert held.status_code == 403 and "read" in held.json()["detail"]
        ok = remote.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert ok.status_code == 200 and "rapport_outbox_due_messages" in ok.text
        # an unknown path is one label value, whatever the path
        remote.get("/no/such/page/123")
        text = remote.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).text
        assert 'route="<unmatched>"' in text and "/no/such/page" not in text
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        assert local.get("/metrics").status_code == 200
        relayed = local.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert relayed.status_code == 401  # a proxy on this machine relays strangers


def test_loopback_needs_a_token_when_the_setting_is_off(tmp_path: Path, migrated_home: Path):
    closed = Workspace(copy_home(migrated_home, tmp_path, metrics_public_loopback=False))
    closed.init()
    try:
        with TestClient(create_app(workspace=closed), client=("127.0.0.1", 40000)) as local:
            assert local.get("/metrics").status_code == 401
    finally:
        closed.close()


def test_a_dispatcher_counts_outcomes_and_delivery_latency(ws: Workspace) -> None:
    receiver = Receiver().start()
    try:
        webhook(ws, receiver.url, name="h6hook")
        with ws.db.begin() as conn:
            for i in range(4):
                enqueue(conn, channel="h6hook", payload={"n": i}, key=f"h6:{i}")
        before = now_value("rapport_delivery_latency_seconds_count", channel="h6hook")
        dispatcher = Dispatcher(ws.db, ws.settings)

        async def drain() -> int:
            try:
                return await dispatcher.drain()
            finally:
                await dispatcher.aclose()

        assert asyncio.run(drain()) == 4
    finally:
        receiver.stop()
    assert now_value("rapport_delivery_messages_total", channel="h6hook", outcome="delivered") == 4
    assert now_value("rapport_delivery_latency_seconds_count", channel="h6hook") == before + 4
    assert now_value("rapport_delivery_send_seconds_count", channel="h6hook") >= 4
    assert now_value("rapport_delivery_breaker_open", channel="h6hook") == 0


def test_job_runs_are_counted_by_status(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    def ok(_ws: Workspace, _when: datetime) -> dict[str, Any]:
        return {}

    def broken(_ws: Workspace, _when: datetime) -> dict[str, Any]:
        raise RuntimeError("broke")

    jobs = [Job("h6.ok", "ok", "daily", ok), Job("h6.broken", "broken", "daily", broken)]
    monkeypatch.setattr(registry, "_providers", {"h6": lambda _ws: jobs})
    monkeypatch.setattr(registry, "_imported", True)
    before = now_value("rapport_job_runs_total", job="h6.ok", status="ok")
    at = datetime.now(UTC)
    assert run_now(ws, "h6.ok", at)["status"] == "ok"
    assert run_now(ws, "h6.broken", at)["status"] == "failed"
    assert now_value("rapport_job_runs_total", job="h6.ok", status="ok") == before + 1
    assert now_value("rapport_job_runs_total", job="h6.broken", status="failed") >= 1
    assert now_value("rapport_job_duration_seconds_count", job="h6.ok") >= 1


def test_metrics_port_takes_a_port_or_host_and_port() -> None:
    assert metrics.parse_address("9101") == ("127.0.0.1", 9101)
    assert metrics.parse_address("0.0.0.0:9101") == ("0.0.0.0", 9101)
    assert metrics.parse_address("[::1]:9101") == ("::1", 9101)
    with pytest.raises(ValueError, match="give a port"):
        metrics.parse_address("nine")


def test_a_worker_process_answers_metrics(settings: Settings) -> None:
    port = free_port()
    env = {**os.environ, "RAPPORT_HOME": str(settings.home)}
    command = [sys.executable, "-m", "rapport", "worker", "dispatch", "--metrics-port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30  # the interpreter's start: a few seconds
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "no /metrics within 30 s"
                time.sleep(0.1)
        assert answer.status_code == 200
        assert 'rapport_process_info{kind="dispatch"} 1.0' in answer.text
        assert "# HELP rapport_delivery_messages_total" in answer.text
        assert "process_cpu_seconds_total" in answer.text
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"--metrics-port {port}: cannot listen on 127.0.0.1"):
            metrics.serve(str(port), "test")


def test_committed_leads_observe_event_time_to_commit() -> None:
    from datetime import timedelta

    from rapport.conditions.reference import Match
    from rapport.leads.live import Hit

    fired = datetime.now(UTC) - timedelta(seconds=2)
    hits = [
        [Hit(None, 1, Match(fired, (), "k1"), None), Hit(None, 2, Match(fired, (), "k2"), None)]
    ]  # type: ignore[arg-type]
    count = now_value("rapport_stream_rule_latency_seconds_count", provider="h6lead")
    metrics.applied("h6lead", hits)
    assert now_value("rapport_stream_rule_latency_seconds_count", provider="h6lead") == count + 2
    assert now_value("rapport_stream_outputs_total", provider="h6lead") == 2
    total = now_value("rapport_stream_rule_latency_seconds_sum", provider="h6lead")
    assert 4.0 <= total < 10.0  # two leads, each ~2 s after its event
