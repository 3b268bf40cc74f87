"""A scaled-out rule worker: the rule core over NATS JetStream partitions.

``rapport worker rules --partitions 0,1,2`` owns those partitions (one owner per partition at
a time: starting a second one on a partition takes it over). Per partition: a durable pull
consumer, a rule core fed with the partition's messages in order, and a checkpoint in the
store of setting ``checkpoint_store`` (``rapport.stream.checkpoints``: a file
``<home>/stream/<stream>/p<N>.ckpt``, or key ``p<N>`` of the JetStream object store bucket
``<stream>_CHECKPOINTS``, which a worker on another machine can take over). For each batch
of messages:

1. feed the core (events of interest; every message moves the watermark);
2. apply the providers' outputs — leads through ``fire``, in one metadata-DB transaction;

and, at most every ``CHECKPOINT_SECONDS`` and on stopping:

3. write the checkpoint: the stream sequence of the last message fed, the last log offset fed,
   the watermark, every person state (events within the rules' retention, typed attributes,
   tags, segments) and the timers (msgpack; a file is written to a temporary file, fsynced,
   renamed over the old one; an object is stored once JetStream acknowledged it) — by a
   forked child, from a copy-on-write image of the states, so the partition goes on feeding
   while it is written (a worker must not stall for it: leads wait). The child serialises
   and stores the checkpoint itself, over its own NATS connection for the object store
   (``checkpoints`` says why);
4. once the child has exited cleanly, ack (``AckPolicy.ALL``: the last message acks all
   before it).

A NATS message holds up to ``partitions.WIRE_BATCH`` messages of the partition; an event at or
below the last log offset fed (a batch published again after the publisher crashed) is skipped.

A worker killed anywhere in this loop restarts from its checkpoint (read from the store when
it starts): the consumer is made anew to deliver the messages after the checkpoint's
sequence, so the batches whose outputs were applied after it are processed again, and
``fire`` drops the leads it already made by their dedupe key. At-least-once processing,
exactly-once leads. A partition with no checkpoint, or a corrupt one (its digest or msgpack
fails), is replayed from the start of the stream, which keeps every message.

Workers never open the warehouse (in the cluster profile it is not theirs): a person's
history and profile come only from the messages and the checkpoint, and a state is never
evicted. Besides events, a partition carries (``rapport.stream.partitions``):

- ``Profile``: the attributes, tags and segments the rules read, before a person's first
  event and again when they change; it replaces the state's and judges nothing (the embedded
  engine re-judges no one on a profile change either: the next event or timer reads it);
- ``Merge``: persons merged into one of this partition, with the survivor's history and
  profile from the warehouse: the core's ``merge`` (states replaced, rules told, survivor
  judged again at the watermark), as the embedded engine does;
- ``Drop``: a person of this partition merged into one of another: its state and timers go.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from sqlalchemy.exc import OperationalError

from rapport import metrics
from rapport.log import nats as natslog
from rapport.stream import checkpoints, core
from rapport.stream.core import EPOCH, Core
from rapport.stream.partitions import Drop, Merge, Past, PersonEvent, Profile, decode
from rapport.stream.state import EventRec, PersonState

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from rapport.settings import Settings
    from rapport.workspace import Workspace

log = logging.getLogger(__name__)

#: NATS messages fetched per partition and batch (one apply per batch): each holds up to
#: ``partitions.WIRE_BATCH`` events, and a lead waits for its whole batch, so keep it short
BATCH = 8
#: at most one checkpoint per partition this often (a child rewrites every state): leads are
#: applied per batch all the same; a restart re-reads at most this much, deduped by ``fire``
CHECKPOINT_SECONDS = 5.0
#: the collector's thresholds in a worker (Python's are 700, 10, 10)
GC_THRESHOLDS = (100_000, 50, 100)
#: how often the rules' versions are checked (a query of the metadata DB)
RULES_SECONDS = 1.0


# -- the checkpoint -----------------------------------------------------------------------------
class _Person(msgspec.Struct, array_like=True):
    person: int
    events: list[EventRec]
    attrs: dict[str, Any]
    tags: dict[str, list[str]]
    segments: dict[str, list[str | None]]


class Checkpoint(msgspec.Struct):
    """A partition's state after the message of stream sequence ``seq``."""

    seq: int
    watermark: datetime
    rules: str  # the providers' versions the timers were computed for
    persons: list[_Person]
    timers: list[tuple[datetime, int, str]]
    offset: int = 0  # the last log offset fed


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Checkpoint).decode


