"""Delivery against real receivers: a threaded HTTP server on a free port (signature checked,
idempotency keys deduped as a real receiver would), aiosmtpd for mail, real subprocesses for
the dispatcher killed with SIGKILL, and PostgreSQL for two dispatchers claiming at once.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from conftest import copy_home, free_port
from rapport import accounts
from rapport.db.tables import channels as channels_table
from rapport.db.tables import delivery_attempts, outbox
from rapport.delivery import DeliveryError, TargetRefused, enqueue, guards, http, verify
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.delivery.dispatcher import Dispatcher
from rapport.delivery.targets import check_url
from rapport.delivery.templating import render_text
from rapport.delivery.webhook import signed_headers
from rapport.settings import Settings
from rapport.workspace import Workspace

SECRET = "whsec_test_secret_0123456789"


# -- a receiver as a customer would write it --------------------------------------------------
class QuietServer(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client killed mid-request (the SIGKILL test) is expected here


class Receiver:
    """POST endpoint: verifies the signature, applies each Idempotency-Key once.

    ``answer(key) -> (status, body, headers)`` decides the reply; ``delay`` slows it down;
    ``tls`` (a server context) makes it an https receiver.
    """

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.requests: list[dict[str, Any]] = []
        self.applied: Counter[str] = Counter()
        self.answer: Callable[[str, dict], tuple[int, bytes, dict[str, str]]] = lambda k, b: (
            200,
            b'{"ok": true}',
            {},
        )
        self.delay = 0.0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                key = self.headers.get("idempotency-key", "")
                if receiver.delay:
                    time.sleep(receiver.delay)
                status, answer, extra = receiver.answer(key, json.loads(body or b"{}"))
                with receiver.lock:
                    receiver.requests.append(
                        {
                            "key": key,
                            "at": time.monotonic(),
                            "status": status,
                            "body": body,
                            "headers": dict(self.headers),
                            "valid": verify(SECRET, self.headers, body),
                        }
                    )
                    if 200 <= status < 300 and key not in receiver.applied:
                        receiver.applied[key] += 1  # dedupe by idempotency key
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def keys_seen(self) -> Counter[str]:
        with self.lock:
            return Counter(r["key"] for r in self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(
        migrated_home,
        tmp_path,
        delivery_retry_schedule="0.2,0.4,0.8",
        delivery_poll_interval=0.05,
        delivery_breaker_failures=1000,
    )


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    yield workspace
    workspace.close()


def webhook(ws: Workspace, url: str, name: str = "crm", **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "webhook",
        "config": {"url": url},
        "secret": SECRET,
    }
    spec.update(allow_private=True, **fields)
    return create_channel(ws.db, ChannelSpec.model_validate(spec))


def put(ws: Workspace, n: int, channel: str = "crm", prefix: str = "lead") -> list[str]:
    keys = [f"{prefix}:{i}" for i in range(n)]
    with ws.db.begin() as conn:
        for i, key in enumerate(keys):
            enqueue(conn, channel=channel, payload={"n": i, "name": "张三"}, key=key, origin=key)
    return keys


def statuses(ws: Workspace) -> Counter[str]:
    return statuses_of(ws.db)


async def drive(dispatcher: Dispatcher, done: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; outbox: {statuses_of(dispatcher.engine)}")
        if not await dispatcher.run_once():
            await asyncio.sleep(0.05)


def statuses_of(engine: Any) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status))
        return Counter(dict(rows.all()))


def run_until(
    ws: Workspace, done: Callable[[], bool], timeout: float = 20.0, **overrides: Any
) -> Dispatcher:
    """Run one dispatcher (on this thread's event loop) until ``done()`` or the timeout."""
    settings = replace(ws.settings, **overrides)

    async def main() -> Dispatcher:
        dispatcher = Dispatcher(ws.db, settings)
        try:
            await drive(dispatcher, done, timeout)
        finally:
            await dispatcher.aclose()
        return dispatcher

    return asyncio.run(main())


# -- the outbox -------------------------------------------------------------------------------
def test_enqueue_is_idempotent_transactional_and_names_unknown_channels(ws, receiver):
    webhook(ws, receiver.url)
    with ws.db.begin() as conn:
        first = enqueue(conn, channel="crm", payload={"a": 1}, key="lead:1")
        again = enqueue(conn, channel="crm", payload={"a": 2}, key="lead:1")
    assert isinstance(first, int) and again is None
    with pytest.raises(RuntimeError), ws.db.begin() as conn:  # the caller's rollback wins
        enqueue(conn, channel="crm", payload={}, key="lead:2")
        raise RuntimeError("lead insert failed")
    with (
        pytest.raises(DeliveryError, match="unknown delivery channel 'nope' \\(configured: crm\\)"),
        ws.db.begin() as conn,
    ):
        enqueue(conn, channel="nope", payload={}, key="x")
    assert statuses(ws) == {"pending": 1}


def test_signature_verifies_and_a_tampered_body_fails():
    body = b'{"lead": 42}'
    headers = signed_headers(SECRET, "lead:42", body)
    assert headers["Rapport-Signature"].startswith("v1=")
    assert verify(SECRET, headers, body)
    assert verify(SECRET, {k.lower(): v for k, v in headers.items()}, body)
    assert not verify(SECRET, headers, b'{"lead": 43}')
    assert not verify("another secret", headers, body)
    old = signed_headers(SECRET, "lead:42", body, at=time.time() - 600)
    assert not verify(SECRET, old, body)  # outside the 300 s tolerance: a replayed capture


def test_receiver_down_then_back_every_message_applied_exactly_once(ws, receiver):
    webhook(ws, receiver.url)
    keys = put(ws, 40)
    receiver.stop()  # down: connection refused
    run_until(ws, lambda: statuses(ws).get("failed", 0) == 40 and _min_tries(ws) >= 2)
    receiver.start()  # back, on the same port
    run_until(ws, lambda: statuses(ws) == {"delivered": 40})
    assert set(receiver.applied) == set(keys) and set(receiver.applied.values()) == {1}
    assert all(r["valid"] for r in receiver.requests), "every request carries a valid signature"
    with ws.db.connect() as conn:
        tries = conn.execute(
            sa.select(delivery_attempts).order_by(
                delivery_attempts.c.message_id, delivery_attempts.c.id
            )
        ).all()
    by_message: dict[int, list[Any]] = {}
    for t in tries:
        by_message.setdefault(t.message_id, []).append(t)
    for rows in by_message.values():
        assert [t.attempt for t in rows] == list(range(1, len(rows) + 1))
        assert [t.outcome for t in rows[:-1]] == ["retry"] * (len(rows) - 1)
        assert rows[-1].outcome == "delivered" and rows[-1].http_status == 200
        assert "Cannot connect" in rows[0].error
        retries = [t for t in rows if "Cannot connect" in (t.error or "")]  # while it was down
        gaps = [(b.at - a.at).total_seconds() for a, b in zip(retries, retries[1:], strict=False)]
        caps = [0.2, 0.4, 0.8, 0.8, 0.8, 0.8, 0.8]
        assert all(g <= cap + 0.5 for g, cap in zip(gaps, caps, strict=False)), gaps


def test_https_receiver_certificate_is_verified(ws, tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    receiver = Receiver(tls=tls).start()
    try:
        webhook(ws, receiver.url)
        keys = put(ws, 3)
        # a self-signed certificate nobody trusts: not sent, tried again later
        run_until(ws, lambda: statuses(ws).get("failed", 0) == 3)
        with ws.db.connect() as conn:
            errors = conn.execute(sa.select(outbox.c.last_error)).scalars().all()
        assert all("certificate verify failed" in e for e in errors), errors
        assert not receiver.requests
        # the operator trusts its CA (the standard SSL_CERT_FILE): delivered, signed
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        http._tls.cache_clear()
        run_until(ws, lambda: statuses(ws) == {"delivered": 3})
        assert set(receiver.applied) == set(keys)
        assert all(r["valid"] for r in receiver.requests)
    finally:
        receiver.stop()
        http._tls.cache_clear()


def _min_tries(ws: Workspace) -> int:
    with ws.db.connect() as conn:
        return int(conn.execute(sa.select(sa.func.min(outbox.c.attempts))).scalar_one())


def test_4xx_is_dead_at_once_and_replay_from_the_api_delivers(ws, receiver, client_for):
    webhook(ws, receiver.url)
    receiver.answer = lambda key, body: (400, b'{"error": "unknown customer"}', {})
    put(ws, 1)
    run_until(ws, lambda: statuses(ws) == {"dead": 1})
    client, headers = client_for(ws)
    [dead] = client.get("/api/delivery/messages?status=dead", headers=headers).json()
    detail = client.get(f"/api/delivery/messages/{dead['id']}", headers=headers).json()
    assert [(a["attempt"], a["outcome"], a["http_status"]) for a in detail["attempts_log"]] == [
        (1, "dead", 400)
    ]
    assert "unknown customer" in detail["attempts_log"][0]["response"]
    receiver.answer = lambda key, body: (200, b"{}", {})
    replayed = client.post(f"/api/delivery/messages/{dead['id']}/replay", headers=headers)
    assert replayed.status_code == 200 and replayed.json()["status"] == "pending"
    again = client.post(f"/api/delivery/messages/{dead['id']}/replay", headers=headers)
    assert again.status_code == 409 and again.json()["field"] == "status"
    run_until(ws, lambda: statuses(ws) == {"delivered": 1})
    outcomes = [
        a["outcome"]
        for a in client.get(f"/api/delivery/messages/{dead['id']}", headers=headers).json()[
            "attempts_log"
        ]
    ]
    assert outcomes == ["dead", "replayed", "delivered"]
    with ws.db.connect() as conn:
        actions = conn.execute(sa.text("SELECT action, target FROM audit_log")).all()
    assert ("delivery.replay", str(dead["id"])) in [tuple(a) for a in actions]


def test_429_honours_retry_after(ws, receiver):
    webhook(ws, receiver.url)
    receiver.answer = lambda key, body: (429, b"{}", {"Retry-After": "1"})
    put(ws, 1)
    run_until(ws, lambda: statuses(ws) == {"failed": 1})
    with ws.db.connect() as conn:
        row = conn.execute(sa.select(outbox.c.next_attempt_at, outbox.c.last_error)).one()
    with ws.db.connect() as conn:
        at = conn.execute(sa.select(delivery_attempts.c.at)).scalar_one()
    assert 0.9 <= (row.next_attempt_at - at).total_seconds() <= 1.1  # not jittered to 0.2 s
    assert row.last_error == "HTTP 429"


def test_a_receiver_slower_than_the_timeout_is_retried(ws, receiver):
    webhook(ws, receiver.url, config={"url": receiver.url, "timeout": 0.3})
    receiver.delay = 1.0
    put(ws, 1)
    run_until(ws, lambda: statuses(ws) == {"failed": 1})
    with ws.db.connect() as conn:
        row = conn.execute(sa.select(delivery_attempts.c.outcome, delivery_attempts.c.ms)).one()
        error = conn.execute(sa.select(outbox.c.last_error)).scalar_one()
    assert error == "Timeout: no answer within 0.3 s"
    assert row.outcome == "retry" and 300 <= row.ms < 900


def test_the_app_runs_a_dispatcher_in_process(workspace, receiver, client, admin_headers):
    webhook(workspace, receiver.url)
    keys = put(workspace, 5)
    deadline = time.monotonic() + 15
    while statuses(workspace) != {"delivered": 5}:
        assert time.monotonic() < deadline, statuses(workspace)
        time.sleep(0.1)
    assert set(receiver.applied) == set(keys)
    stats = client.get("/api/delivery/stats", headers=admin_headers).json()
    assert stats["totals"]["delivered"] == 5 and stats["dispatcher"]["delivered"] == 5
    page = client.get("/delivery?status=delivered", headers=admin_headers)
    assert page.status_code in (200, 303)


def test_a_slow_send_keeps_its_lease(ws, receiver):
    """A send slower than the lease: the dispatcher extends it, so a second dispatcher
    polling meanwhile does not send the message again."""
    webhook(ws, receiver.url)
    receiver.delay = 1.5
    put(ws, 1)
    settings = replace(ws.settings, delivery_lease_seconds=0.6)

    async def scenario() -> int:
        first, second = Dispatcher(ws.db, settings), Dispatcher(ws.db, settings)
        try:
            sending = asyncio.create_task(first.run_once())
            claimed_by_second = 0
            for _ in range(12):  # poll through the slow send, past the original lease
                await asyncio.sleep(0.15)
                claimed_by_second += await second.run_once()
            await sending
            return claimed_by_second
        finally:
            await first.aclose()
            await second.aclose()

    assert asyncio.run(scenario()) == 0
    assert statuses(ws) == {"delivered": 1} and len(receiver.requests) == 1


# -- crash: SIGKILL mid-batch -----------------------------------------------------------------
def test_dispatcher_killed_mid_batch_loses_nothing(ws, receiver):
    webhook(ws, receiver.url)
    keys = put(ws, 150)
    receiver.delay = 0.05
    env = {
        **os.environ,
        "RAPPORT_HOME": str(ws.settings.home),
        "RAPPORT_DELIVERY_LEASE_SECONDS": "2",
        "RAPPORT_DELIVERY_BATCH": "50",
        "RAPPORT_DELIVERY_CONCURRENCY": "8",
        "RAPPORT_DELIVERY_POLL_INTERVAL": "0.1",
    }
    command = [sys.executable, "-m", "rapport", "delivery", "dispatch"]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(receiver.requests) < 70 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    in_flight = statuses(ws)["sending"]
    assert in_flight > 0, f"the kill should land mid-batch: {statuses(ws)}"
    second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while statuses(ws) != {"delivered": 150}:
            assert time.monotonic() < deadline, f"not all delivered: {statuses(ws)}"
            assert second.poll() is None, second.stderr.read().decode()  # type: ignore[union-attr]
            time.sleep(0.1)
    finally:
        second.terminate()
        second.wait(10)
    seen = receiver.keys_seen()
    assert set(seen) == set(keys), "the receiver saw every key"
    assert set(receiver.applied.values()) == {1} and len(receiver.applied) == 150
    print(f"killed with {in_flight} in flight; {sum(seen.values()) - 150} sent twice (deduped)")


# -- protecting the receiver ------------------------------------------------------------------
def test_rate_limit_is_respected(ws, receiver):
    webhook(ws, receiver.url, rate_per_second=20, burst=5)
    put(ws, 60)
    started = time.monotonic()
    run_until(ws, lambda: statuses(ws) == {"delivered": 60})
    times = sorted(r["at"] for r in receiver.requests)
    span = times[-1] - times[0]
    rate = (len(times) - 5) / span
    assert span >= (60 - 5) / 20 * 0.95, span
    assert rate <= 21, f"measured {rate:.1f}/s"
    # no one-second window holds more than rate + burst (+2: arrival times at the receiver
    # jitter by a few ms on a busy machine, which can pull one more request into a window)
    busiest = max(sum(1 for u in times[i:] if u - t < 1.0) for i, t in enumerate(times))
    assert busiest <= 27, busiest
    print(
        f"60 messages at 20/s burst 5: {span:.2f} s span, {rate:.1f}/s, busiest second {busiest}, "
        f"{time.monotonic() - started:.2f} s"
    )


def test_circuit_opens_on_failures_and_recovers(ws, receiver):
    webhook(ws, receiver.url)
    receiver.answer = lambda key, body: (503, b"{}", {})
    put(ws, 20)
    fast = {"delivery_retry_schedule": "0.05", "delivery_breaker_failures": 3}
    settings = replace(ws.settings, delivery_breaker_cooldown=1.0, **fast)

    async def scenario() -> int:
        dispatcher = Dispatcher(ws.db, settings)
        try:
            await drive(dispatcher, lambda: len(receiver.requests) >= 20)
            assert dispatcher.breakers["crm"].state == "open"
            before = len(receiver.requests)
            window = time.monotonic() + 2.6
            await drive(dispatcher, lambda: time.monotonic() > window)
            probes = len(receiver.requests) - before
            assert statuses(ws) == {"failed": 20}, "postponed, not failed for good"
            receiver.answer = lambda key, body: (200, b"{}", {})
            await drive(dispatcher, lambda: statuses(ws) == {"delivered": 20})
            assert dispatcher.breakers["crm"].state == "closed"
            return probes
        finally:
            await dispatcher.aclose()

    probes = asyncio.run(scenario())
    # without the breaker, 20 messages retried every <=0.05 s would be hundreds of requests
    assert 1 <= probes <= 4, probes
    assert len(receiver.applied) == 20


# -- SSRF -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
        "http://192.168.1.10/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_targets_are_refused_without_allow_private(url):
    with pytest.raises(TargetRefused, match="allow_private"):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)


def test_targets_checked_on_save_and_at_send_time(ws, receiver, client_for):
    client, headers = client_for(ws)
    bad = {"name": "meta", "kind": "webhook", "config": {"url": "http://169.254.169.254/x"}}
    answer = client.post("/api/delivery/channels", json=bad, headers=headers)
    assert answer.status_code == 422 and answer.json()["field"] == "config.url"
    assert "link-local" in answer.json()["detail"]
    ftp = client.post(
        "/api/delivery/channels", json={**bad, "config": {"url": "ftp://x.org/"}}, headers=headers
    )
    assert ftp.status_code == 422 and "http:// or https://" in ftp.json()["detail"]
    marketer = {"Authorization": f"Bearer {accounts.create_token(ws.db, accounts.Role.marketer)}"}
    private = {**bad, "config": {"url": receiver.url}, "allow_private": True}
    refused = client.post("/api/delivery/channels", json=private, headers=marketer)
    assert refused.status_code == 403 and refused.json()["field"] == "allow_private"
    # saved while allowed, then the flag is taken away: the send-time check refuses it
    assert client.post("/api/delivery/channels", json=private, headers=headers).status_code == 201
    with ws.db.begin() as conn:
        conn.execute(sa.update(channels_table).values(allow_private=False))
    put(ws, 1, channel="meta")
    run_until(ws, lambda: statuses(ws) == {"dead": 1})
    with ws.db.connect() as conn:
        error = conn.execute(sa.select(outbox.c.last_error)).scalar_one()
    assert "127.0.0.1, a loopback address" in error and not receiver.requests


# -- templates, channels API, providers -------------------------------------------------------
def test_template_sandbox_refuses_internals(ws, receiver, client_for):
    with pytest.raises(DeliveryError, match="SecurityError|unsafe|undefined"):
        render_text("{{ ''.__class__.__mro__ }}", {})
    client, headers = client_for(ws)
    spec: dict[str, Any] = {
        "name": "t",
        "kind": "webhook",
        "allow_private": True,
        "config": {"url": receiver.url, "template": '{"x": "{{ \'\'.__class__ }}"}'},
    }
    answer = client.post("/api/delivery/channels", json=spec, headers=headers)
    assert answer.status_code == 422 and answer.json()["field"] == "config.template"
    assert "__class__" in answer.json()["detail"]
    # a template that renders invalid JSON, or uses a missing field: dead, with the reason
    spec["config"]["template"] = (
        '{"name": {{ payload.name|tojson }}, "missing": {{ payload.nope }}}'
    )
    assert client.post("/api/delivery/channels", json=spec, headers=headers).status_code == 201
    put(ws, 1, channel="t")
    run_until(ws, lambda: statuses(ws) == {"dead": 1})
    with ws.db.connect() as conn:
        assert "nope" in conn.execute(sa.select(outbox.c.last_error)).scalar_one()


def test_channels_api_masks_secrets_and_templates_the_body(ws, receiver, client_for):
    client, headers = client_for(ws)
    spec = {
        "name": "crm",
        "kind": "webhook",
        "allow_private": True,
        "config": {
            "url": receiver.url,
            "headers": {"X-Tenant": "acme"},
            "template": '{"customer": {{ payload.name|tojson }}, "key": {{ message.key|tojson }}}',
        },
    }
    created = client.post("/api/delivery/channels", json=spec, headers=headers).json()
    assert created["secret_once"].startswith("whsec_") and created["secret"].startswith("••••")
    listed = client.get("/api/delivery/channels", headers=headers).json()
    assert "secret_once" not in listed[0] and listed[0]["secret"] == created["secret"]
    secret = created["secret_once"]
    test = client.post(
        "/api/delivery/channels/crm/test", json={"payload": {"name": "李四"}}, headers=headers
    ).json()
    assert test["ok"] and test["http_status"] == 200
    sent = receiver.requests[-1]
    assert json.loads(sent["body"]) == {"customer": "李四", "key": test["key"]}
    assert sent["headers"]["X-Tenant"] == "acme" and verify(secret, sent["headers"], sent["body"])
    patched = client.patch(
        "/api/delivery/channels/crm", json={"rate_per_second": 5}, headers=headers
    )
    assert patched.status_code == 200 and patched.json()["rate_per_second"] == 5
    assert patched.json()["secret"] == created["secret"], "a patch without secret keeps it"
    bad = client.patch("/api/delivery/channels/crm", json={"burst": 0}, headers=headers)
    assert bad.status_code == 422 and bad.json()["field"] == "burst"
    typo = client.patch("/api/delivery/channels/crm", json={"rate": 5}, headers=headers)
    assert typo.json() == {"detail": "rate: not a channel field", "field": "rate"}
    stats = client.get("/api/delivery/stats", headers=headers).json()
    assert stats["totals"]["pending"] == 0 and "dispatcher" in stats


def test_wechat_template_message_default_request(ws, receiver):
    receiver.answer = lambda key, body: (200, b'{"errcode": 0, "errmsg": "ok"}', {})
    spec = {
        "name": "wx",
        "kind": "wechat_mp",
        "allow_private": True,
        "secret": "ACCESS_TOKEN_1",
        "config": {"url": receiver.url + "?access_token={{ secret }}", "template_id": "TPL-1"},
    }
    create_channel(ws.db, ChannelSpec.model_validate(spec))
    with ws.db.begin() as conn:
        enqueue(
            conn,
            channel="wx",
            key="w:1",
            payload={"openid": "o-1", "data": {"first": {"value": "冰箱"}}},
        )
        enqueue(conn, channel="wx", key="w:2", payload={"openid": "bad", "data": {}})
    receiver.answer = lambda key, body: (
        200,
        b'{"errcode": 0}'
        if body["touser"] == "o-1"
        else b'{"errcode": 40003, "errmsg": "invalid openid"}',
        {},
    )
    run_until(ws, lambda: statuses(ws) == {"delivered": 1, "dead": 1})
    body = json.loads(next(r for r in receiver.requests if r["key"] == "w:1")["body"])
    assert body == {
        "touser": "o-1",
        "template_id": "TPL-1",
        "url": "",
        "data": {"first": {"value": "冰箱"}},
    }
    with ws.db.connect() as conn:
        assert (
            conn.execute(sa.select(outbox.c.last_error).where(outbox.c.key == "w:2")).scalar_one()
            == "errcode 40003"
        )


def test_email_arrives_at_smtp_server_with_rendered_subject(ws):
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self) -> None:
            self.mails: list[Any] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            self.mails.append(envelope)
            return "250 OK"

    inbox = Inbox()
    port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        spec = {
            "name": "mail",
            "kind": "email",
            "allow_private": True,
            "config": {
                "host": "127.0.0.1",
                "port": port,
                "from": "crm@rapport.example",
                "subject": "您好 {{ payload.name }}: your fridge offer",
                "body": "Dear {{ payload.name }},\nthe {{ payload.model }} is waiting for you.",
            },
        }
        create_channel(ws.db, ChannelSpec.model_validate(spec))
        with ws.db.begin() as conn:
            enqueue(
                conn,
                channel="mail",
                key="m:1",
                payload={"name": "张三", "email": "zhang@example.com", "model": "BCD-470"},
            )
        run_until(ws, lambda: statuses(ws) == {"delivered": 1})
    finally:
        smtp.stop()
    import email
    from email import policy

    [envelope] = inbox.mails
    mail = email.message_from_bytes(envelope.content, policy=policy.default)
    assert envelope.rcpt_tos == ["zhang@example.com"]
    assert mail["Subject"] == "您好 张三: your fridge offer"
    assert "BCD-470 is waiting" in mail.get_content()
    assert mail["X-Rapport-Key"] == "m:1"


