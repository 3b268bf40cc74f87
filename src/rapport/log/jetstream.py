"""The event log on NATS JetStream (``log_backend = "nats"``): collectors in several processes
(or machines) append to one stream, and the follower reads it by sequence.

- **Offsets** are the stream's sequences: positive, increasing, never reused (an erased message
  leaves a gap). A consumer keeps its position as one integer, as with the SQLite log.
- **Subjects** are ``<stream lowercased>.<source>.<event>`` (tokens outside ``[A-Za-z0-9_-]``
  are hex-encoded behind a ``~``; no event is ``~~``), so ``count(event, source)`` is a
  subject-filtered stream info, exact and without reading a message.
- **Dedupe**: each message carries ``Nats-Msg-Id`` = a hash of (source, messageId), and the
  stream's duplicate window is ``dedupe_hours``. Unlike the SQLite log (a duplicate forever),
  JetStream forgets an id after the window, and keeps the ids of that window in memory.
- **Appends** are published without waiting message by message (``publish_async``) and
  acknowledged when every PubAck is in (JetStream has stored them, fsync'd per its
  ``sync_interval``). An ack that does not come (a connection lost mid-flight) means the batch
  is published again with the same ids, which JetStream drops where it stored them already.
- **Reads** use ephemeral pull consumers (no acks, deleted after a minute idle), kept open
  between calls, so a follower reading on from where it stopped costs one consumer info and
  the fetches.

The NATS client lives on an event loop in a private thread: ``append`` (called in uvicorn's
loop by the collector) and the sync methods (importers, the follower, the CLI) hand it their
work, so one connection serves every caller whatever loop or thread it runs in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import nats
from msgspec.structs import astuple
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from rapport.log.base import EventLog, LogOverloaded
from rapport.log.records import LogRecord

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from rapport.settings import Settings

T = TypeVar("T")

_SAFE = re.compile(r"[A-Za-z0-9_-]+\Z")
_NO_EVENT = "~~"
_Row = tuple[str, str, str, str | None, str | None, str | None, str, str, bytes, int]
_encode = msgspec.msgpack.encode
_decode_row = msgspec.msgpack.Decoder(_Row).decode
#: messages per fetch request of a reader
_FETCH = 2000
#: readers kept open between calls (each a server-side ephemeral consumer)
_CURSORS = 4
#: a publish whose ack does not come in this long is published again (same id) ...
ACK_TIMEOUT = 10.0
#: ... this many times in all
_ATTEMPTS = 3
_LOST = (asyncio.TimeoutError, NatsTimeout, ConnectionClosedError, NoRespondersError)


def token(value: str | None) -> str:
    """A subject token for a source or event name: itself when plain, else ``~`` + hex."""
    if value is None:
        return _NO_EVENT
    if _SAFE.match(value):
        return value
    return "~" + value.encode().hex()


def message_id(source: str, message_id: str) -> str:
    """The ``Nats-Msg-Id`` of (source, messageId): deterministic, so a retry dedupes."""
    return hashlib.blake2b(f"{source}\0{message_id}".encode(), digest_size=16).hexdigest()


def encode(record: LogRecord) -> bytes:
    """Msgpack of the record's fields as an array (no field names on the wire)."""
    return _encode(astuple(record))


def decode(data: bytes) -> LogRecord:
    return LogRecord(*_decode_row(data))


class _Ack(msgspec.Struct):
    """JetStream's answer to a publish (its PubAck, or an error)."""

    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode


class _Batch:
    """One append's messages waiting for their acks (answered into the log's ack inbox)."""

    def __init__(self, size: int) -> None:
        self.offsets: list[int | None] = [None] * size
        self.waiting = size
        self.done: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()

    def acked(self, i: int, ack: _Ack) -> None:
        if self.done.done():
            return
        if ack.error is not None:
            self.done.set_exception(RuntimeError(f"JetStream refused an event: {ack.error}"))
            return
        self.offsets[i] = None if ack.duplicate else ack.seq
        self.waiting -= 1
        if not self.waiting:
            self.done.set_result(self.offsets)


def _sequence(msg: Msg) -> int:
    """The stream sequence from a delivered message's ack subject (v1 and v2 forms)."""
    tokens = msg.reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


