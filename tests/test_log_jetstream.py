"""The event log on NATS JetStream (``log_backend = "nats"``), against the real server.

The behaviour tests of the SQLite log (``test_log``) run here again, imported, with this
module's ``settings`` and ``log`` fixtures (its own stream per test, deleted afterwards):
offsets, dedupe per source, counts, reads, concurrent appends, another process reading,
a reopened log. Then what is JetStream's own: subjects for odd names, erasure, the duplicate
window, a retried message, and a connection lost and regained.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from conftest import service_unavailable
from rapport.log import EventLog
from rapport.log.jetstream import JetStreamEventLog, token
from rapport.settings import Settings, load_settings
from test_log import rec
from test_log import test_another_process_reads_while_this_one_writes as _other  # noqa: F401
from test_log import test_append_many_gives_offsets_and_dedupes_per_source as _dedupe  # noqa: F401
from test_log import test_async_appends_are_group_committed_in_order as _gathered  # noqa: F401
from test_log import test_log_survives_reopen as _reopen  # noqa: F401

NATS_URL = os.environ.get("RAPPORT_TEST_NATS", "nats://127.0.0.1:4222")

# the imported tests are collected under these names too: keep them obviously the shared ones
test_shared_offsets_and_dedupe = _dedupe
test_shared_concurrent_appends = _gathered
test_shared_another_process_reads = _other
test_shared_reopen = _reopen
del _dedupe, _gathered, _other, _reopen


async def _stream_info(name: str, url: str = NATS_URL) -> object:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        return await nc.jetstream().stream_info(name)
    finally:
        await nc.close()


async def _delete_stream(name: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


def nats_home(home: Path, stream: str, url: str = NATS_URL) -> Settings:
    """A home whose rapport.toml selects the NATS log (read by subprocesses too)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "rapport.toml").write_text(
        f'[rapport]\nlog_backend = "nats"\nnats_url = "{url}"\nnats_log_stream = "{stream}"\n'
    )
    return load_settings(home=home)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    stream = f"RAPPORT_TEST_LOG_{uuid.uuid4().hex[:10].upper()}"
    try:
        asyncio.run(_delete_stream(stream))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server
        service_unavailable("NATS", exc)
    yield nats_home(tmp_path / "home", stream)
    asyncio.run(_delete_stream(stream))


@pytest.fixture
def log(settings: Settings) -> Iterator[EventLog]:
    log = EventLog.open(settings)
    assert isinstance(log, JetStreamEventLog)
    yield log
    log.close()


def test_odd_source_and_event_names_are_counted_exactly(log):
    names = ["Order Completed", "view.product", "a*b", "", "~~", "购买"]
    log.append_many([rec(f"m{i}", event=name) for i, name in enumerate(names)])
    log.append_many([rec("x", event="Order Completed", source="mobile app")])
    for name in names:
        assert log.count(event=name) == 1 + (name == "Order Completed"), name
    assert log.count(source="mobile app") == 1
    assert log.count(event="Order Completed", source="web") == 1
    assert log.count(event="view") == 0
    assert len({token(n) for n in names}) == len(names)
    assert [r.event for _, r in log.read(0, 100)] == [*names, "Order Completed"]


def test_erase_leaves_a_gap_that_reads_tail_and_counts_skip(log):
    log.append_many([rec(f"m{i}") for i in range(10)])
    assert log.erase([3, 4, 5, 999]) == 3
    assert log.erase([4]) == 0
    assert log.count() == 7
    assert log.last_offset() == 10
    assert [o for o, _ in log.read(0, 100)] == [1, 2, 6, 7, 8, 9, 10]
    assert [o for o, _ in log.read(2, 2)] == [6, 7]
    assert [o for o, _ in log.tail(4)] == [2, 6, 7, 8, 9, 10][-4:]
    assert [o for o, _ in log.tail(50)] == [1, 2, 6, 7, 8, 9, 10]


def test_a_reader_goes_on_where_it_stopped_and_sees_new_events(log):
    log.append_many([rec(f"a{i}") for i in range(5)])
    first = log.read(0, 3)
    assert [o for o, _ in first] == [1, 2, 3]
    log.append_many([rec(f"b{i}") for i in range(3)])
    assert [r.message_id for _, r in log.read(3, 100)] == ["a3", "a4", "b0", "b1", "b2"]
    assert log.read(8, 100) == []
    assert [o for o, _ in log.read(1, 2)] == [2, 3]  # another position: another reader


def test_a_retried_message_is_deduplicated_within_the_window(log, settings):
    assert log.append_many([rec("once"), rec("twice")]) == [1, 2]
    again = EventLog.open(settings)  # a client retrying through another collector process
    try:
        assert again.append_many([rec("twice"), rec("new")]) == [None, 3]

        async def retried() -> list[int | None]:
            return await again.append([rec("once"), rec("once", source="app")])

        assert asyncio.run(retried()) == [None, 4]
    finally:
        again.close()
    assert log.count() == 4
    info = asyncio.run(_stream_info(settings.nats_log_stream))
    assert info.config.duplicate_window == settings.dedupe_hours * 3600  # type: ignore[attr-defined]


class Proxy:
    """A TCP relay in front of NATS whose connections can be cut (a network failure)."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_the_log_survives_a_lost_connection(settings, tmp_path):
    port = int(NATS_URL.rsplit(":", 1)[1])
    proxy = Proxy(port)
    relayed = nats_home(
        tmp_path / "relayed", settings.nats_log_stream, f"nats://127.0.0.1:{proxy.port}"
    )
    log = EventLog.open(relayed)
    assert isinstance(log, JetStreamEventLog)
    log.ack_timeout = 1.0  # an ack lost with the connection: published again after 1 s
    try:
        assert log.append_many([rec(f"a{i}") for i in range(100)])[-1] == 100
        before = len(proxy.open)
        proxy.cut()  # the client reconnects through the proxy, which is still listening
        assert log.append_many([rec(f"b{i}") for i in range(100)])[-1] == 200
        assert len(proxy.open) >= before  # a new connection carried it

        async def during() -> list[int | None]:
            proxy.cut()
            return await log.append([rec("c"), rec("a0")])

        assert asyncio.run(during()) == [201, None]
        assert log.count() == 201
        assert [o for o, _ in log.read(195, 100)] == list(range(196, 202))
    finally:
        log.close()
        proxy.close()


def test_a_missing_stream_is_an_error_that_names_it(log, settings):
    log.append_many([rec("a")])
    asyncio.run(_delete_stream(settings.nats_log_stream))  # deleted by someone, under the log
    with pytest.raises(RuntimeError, match="no JetStream stream"):
        log.append_many([rec("b")])
