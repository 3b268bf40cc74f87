"""The embedded event log: one SQLite file in WAL mode with ``synchronous=FULL``.

A single writer thread does group commit: it takes everything queued within
``commit_interval_ms`` (or up to ``commit_max_events``), inserts it in one transaction, commits
(the WAL is fsync'd) and only then resolves each caller's future. The inserts run in that thread
or, with ``log_writer_process`` (``rapport serve``), in a child process fed through a pipe, so
that SQLite's work does not compete with the collector for the server's interpreter lock.
Readers use their own connections, so another process (``rapport events count``) can read
while the server writes.

Dedupe is a UNIQUE index on a 64-bit hash of (source, messageId), checked exactly on a hit: a
messageId is a duplicate forever, which is stricter than the 72 h window of
``settings.dedupe_hours`` and never loses an event that a client retried late.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import msgspec
from msgspec.structs import astuple

from rapport.log.base import EventLog, LogOverloaded, LogWriteFailed
from rapport.log.records import LogRecord

if TYPE_CHECKING:
    from rapport.settings import Settings

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    "offset" INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    event TEXT,
    user_id TEXT,
    anonymous_id TEXT,
    timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    payload BLOB NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    dedupe INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS events_dedupe ON events (dedupe);
CREATE INDEX IF NOT EXISTS events_event ON events (event);
"""
_COLUMNS = (
    "source, message_id, type, event, user_id, anonymous_id, timestamp, received_at, payload, flags"
)
_INSERT = (
    f"INSERT OR IGNORE INTO events ({_COLUMNS}, dedupe) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = f'SELECT "offset", {_COLUMNS} FROM events'


def dedupe_key(source: str, message_id: str) -> int:
    """(source, messageId) as a signed 64-bit hash.

    An 8-byte integer index costs half as much per durable append as a text index on the pair
    (random keys dirty fewer pages); a hash collision is detected and handled exactly in
    ``_offsets_with_duplicates``, so it never drops an event.
    """
    digest = hashlib.blake2b(f"{source}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _row_values(record: LogRecord) -> tuple[Any, ...]:
    return (*astuple(record), dedupe_key(record.source, record.message_id))


Done = Callable[[list[int | None] | None, BaseException | None], None]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # a commit is fsync'd: acknowledged means durable
    conn.execute("PRAGMA cache_size=-65536")  # 64 MB: the dedupe index stays in memory
    # Checkpoint every ~80 MB of WAL, not SQLite's 4 MB: random dedupe-index pages dirtied by
    # many commits are then copied back once, which halves the cost of a durable append.
    conn.execute("PRAGMA wal_autocheckpoint=20000")
    return conn


def _stored(cur: sqlite3.Cursor, record: LogRecord) -> bool:
    """Whether this exact (source, messageId) is already in the log (the rare, slow check)."""
    key = dedupe_key(record.source, record.message_id)
    found = cur.execute(
        "SELECT 1 FROM events WHERE (dedupe = ? OR dedupe IS NULL) AND source = ?"
        " AND message_id = ? LIMIT 1",
        (key, record.source, record.message_id),
    ).fetchone()
    return found is not None


def _row(row: tuple[Any, ...]) -> tuple[int, LogRecord]:
    return row[0], LogRecord(*row[1:])


def _insert(conn: sqlite3.Connection, records: list[LogRecord]) -> list[int | None]:
    """Append ``records`` in one committed (fsync'd) transaction; their offsets."""
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        before = cur.execute('SELECT coalesce(max("offset"), 0) FROM events').fetchone()[0]
        changes = conn.total_changes
        cur.executemany(_INSERT, map(_row_values, records))
        inserted = conn.total_changes - changes
        offsets: list[int | None] = (
            list(range(before + 1, before + 1 + len(records)))
            if inserted == len(records)
            else _offsets_with_duplicates(cur, before, records)
        )
        cur.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return offsets


def _offsets_with_duplicates(
    cur: sqlite3.Cursor, before: int, records: list[LogRecord]
) -> list[int | None]:
    """Which records were new: the rows past ``before`` are exactly this batch's inserts.

    Without duplicates (the usual case) the new rows are simply the next offsets in order,
    because SQLite gives a new row the largest rowid plus one and the log never deletes.
    """
    new = {
        (source, message_id): offset
        for offset, source, message_id in cur.execute(
            'SELECT "offset", source, message_id FROM events WHERE "offset" > ?', (before,)
        )
    }
    offsets = [new.pop((r.source, r.message_id), None) for r in records]
    seen: set[tuple[str, str]] = set()  # inserted by this batch: later copies are duplicates
    for i, record in enumerate(records):
        pair = (record.source, record.message_id)
        if offsets[i] is not None:
            seen.add(pair)
        elif pair not in seen and not _stored(cur, record):
            # a different message shares the hash: keep it, outside the hash index
            cur.execute(_INSERT, (*astuple(record), None))
            offsets[i] = cur.lastrowid
            seen.add(pair)
    return offsets


class _Writer(Protocol):
    def insert(self, records: list[LogRecord]) -> list[int | None]: ...
    def close(self) -> None: ...


class _ThreadWriter:
    """Inserts from the writer thread itself (embedded use, tests, the CLI)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = _connect(path)

    def insert(self, records: list[LogRecord]) -> list[int | None]:
        try:
            return _insert(self.conn, records)
        except sqlite3.Error as exc:
            raise _failed(repr(exc), self.path) from exc

    def close(self) -> None:
        self.conn.close()


_encode = msgspec.msgpack.encode
_decode_records = msgspec.msgpack.Decoder(list[LogRecord]).decode
_decode_result = msgspec.msgpack.Decoder(tuple[bool, Any]).decode


_CHILD = "import sys; from rapport.log.sqlite import serve_writes; serve_writes(sys.argv[1])"


class _ProcessWriter:
    """Inserts in a child process, so SQLite's work never waits for the server's GIL.

    Each group commit crosses the child's stdin as one length-prefixed msgpack frame and its
    offsets come back on stdout after the child's COMMIT: the acknowledgement still follows
    durability. If the child dies, the callers of that commit get an error (no acknowledgement),
    never a lost event, and the next commit starts a new child; if the parent dies, the child
    reads EOF and exits.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_child, self.from_child = self.proc.stdin, self.proc.stdout

    def insert(self, records: list[LogRecord]) -> list[int | None]:
        try:
            _send(self.to_child, _encode(records))
            ok, value = _decode_result(_receive(self.from_child))
        except (EOFError, OSError) as exc:
            raise LogWriteFailed("the event log's writer process has stopped") from exc
        if not ok:
            raise _failed(value, self.path)
        return list(value)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a dead child leaves a broken pipe
            self.to_child.close()  # the child reads EOF and exits
        self.proc.wait(30)
        self.from_child.close()


def _failed(error: str, path: Path) -> LogWriteFailed:
    """A failed commit as the collector reports it; SQLITE_FULL reads "database or disk is
    full" (a rolled-back transaction: the file stays intact and works once there is space)."""
    if "disk is full" in error:
        return LogWriteFailed(f"the disk of the event log {path} is full", disk_full=True)
    return LogWriteFailed(f"the event log {path} could not commit: {error}")


def _send(stream: IO[bytes], frame: bytes) -> None:
    stream.write(len(frame).to_bytes(4, "big") + frame)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    header = stream.read(4)
    if len(header) < 4:
        raise EOFError
    size = int.from_bytes(header, "big")
    frame = stream.read(size)
    if len(frame) < size:
        raise EOFError
    return frame


def serve_writes(path: str) -> None:
    """The child process: append each batch it receives; exit at EOF (the parent has gone)."""
    conn = _connect(Path(path))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            records = _decode_records(_receive(source))
        except EOFError:
            break
        try:
            result: tuple[bool, Any] = (True, _insert(conn, records))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, who tells the callers
            result = (False, repr(exc))
        _send(sink, _encode(result))
    conn.close()


class SQLiteEventLog(EventLog):
    def __init__(self, settings: Settings) -> None:
        self.path = settings.log_file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval = settings.commit_interval_ms / 1000
        self.max_batch = settings.commit_max_events
        self.writer_process = settings.log_writer_process
        self._writer_store: _Writer | None = None
        #: events waiting beyond this many answer 503: a bounded queue, never unbounded memory
        self.max_queued = settings.commit_max_events * 10
        with _connect(self.path) as conn:
            conn.executescript(_SCHEMA)
        conn.close()
        self._cond = threading.Condition()
        self._queue: deque[tuple[Sequence[LogRecord], Done]] = deque()
        self._queued = 0
        self._closing = False
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    # -- writing -----------------------------------------------------------------------------
    def _submit(self, records: Sequence[LogRecord], done: Done, bounded: bool) -> None:
        with self._cond:
            if self._closing:
                raise LogOverloaded("the event log is shutting down")
            if bounded and self._queued and self._queued + len(records) > self.max_queued:
                raise LogOverloaded(f"{self._queued} events are waiting for the log writer")
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="eventlog-writer", daemon=True
                )
                self._writer.start()
            self._queue.append((records, done))
            self._queued += len(records)
            self._cond.notify()

    def append_many(self, records: Sequence[LogRecord]) -> list[int | None]:
        if not records:
            return []
        future: Future[list[int | None]] = Future()

        def done(offsets: list[int | None] | None, exc: BaseException | None) -> None:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(offsets or [])

        self._submit(records, done, bounded=False)
        return future.result()

    async def append(self, records: Sequence[LogRecord]) -> list[int | None]:
        if not records:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int | None]] = loop.create_future()

        def resolve(offsets: list[int | None] | None, exc: BaseException | None) -> None:
            if future.done():  # the caller went away; the events are committed all the same
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(offsets or [])

        def done(offsets: list[int | None] | None, exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(resolve, offsets, exc)

        self._submit(records, done, bounded=True)
        return await future

    def _take(self) -> list[tuple[Sequence[LogRecord], Done]] | None:
        """Wait for work, then gather what arrives within the commit interval."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.interval
            batch: list[tuple[Sequence[LogRecord], Done]] = []
            taken = 0
            while True:
                while self._queue and taken < self.max_batch:
                    item = self._queue.popleft()
                    batch.append(item)
                    taken += len(item[0])
                remaining = deadline - time.monotonic()
                if taken >= self.max_batch or self._closing or remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._queued -= taken
            return batch

    def _write_loop(self) -> None:
        store = self._open_store()
        try:
            while (batch := self._take()) is not None:
                self._write(store, batch)
                if isinstance(store, _ProcessWriter) and store.proc.poll() is not None:
                    # its batch was refused (the senders retry); the next goes to a new child
                    log.warning("the event log's writer process died (%s)", store.proc.returncode)
                    store.close()
                    store = self._open_store()
        finally:
            store.close()

    def _open_store(self) -> _Writer:
        store = _ProcessWriter(self.path) if self.writer_process else _ThreadWriter(self.path)
        self._writer_store = store
        return store

    @staticmethod
    def _write(store: _Writer, batch: list[tuple[Sequence[LogRecord], Done]]) -> None:
        try:
            offsets = store.insert([r for records, _ in batch for r in records])
        except BaseException as exc:  # noqa: BLE001 - every waiting caller must hear of it
            for _, done in batch:
                done(None, exc)
            return
        start = 0
        for records, done in batch:
            done(offsets[start : start + len(records)], None)
            start += len(records)

    # -- reading -----------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._readers.append(conn)
        return conn

    def read(self, after: int, limit: int) -> list[tuple[int, LogRecord]]:
        rows = self._reader().execute(
            f'{_SELECT} WHERE "offset" > ? ORDER BY "offset" LIMIT ?', (after, limit)
        )
        return [_row(r) for r in rows]

    def tail(self, n: int) -> list[tuple[int, LogRecord]]:
        rows = self._reader().execute(f'{_SELECT} ORDER BY "offset" DESC LIMIT ?', (n,))
        return [_row(r) for r in reversed(rows.fetchall())]

    def count(self, event: str | None = None, source: str | None = None) -> int:
        where, params = [], []
        if event is not None:
            where.append("event = ?")
            params.append(event)
        if source is not None:
            where.append("source = ?")
            params.append(source)
        sql = "SELECT count(*) FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self._reader().execute(sql, params).fetchone()[0])

    def last_offset(self) -> int:
        row = self._reader().execute('SELECT max("offset") FROM events').fetchone()
        return int(row[0] or 0)

    def erase(self, offsets: Sequence[int]) -> int:
        """Rare and small: its own connection, waiting its turn with the group commit."""
        conn = _connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            deleted = 0
            for i in range(0, len(offsets), 500):
                chunk = list(offsets[i : i + 500])
                marks = ",".join("?" * len(chunk))
                cur = conn.execute(f'DELETE FROM events WHERE "offset" IN ({marks})', chunk)
                deleted += cur.rowcount
            conn.execute("COMMIT")
            return deleted
        finally:
            conn.close()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        for conn in self._readers:
            conn.close()
        self._readers.clear()