def test_call_list_export_csv_and_xlsx(ws, client_for):
    create_channel(
        ws.db,
        ChannelSpec.model_validate(
            {"name": "calls", "kind": "call_list", "config": {"columns": ["name", "mobile"]}}
        ),
    )
    with ws.db.begin() as conn:
        for i in range(3):
            enqueue(
                conn,
                channel="calls",
                key=f"c:{i}",
                person_key=100 + i,
                payload={"name": f"客户{i}", "mobile": f"1380000000{i}"},
            )
    assert statuses(ws) == {"listed": 3}
    client, headers = client_for(ws)
    preview = client.get("/api/delivery/channels/calls/call-list.csv?mark=false", headers=headers)
    assert (
        preview.content.decode("utf-8-sig").splitlines()[0]
        == "message_id,key,person_key,origin,queued_at,name,mobile"
    )
    assert statuses(ws) == {"listed": 3}
    xlsx = client.get("/api/delivery/channels/calls/call-list.xlsx", headers=headers)
    from openpyxl import load_workbook

    rows = list(load_workbook(io.BytesIO(xlsx.content)).active.values)
    assert [r[5:] for r in rows[1:]] == [(f"客户{i}", f"1380000000{i}") for i in range(3)]
    assert statuses(ws) == {"delivered": 3}
    empty = client.get("/api/delivery/channels/calls/call-list.csv", headers=headers)
    assert len(empty.content.decode("utf-8-sig").splitlines()) == 1, (
        "exported rows are not exported again"
    )
    wrong = client.get("/api/delivery/channels/nope/call-list.csv", headers=headers)
    assert wrong.status_code == 404 and wrong.json() == {
        "detail": "no channel named 'nope'",
        "field": "name",
    }