class _Cursor:
    """An ephemeral pull consumer positioned after sequence ``seq``, with its own inbox.

    Pulls are raw ``CONSUMER.MSG.NEXT`` requests answered into a callback: the client's
    ``fetch`` waits on each message with a timeout of its own, which made reading five times
    slower than this.
    """

    def __init__(self, js: JetStreamContext, stream: str, name: str, seq: int) -> None:
        self.js, self.stream, self.name, self.seq = js, stream, name, seq
        self.nc = js._nc
        self.inbox = self.nc.new_inbox()
        self.buffer: list[Msg] = []
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:  # 404: no more now
            self._wake()
            return
        self.buffer.append(msg)
        if len(self.buffer) >= self.want:
            self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def pull(self, n: int) -> list[Msg]:
        self.buffer, self.want = [], n
        self.waiter = asyncio.get_running_loop().create_future()
        request = msgspec.json.encode({"batch": n, "no_wait": True})
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        await self.nc.publish(subject, request, reply=self.inbox)
        await asyncio.wait_for(self.waiter, 10)
        return self.buffer

    async def drop(self) -> None:
        with contextlib.suppress(Exception):  # gone already: the server cleans up idle ones
            await self.js.delete_consumer(self.stream, self.name)
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()


class JetStreamEventLog(EventLog):
    def __init__(self, settings: Settings) -> None:
        self.url = settings.nats_url
        self.stream = settings.nats_log_stream
        self.prefix = self.stream.lower()
        self.replicas = settings.nats_log_replicas
        self.window = float(settings.dedupe_hours * 3600)
        #: events in flight beyond this many answer 503 (as the SQLite log's queue bound)
        self.max_queued = settings.commit_max_events * 10
        self.ack_timeout = ACK_TIMEOUT
        self._inflight = 0
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="eventlog-nats", daemon=True
        )
        self._thread.start()
        self._cursors: OrderedDict[int, _Cursor] = OrderedDict()
        self._batches: dict[int, _Batch] = {}
        self._next_batch = 0
        self._acks = ""
        try:
            self._nc, self._js = self._run(self._connect())
            self._read_lock = self._run(self._make_lock())
        except BaseException:
            self._stop_loop()
            raise

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @staticmethod
    async def _make_lock() -> asyncio.Lock:
        return asyncio.Lock()

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        try:
            nc = await nats.connect(
                self.url,
                name="rapport-eventlog",
                connect_timeout=2,
                reconnect_time_wait=0.2,
                max_reconnect_attempts=-1,  # a server keeps trying; callers time out meanwhile
            )
        except Exception as exc:  # noqa: BLE001 - the client raises several kinds
            raise ConnectionError(
                f"the event log's NATS server at {self.url} is not reachable: {exc}"
                " (settings nats_url / RAPPORT_NATS_URL)"
            ) from exc
        js = nc.jetstream()
        self._acks = nc.new_inbox()
        await nc.subscribe(self._acks + ".*", cb=self._on_ack)
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=self.window,
            )
        return nc, js

    def _subject(self, record: LogRecord) -> str:
        return f"{self.prefix}.{token(record.source)}.{token(record.event)}"

    # -- writing -----------------------------------------------------------------------------
    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject.rpartition(".")[2].partition("_")
        batch = self._batches.get(int(batch_id))
        if batch is None:  # an ack after its batch timed out (it was published again)
            return
        if not msg.data:  # a status instead: 503, no stream takes the subject
            status = msg.headers.get("Status") if msg.headers else None
            error = {"status": status, "description": "no JetStream stream for the subject"}
            batch.acked(int(index), _Ack(error=error))
            return
        batch.acked(int(index), _decode_ack(msg.data))

    async def _publish(self, records: Sequence[LogRecord]) -> list[int | None]:
        """Publish every record with its reply subject in the ack inbox, then wait for all
        the acks: the client's ``publish_async`` (a future, a token and a parsed PubAck per
        message) cost twice the CPU of this."""
        prepared = [
            (self._subject(r), {"Nats-Msg-Id": message_id(r.source, r.message_id)}, encode(r))
            for r in records
        ]
        for attempt in range(1, _ATTEMPTS + 1):
            self._next_batch += 1
            batch_id, batch = self._next_batch, _Batch(len(prepared))
            self._batches[batch_id] = batch
            reply = f"{self._acks}.{batch_id}_"
            try:
                for i, (subj, headers, data) in enumerate(prepared):
                    await self._nc.publish(subj, data, reply=f"{reply}{i}", headers=headers)
                return await asyncio.wait_for(asyncio.shield(batch.done), self.ack_timeout)
            except (*_LOST, OutboundBufferLimitError) as exc:
                if attempt == _ATTEMPTS:
                    raise RuntimeError(
                        f"the event log's NATS server at {self.url} did not acknowledge"
                        f" {len(records)} events after {attempt} attempts: {exc!r}"
                    ) from exc
                # published again with the same ids: JetStream drops what it stored already
                # (its duplicates then read as None here, though this call stored them)
            finally:
                self._batches.pop(batch_id, None)
        raise AssertionError("unreachable")

    async def append(self, records: Sequence[LogRecord]) -> list[int | None]:
        if not records:
            return []
        with self._lock:
            if self._closed:
                raise LogOverloaded("the event log is shutting down")
            if self._inflight and self._inflight + len(records) > self.max_queued:
                raise LogOverloaded(f"{self._inflight} events are waiting for NATS")
            self._inflight += len(records)
        try:
            future = asyncio.run_coroutine_threadsafe(self._publish(records), self._loop)
            return await asyncio.wrap_future(future)
        finally:
            with self._lock:
                self._inflight -= len(records)

    def append_many(self, records: Sequence[LogRecord]) -> list[int | None]:
        if not records:
            return []
        return self._run(self._publish(records))

    # -- reading -----------------------------------------------------------------------------
    async def _open_cursor(self, after: int) -> tuple[_Cursor, int]:
        """A new reader after ``after``; how many messages it has to deliver."""
        name = self._nc._nuid.next().decode()
        config = api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after else api.DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after else None,
            inactive_threshold=60.0,  # a reader that crashed leaves nothing behind for long
            mem_storage=True,
        )
        cursor = _Cursor(self._js, self.stream, name, after)
        await cursor.start()
        try:
            info = await self._js.add_consumer(self.stream, config=config)
        except BaseException:
            await cursor.drop()
            raise
        return cursor, info.num_pending or 0

    async def _read(self, after: int, limit: int) -> list[tuple[int, LogRecord]]:
        async with self._read_lock:
            cursor = self._cursors.pop(after, None)
            try:
                if cursor is None:
                    cursor, pending = await self._open_cursor(after)
                else:
                    pending = (await self._js.consumer_info(self.stream, cursor.name)).num_pending
                want = min(limit, pending or 0)
                out: list[tuple[int, LogRecord]] = []
                while len(out) < want:
                    msgs = await cursor.pull(min(want - len(out), _FETCH))
                    if not msgs:  # erased since the count: fewer than promised
                        break
                    out.extend((_sequence(m), decode(m.data)) for m in msgs)
            except BaseException:
                if cursor is not None:
                    await cursor.drop()
                raise
            cursor.seq = out[-1][0] if out else after
            self._cursors[cursor.seq] = cursor
            while len(self._cursors) > _CURSORS:
                await self._cursors.popitem(last=False)[1].drop()
            return out

    def read(self, after: int, limit: int) -> list[tuple[int, LogRecord]]:
        if limit <= 0:
            return []
        return self._run(self._read(after, limit))

    async def _state(self, subjects: str | None = None) -> api.StreamState:
        return (await self._js.stream_info(self.stream, subjects_filter=subjects)).state

    def tail(self, n: int) -> list[tuple[int, LogRecord]]:
        """Read back from the end in widening windows (erased messages leave gaps)."""
        if n <= 0:
            return []
        state = self._run(self._state())
        if not state.messages:
            return []
        floor, span = state.first_seq - 1, n
        while True:
            start = max(floor, state.last_seq - span)
            rows = self.read(start, state.last_seq - start)
            if len(rows) >= n or start == floor:
                return rows[-n:]
            span *= 2

    def count(self, event: str | None = None, source: str | None = None) -> int:
        if event is None and source is None:
            return int(self._run(self._state()).messages)
        src = token(source) if source is not None else "*"
        ev = token(event) if event is not None else "*"
        state = self._run(self._state(f"{self.prefix}.{src}.{ev}"))
        return sum((state.subjects or {}).values())

    def last_offset(self) -> int:
        return int(self._run(self._state()).last_seq)

    async def _erase(self, offsets: Sequence[int]) -> int:
        async def one(seq: int) -> bool:
            try:  # the server overwrites the message's bytes (erase), not just its index
                return bool(await self._js.delete_msg(self.stream, seq))
            except APIError:  # no such message (erased already)
                return False

        deleted = 0
        for i in range(0, len(offsets), 200):
            deleted += sum(await asyncio.gather(*(one(s) for s in offsets[i : i + 200])))
        return deleted

    def erase(self, offsets: Sequence[int]) -> int:
        return self._run(self._erase(offsets)) if offsets else 0

    # -- closing -----------------------------------------------------------------------------
    async def _close(self) -> None:
        for _ in range(50):  # appends in flight get their acks first (5 s at most)
            if not self._batches:
                break
            await asyncio.sleep(0.1)
        for cursor in self._cursors.values():
            await cursor.drop()
        self._cursors.clear()
        await self._nc.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._run(self._close())
        finally:
            self._stop_loop()