def checkpoint_path(ws: Workspace, partition: int) -> Path:
    """The checkpoint file of a partition with ``checkpoint_store = "file"``."""
    s = ws.settings
    return checkpoints.FileStore(s.home / "stream" / s.nats_stream).path(partition)


def load_checkpoint(settings: Settings, partition: int) -> Checkpoint | None:
    """The stored checkpoint of a partition, from either store (operators, tests; outside an
    event loop)."""
    return asyncio.run(_load(checkpoints.open_store(settings), partition))


async def _load(store: checkpoints.CheckpointStore, partition: int) -> Checkpoint | None:
    """A partition's checkpoint; None when there is none or it cannot be trusted (its digest
    or its msgpack fails): the partition is then replayed from the start of the log, and
    ``fire`` drops the leads made again."""
    try:
        data = await store.get(partition)
        return None if data is None else _decode(data)
    except (checkpoints.Corrupt, msgspec.DecodeError) as exc:
        log.warning(
            "the checkpoint of partition %s in %s is corrupt (%s): replaying the partition "
            "from the start of the stream",
            partition,
            store.where,
            exc,
        )
        return None


# -- one partition ------------------------------------------------------------------------------
class Partition:
    """The rule core of one partition, its checkpoint and its progress."""

    def __init__(self, ws: Workspace, number: int) -> None:
        from rapport.stream.engine import provider_paths

        s = ws.settings
        self.ws = ws
        self.number = number
        self.store = checkpoints.open_store(s)
        providers = core.load_providers(provider_paths(s, "worker"))
        self.core = Core(
            ws,
            providers,
            self._history,
            lateness=timedelta(seconds=s.stream_lateness_seconds),
            max_persons=sys.maxsize,
        )
        self.core.keep_states = True
        self.seq = 0
        self.offset = 0  # the last log offset fed
        self.top = EPOCH  # the latest event time seen
        self.quiet_since = time.monotonic()
        self.saved_at = time.monotonic()
        self.rules_checked = time.monotonic()
        #: persons fed since the last checkpoint
        self.dirty: set[int] = set()
        #: the checkpoint being written: the child's pid, the message to ack when it is done
        self.writing: tuple[int, Msg | None] | None = None
        #: survivors' states from ``Merge`` messages, for the core's loader to take
        self.merged: dict[int, PersonState] = {}
        label = str(number)  # the metrics' children, looked up once
        self.counted = (
            metrics.STREAM_READ.labels(label),
            metrics.STREAM_JUDGED.labels(label),
            metrics.STREAM_JUDGEMENTS.labels(label),
            metrics.PARTITION_PENDING.labels(label),
            metrics.PARTITION_EVENT_TIME.labels(label),
        )

    def _history(self, persons: set[int], ref: datetime) -> dict[int, PersonState]:
        """The core's loader: a merge's survivor gets the state its message carried; a person
        first seen here has no history before it."""
        return {p: self.merged.pop(p) for p in persons if p in self.merged}

    async def load(self) -> Checkpoint | None:
        """The partition's checkpoint from the store (None: none, or a corrupt one)."""
        return await _load(self.store, self.number)

    def start(self, ckpt: Checkpoint | None = None) -> None:
        """Rules from the providers, states and timers from the checkpoint ``load`` read."""
        c = self.core
        c.refresh_rules()
        if ckpt is None:
            return
        self.seq, self.offset = ckpt.seq, ckpt.offset
        c.watermark = self.top = ckpt.watermark
        for p in ckpt.persons:
            state = PersonState(
                p.person,
                attrs=p.attrs,
                tags={k: set(v) for k, v in p.tags.items()},
                segments={k: set(v) for k, v in p.segments.items()},
                events=p.events,
            )
            c.states[p.person] = state
        if ckpt.rules == repr(c.versions):
            for when, person, key in ckpt.timers:
                c.due[(person, key)] = when
                c._seq += 1
                c.timers.append((when.timestamp(), c._seq, person, key, when))
            c.timers.sort()
        else:  # the rules changed while the worker was away: rebuild the timers
            c.restore(list(c.states))

    def feed(self, msgs: list[Msg]) -> None:
        c = self.core
        now = time.monotonic()
        if now - self.rules_checked >= RULES_SECONDS:
            self.rules_checked = now
            if c.refresh_rules():  # a rule changed: rebuild the timers on the states kept
                c.restore(list(c.states))
        lateness = c.lateness
        events, judged, read = c.stats.events, c.stats.judged, 0
        for m in msgs:
            batch = decode(m.data)
            read += len(batch)
            for e in batch:
                if not isinstance(e, PersonEvent):
                    c.advance(self.top - lateness)  # as the embedded engine ended its pass
                    self.control(e)
                    continue
                if e.offset <= self.offset:
                    continue  # fed already: published again
                self.offset = e.offset
                if e.running > self.top:
                    self.top = e.running
                if e.person >= 0 and c.wants(e.event):
                    c.feed(e.person, _record(e), e.running)
                    self.dirty.add(e.person)
        c.advance(self.top - lateness)
        meta = msgs[-1].metadata
        self.seq = meta.sequence.stream
        self.quiet_since = time.monotonic()
        counted = self.counted  # per batch: read, judged, judgements, pending, event time
        counted[0].inc(read)
        counted[1].inc(max(0, c.stats.events - events))
        counted[2].inc(max(0, c.stats.judged - judged))
        pending = getattr(meta, "num_pending", None)
        if pending is not None:
            counted[3].set(pending)
        if self.top > EPOCH:
            counted[4].set(self.top.timestamp())

    def control(self, msg: Profile | Merge | Drop) -> None:
        """Apply a profile, a merge or a drop to the states."""
        c = self.core
        match msg:
            case Profile(person=person):
                state = c.states.get(person)
                if state is None:
                    state = c.states[person] = PersonState(person)
                _set_profile(state, msg)
                self.dirty.add(person)
            case Merge(seq=seq, away=away, profile=profile):
                state = PersonState(profile.person, events=[_record(e) for e in msg.events])
                _set_profile(state, profile)
                self.merged[profile.person] = state
                c.merge([(seq, profile.person, a) for a in away])
                self.merged.clear()
                self.dirty.update((profile.person, *away))
            case Drop(person=person):
                c.drop(person)
                self.dirty.add(person)

    def idle(self, now: float) -> bool:
        """A quiet partition: event time follows the wall clock (``stream_idle_seconds``)."""
        idle = self.ws.settings.stream_idle_seconds
        if not idle or now - self.quiet_since < idle:
            return False
        wall = datetime.fromtimestamp(time.time(), UTC) - self.core.lateness
        if wall <= self.core.watermark:
            return False
        self.core.advance(wall)
        return True

    def apply(self) -> None:
        """Apply the outputs of the messages fed so far (retried while the metadata DB is
        busy): leads are made now, whatever the checkpoint's pace."""
        c = self.core
        outputs, c.outputs = c.outputs, {}
        for provider in c.providers:
            batch = outputs.get(provider.name)
            for attempt in range(20):
                if not batch:
                    break
                try:
                    provider.apply(self.ws, batch)
                    metrics.applied(provider.name, batch)  # committed: count, latency
                    break
                except OperationalError:
                    if attempt == 19:
                        raise
                    time.sleep(0.05 * (attempt + 1))

    def checkpoint_behind(self, last: Msg | None) -> None:
        """Store the states as of the last message fed (after ``apply``: a restart from here
        re-reads only messages whose leads are made or to be made again, deduped), in a forked
        child (``last`` is acked by ``written`` when it is done)."""
        self.drop_empty()
        pid = os.fork()
        if pid == 0:  # the child: store, then leave without running anything of the parent's
            code = 1
            try:
                os.nice(10)  # the partition's work comes first
                self.store.put(self.number, _encode(self.snapshot()))
                code = 0
            except BaseException:
                log.exception("storing the checkpoint of partition %s failed", self.number)
            finally:
                os._exit(code)
        self.writing = (pid, last)
        self.saved_at = time.monotonic()

    def written(self, wait: bool = False) -> Msg | None:
        """The message to ack once the child writing the checkpoint has exited (None: still
        writing, or nothing to ack); a child that failed stops the worker: nothing is acked."""
        assert self.writing is not None
        pid, last = self.writing
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if not done:
            return None
        self.writing = None
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"writing the checkpoint of partition {self.number} failed")
        return last

    def drop_empty(self) -> None:
        """A state with nothing left (all events past the retention) is what the loader gives
        a new person: drop it, so that memory and the checkpoint hold only live history (of
        the persons fed since the last checkpoint)."""
        c = self.core
        timed = {person for person, _ in c.due}
        for p in self.dirty:
            s = c.states.get(p)
            empty = s is not None and not (s.events or s.attrs or s.tags or s.segments)
            if empty and p not in timed:
                del c.states[p]
        self.dirty = set()

    def snapshot(self) -> Checkpoint:
        c = self.core
        persons = [
            _Person(
                s.person,
                s.events,
                s.attrs,
                {k: sorted(v) for k, v in s.tags.items()},
                {k: list(v) for k, v in s.segments.items()},
            )
            for s in c.states.values()
        ]
        timers = [(when, person, key) for (person, key), when in c.due.items()]
        return Checkpoint(self.seq, c.watermark, repr(c.versions), persons, timers, self.offset)


