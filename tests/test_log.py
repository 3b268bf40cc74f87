"""The embedded event log: durable appends, dedupe, group commit, readers in other processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import replace

import pytest

from rapport.log import EventLog, LogOverloaded, LogRecord
from rapport.settings import load_settings

pytestmark = pytest.mark.embedded_only(
    "the SQLite event log; tests/test_log_jetstream.py runs these tests on JetStream"
)


def rec(message_id: str, event: str = "view_product", source: str = "web") -> LogRecord:
    return LogRecord(
        source=source,
        message_id=message_id,
        type="track",
        event=event,
        user_id="u1",
        anonymous_id=None,
        timestamp="2024-05-01T08:00:00.000Z",
        received_at="2024-05-01T08:00:00.100Z",
        payload=b'{"event":"%s"}' % event.encode(),
    )


@pytest.fixture(params=["thread", "process"])
def log(settings, request):
    """Both writers: inserts in the writer thread, or in a child process (``rapport serve``)."""
    log = EventLog.open(replace(settings, log_writer_process=request.param == "process"))
    yield log
    log.close()


def test_append_many_gives_offsets_and_dedupes_per_source(log):
    assert log.append_many([rec("a"), rec("b"), rec("a")]) == [1, 2, None]
    assert log.append_many([rec("a", source="app"), rec("b")]) == [3, None]
    assert log.count() == 3
    assert log.count(source="web") == 2
    assert log.count(event="view_product", source="app") == 1
    assert log.last_offset() == 3
    assert [o for o, _ in log.read(after=1, limit=10)] == [2, 3]
    assert [r.message_id for _, r in log.tail(2)] == ["b", "a"]
    assert log.read(0, 1)[0][1] == rec("a")


def test_hash_collisions_never_drop_an_event(log, monkeypatch):
    """Every messageId hashes alike here: distinct messages are still kept, copies still not."""
    monkeypatch.setattr("rapport.log.sqlite.dedupe_key", lambda source, message_id: 42)
    assert log.append_many([rec("a"), rec("b"), rec("b"), rec("c")]) == [1, 2, None, 3]
    assert log.append_many([rec("c"), rec("d"), rec("a")]) == [None, 4, None]
    assert [r.message_id for _, r in log.read(0, 10)] == ["a", "b", "c", "d"]


def test_async_appends_are_group_committed_in_order(log):
    async def main():
        return await asyncio.gather(
            *(log.append([rec(f"m{i}-{j}") for j in range(10)]) for i in range(50))
        )

    results = asyncio.run(main())
    offsets = [o for batch in results for o in batch]
    assert sorted(offsets) == list(range(1, 501))
    assert all(batch == sorted(batch) for batch in results)
    assert log.count() == 500


def test_overload_refuses_instead_of_queueing_without_bound(tmp_path):
    log = EventLog.open(load_settings(home=tmp_path, commit_max_events=10, commit_interval_ms=50))

    async def main():
        first = asyncio.ensure_future(log.append([rec(f"a{i}") for i in range(90)]))
        await asyncio.sleep(0)
        with pytest.raises(LogOverloaded):
            await log.append([rec(f"b{i}") for i in range(20)])
        return await first

    assert len(asyncio.run(main())) == 90
    log.close()


def test_another_process_reads_while_this_one_writes(log, settings):
    log.append_many([rec(f"x{i}", event="login") for i in range(7)])
    code = (
        "from rapport.log import EventLog; from rapport.settings import load_settings;"
        f"log = EventLog.open(load_settings(home={str(settings.home)!r}));"
        "print(log.count(event='login'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7"


def test_log_survives_reopen(settings):
    log = EventLog.open(settings)
    log.append_many([rec("keep")])
    log.close()
    again = EventLog.open(settings)
    assert again.append_many([rec("keep"), rec("new")]) == [None, 2]
    again.close()


def test_a_dead_writer_process_refuses_instead_of_acknowledging_then_is_replaced(settings):
    log = EventLog.open(replace(settings, log_writer_process=True))
    assert log.append_many([rec("a")]) == [1]
    dead = log._writer_store.proc  # type: ignore[attr-defined]
    dead.kill()
    dead.wait()
    with pytest.raises(RuntimeError, match="writer process has stopped"):
        log.append_many([rec("b")])
    assert log.append_many([rec("b")]) == [2]  # the sender's retry: a new writer took it
    assert log._writer_store.proc.pid != dead.pid  # type: ignore[attr-defined]
    log.close()
    assert EventLog.open(settings).count() == 2