# -- PostgreSQL: two dispatchers, SKIP LOCKED -------------------------------------------------
def test_postgresql_two_dispatchers_never_send_a_message_twice(pg_url, tmp_path, receiver):
    from rapport.settings import load_settings

    settings = load_settings(
        home=tmp_path / "pg-home",
        database_url=pg_url,
        delivery_batch=40,
        delivery_poll_interval=0.05,
    )
    ws = Workspace(settings)
    ws.init()
    try:
        webhook(ws, receiver.url)
        receiver.delay = 0.002
        keys = put(ws, 400)

        def one(owner: str) -> None:
            from rapport.db import make_engine

            async def main() -> None:
                engine = make_engine(pg_url)
                dispatcher = Dispatcher(engine, settings, owner=owner)
                deadline = time.monotonic() + 60
                while statuses(ws) != {"delivered": 400} and time.monotonic() < deadline:
                    if not await dispatcher.run_once():
                        await asyncio.sleep(0.02)
                await dispatcher.aclose()
                engine.dispose()

            asyncio.run(main())

        threads = [threading.Thread(target=one, args=(f"d{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert statuses(ws) == {"delivered": 400}
        seen = receiver.keys_seen()
        assert set(seen) == set(keys) and set(seen.values()) == {1}, "no message sent twice"
        with ws.db.connect() as conn:
            tries = conn.execute(
                sa.select(sa.func.count()).select_from(delivery_attempts)
            ).scalar_one()
        assert tries == 400
    finally:
        ws.close()


# -- fixtures that need the app ---------------------------------------------------------------
@pytest.fixture
def client_for() -> Iterator[Callable[[Workspace], tuple[Any, dict[str, str]]]]:
    """An in-process client over a given workspace, without the in-process dispatcher
    (the tests drive their own)."""
    from fastapi.testclient import TestClient

    from rapport.web.app import create_app

    opened: list[Any] = []

    def make(ws: Workspace) -> tuple[Any, dict[str, str]]:
        ws.settings = replace(ws.settings, dispatcher_in_process=False)
        client = TestClient(create_app(workspace=ws))
        client.__enter__()
        opened.append(client)
        token = accounts.create_token(ws.db, accounts.Role.admin, "test")
        return client, {"Authorization": f"Bearer {token}"}

    yield make
    for client in opened:
        client.__exit__(None, None, None)


# -- send-time guards: unsubscribe, frequency caps, quiet hours ------------------------------
def sms(ws: Workspace, url: str) -> None:
    spec = {"name": "sms", "kind": "sms", "config": {"url": url}, "allow_private": True}
    create_channel(ws.db, ChannelSpec.model_validate(spec))


def send(ws: Workspace, person: int, key: str, channel: str = "sms", **payload: Any) -> None:
    with ws.db.begin() as conn:
        enqueue(
            conn,
            channel=channel,
            payload={"mobile": "13800000000", **payload},
            key=key,
            person_key=person,
            origin="campaign:1",
        )


def settled(ws: Workspace) -> bool:
    s = statuses(ws)
    return s["pending"] + s["sending"] + s["failed"] == 0


def errors(ws: Workspace) -> dict[str, str | None]:
    with ws.db.connect() as conn:
        return dict(conn.execute(sa.select(outbox.c.key, outbox.c.last_error)).all())


def test_an_unsubscribed_person_gets_nothing_more_on_that_channel(ws, receiver, client_for):
    sms(ws, receiver.url)
    webhook(ws, receiver.url)  # to a system, not to the person: never guarded
    send(ws, 1, "first")
    run_until(ws, lambda: settled(ws), public_url="https://crm.example.com")
    url = json.loads(receiver.requests[0]["body"])["unsubscribe_url"]
    assert url.startswith("https://crm.example.com/u/")
    token = url.rsplit("/", 1)[1]

    client, _ = client_for(ws)
    page = client.get(f"/u/{token}")  # a mail scanner opening the link changes nothing
    assert page.status_code == 200 and "Unsubscribe" in page.text
    assert guards.consent_of(ws.db, 1) == {}
    assert client.get(f"/u/{token}x").status_code == 404
    done = client.post(f"/u/{token}")  # the button, or a mail client's one-click POST
    assert done.status_code == 200 and "no more messages on sms" in done.text
    assert guards.consent_of(ws.db, 1) == {"sms": "unsubscribed"}

    send(ws, 1, "second")
    send(ws, 2, "other person")
    send(ws, 1, "lead to the CRM", channel="crm")
    run_until(ws, lambda: settled(ws))
    assert statuses(ws) == {"delivered": 3, "suppressed": 1}
    assert errors(ws)["second"] == "the person unsubscribed from sms"
    with ws.db.connect() as conn:  # the delivery log says why, and it was not a try
        row = conn.execute(sa.select(outbox.c.attempts).where(outbox.c.key == "second")).one()
        why = conn.execute(
            sa.select(delivery_attempts.c.outcome).where(delivery_attempts.c.error.isnot(None))
        ).scalars()
        assert row.attempts == 0 and list(why) == ["suppressed"]


def test_frequency_caps_count_what_was_delivered_and_the_batch_itself(ws, receiver):
    sms(ws, receiver.url)
    for i in range(3):
        send(ws, 7, f"a{i}")
    send(ws, 8, "b0")
    run_until(ws, lambda: settled(ws), delivery_frequency_caps="sms:2/day")
    assert statuses(ws) == {"delivered": 3, "suppressed": 1}
    assert errors(ws)["a2"] == "frequency cap sms:2/day reached for this person"
    send(ws, 7, "a3")  # a later batch: the two delivered today still count
    send(ws, 8, "b1")
    run_until(ws, lambda: settled(ws), delivery_frequency_caps="sms:2/day")
    assert errors(ws)["a3"] == "frequency cap sms:2/day reached for this person"
    assert len(receiver.applied) == 4  # a0, a1, b0, b1


def test_quiet_hours_wait_in_the_persons_time_zone(ws, receiver):
    sms(ws, receiver.url)
    # a window that holds "now" in Shanghai but not in Los Angeles (16 hours apart)
    now_sh = datetime.now(ZoneInfo("Asia/Shanghai"))
    start = (now_sh - timedelta(hours=1)).strftime("%H:%M")
    end = (now_sh + timedelta(hours=2)).strftime("%H:%M")
    send(ws, 1, "shanghai", timezone="Asia/Shanghai")
    send(ws, 2, "los angeles", timezone="America/Los_Angeles")
    run_until(
        ws,
        lambda: statuses(ws)["delivered"] == 1,
        delivery_quiet_hours=f"{start}-{end}",
    )
    with ws.db.connect() as conn:
        row = conn.execute(
            sa.select(outbox.c.status, outbox.c.next_attempt_at, outbox.c.attempts).where(
                outbox.c.key == "shanghai"
            )
        ).one()
    assert row.status == "pending" and row.attempts == 0
    due = row.next_attempt_at.replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    assert due.strftime("%H:%M") == end and due > now_sh
    assert list(receiver.applied) == ["los angeles"]


def test_quiet_hours_across_midnight_and_daylight_saving():
    hours = guards.parse_quiet_hours("21:00-08:00")
    assert hours == (clock(21), clock(8))
    paris = ZoneInfo("Europe/Paris")
    evening = datetime(2026, 3, 28, 22, 30, tzinfo=paris)  # the night clocks go forward
    assert guards.quiet_until(evening, hours, paris) == datetime(2026, 3, 29, 8, tzinfo=paris)
    assert guards.quiet_until(evening.replace(hour=7), hours, paris) == datetime(
        2026, 3, 28, 8, tzinfo=paris
    )
    assert guards.quiet_until(evening.replace(hour=8), hours, paris) is None
    assert guards.quiet_until(evening.replace(hour=20, minute=59), hours, paris) is None
    day = guards.parse_quiet_hours("12:00-14:00")
    assert day is not None
    assert guards.quiet_until(evening.replace(hour=13), day, paris) == evening.replace(
        hour=14, minute=0
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("sms:2/month", "delivery_frequency_caps"),
        ("fax:1/day", "delivery_frequency_caps"),
        ("sms 1/day", "delivery_frequency_caps"),
    ],
)
def test_bad_caps_say_what_is_wrong(text, where):
    with pytest.raises(DeliveryError) as err:
        guards.parse_caps(text)
    assert err.value.field == where and repr(text.strip()) in str(err.value)
    with pytest.raises(DeliveryError, match="HH:MM-HH:MM"):
        guards.parse_quiet_hours("25:00-08:00")


def test_unsubscribe_tokens_are_signed():
    token = guards.unsubscribe_token("s3cret", 42, "sms")
    assert guards.read_token("s3cret", token) == (42, "sms")
    with pytest.raises(DeliveryError):
        guards.read_token("other secret", token)
    with pytest.raises(DeliveryError):
        guards.read_token("s3cret", token[:-2] + "AA")