def _record(e: PersonEvent | Past) -> EventRec:
    loads = orjson.loads
    props = loads(e.props) if e.props else {}
    return EventRec(e.ts, e.event, props, loads(e.item) if e.item else None, e.id)


def _set_profile(state: PersonState, profile: Profile) -> None:
    state.attrs = dict(profile.attrs)
    state.tags = {k: set(v) for k, v in profile.tags.items()}
    state.segments = {k: set(v) for k, v in profile.segments.items()}


# -- the process --------------------------------------------------------------------------------
async def run(
    ws: Workspace,
    partitions: list[int],
    batch: int = BATCH,
    stop: asyncio.Event | None = None,
    every: float = CHECKPOINT_SECONDS,
) -> None:
    """Process ``partitions`` until ``stop`` is set (SIGTERM / SIGINT in the CLI): per batch
    feed and apply; checkpoint and ack at most every ``every`` seconds (and on stopping)."""
    s = ws.settings
    for p in partitions:
        if not 0 <= p < s.stream_partitions:
            raise ValueError(
                f"--partitions: {p} is not a partition (0..{s.stream_partitions - 1}, "
                "setting stream_partitions)"
            )
    stop = stop or asyncio.Event()
    nc, js = await natslog.connect(s.nats_url, reconnect_forever=True)  # rides out restarts
    try:
        await natslog.ensure_stream(js, s)
        parts: list[tuple[Partition, Any]] = []
        for p in partitions:
            part = Partition(ws, p)
            part.start(await part.load())
            sub = await natslog.open_partition(js, s, p, part.seq)
            parts.append((part, sub))
        log.info(
            "worker: partitions %s from sequences %s (checkpoints: %s)",
            partitions,
            [x.seq for x, _ in parts],
            parts[0][0].store.where if parts else "-",
        )
        # a full collection walks every state (hundreds of ms: a lead waits that long): keep
        # what the checkpoint loaded out of it and collect the young less often
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        unacked: dict[int, Msg | None] = {}  # partitions fed since their checkpoint
        while not stop.is_set():
            busy = False
            for part, sub in parts:
                try:
                    msgs = await sub.fetch(batch, timeout=0.05)
                except TimeoutError:
                    msgs = []
                if msgs:
                    part.feed(msgs)
                    unacked[part.number] = msgs[-1]
                    busy = True
                elif part.idle(time.monotonic()):
                    unacked.setdefault(part.number, None)
                part.apply()
                if part.writing is not None:
                    await _ack(part.written())
                elif part.number in unacked and time.monotonic() - part.saved_at >= every:
                    part.checkpoint_behind(unacked.pop(part.number))
            if not busy:
                await asyncio.sleep(0.02)
        for part, _ in parts:  # stopping: nothing fed is left out of a checkpoint
            if part.writing is not None:
                await _ack(part.written(wait=True))
            if part.number in unacked:  # by a child as always (one path for both stores)
                part.checkpoint_behind(unacked.pop(part.number))
                await _ack(part.written(wait=True))
    finally:
        await nc.close()


async def _ack(last: Msg | None) -> None:
    if last is not None:
        await last.ack()  # AckPolicy.ALL: every message up to it


def main(ws: Workspace, partitions: list[int], batch: int = BATCH) -> None:
    """The CLI's loop: stop cleanly (after the batch at hand) on SIGTERM or Ctrl-C."""

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(ws, partitions, batch, stop)

    asyncio.run(go())
