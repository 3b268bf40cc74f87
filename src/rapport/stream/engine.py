"""Stage 2 of the stream path, embedded: the rule core (``rapport.stream.core``) driven from
the warehouse, in the follower process after each stage-1 pass.

Rules come from *providers* (audiences, lead rules): a provider turns its definitions into
``Rule`` objects (a compiled ``StreamRule`` plus what to do when it is judged) and applies the
outputs the rules return, once per chunk of events. This driver owns where things come from:

- which events to read: those past the ``stream_offset`` checkpoint that have a person
  (stage 1 done) and that some rule is interested in (``RuleIndex``), in log-offset order;
- a person's history (the core's loader): loaded from the warehouse on first sight (one
  query for all new persons of a chunk: their interesting events within the rules'
  ``Retention``, taken from before the checkpoint so that the chunk's own events are not
  added twice). The warehouse is the durable state: a dropped state is reloaded and gives the
  same answers;
- a person's profile data (attributes, tags, segments the rules read): loaded with the
  history, then kept current (``rapport.stream.profiles``): before a pass judges anything,
  the states whose profile fingerprint moved get their data read again (no one is judged for
  it: the next event or timer reads it);
- the idle clock: when the log has been idle for ``stream_idle_seconds``, the watermark
  follows wall-clock minus the lateness (so an absence or a window still ends in a quiet
  hour);
- timers are not stored: a new engine (a restart, a changed definition) recomputes them for
  the persons the rules watch (an audience's members) and for those with an interesting event
  within the rules' horizon;
- identity merges: ``identity_history`` rows after ``stream_merge_seq``.

Checkpoint: ``stream_offset``, ``stream_watermark`` and ``stream_merge_seq`` in
``warehouse_state``, written after the providers applied a chunk's outputs. A pass cut short
between the two re-reads the chunk: outputs must be idempotent (audience changes are; system
events carry a message id the log deduplicates; leads dedupe on their key).

With ``stream_backend = "nats"`` the providers that need no warehouse (lead rules) run in
``rapport worker rules`` processes instead, and this pass publishes their input
(``rapport.stream.partitions``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import orjson
import pyarrow as pa

from rapport.stream import core, profiles
from rapport.stream.core import (
    EPOCH,
    Core,
    PassStats,
    Provider,
    Reads,
    Rule,
    horizon_of,
    reads_of,
)
from rapport.stream.profiles import load_profile
from rapport.stream.state import EventRec, PersonState

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.settings import Settings
    from rapport.workspace import Workspace

__all__ = [
    "PROVIDERS",
    "Engine",
    "PassStats",
    "Provider",
    "Reads",
    "Rule",
    "engine_for",
    "event_columns",
    "event_records",
    "forget",
    "horizon_of",
    "load_profile",
    "reads_of",
    "run_pass",
]

log = logging.getLogger(__name__)

#: providers by import path ("module:factory"); a factory takes no argument
PROVIDERS: list[str] = [
    "rapport.segments.live:AudienceProvider",
    "rapport.leads.live:LeadProvider",
    "rapport.journeys.live:JourneyProvider",
]
#: providers that read or write the warehouse: they stay in the follower when the stream is
#: scaled out (``stream_backend = "nats"``); the others run in the workers
WAREHOUSE_PROVIDERS = frozenset({"rapport.segments.live:AudienceProvider"})
OFFSET_KEY = "stream_offset"
WATERMARK_KEY = "stream_watermark"
MERGE_KEY = "stream_merge_seq"
#: log offsets read per chunk (one history load and one apply per chunk)
CHUNK = 50_000
_EPOCH = EPOCH


def provider_paths(settings: Settings, where: str = "embedded") -> list[str]:
    """The providers that run ``where`` ("embedded": the follower; "worker")."""
    if settings.stream_backend != "nats":
        return list(PROVIDERS) if where == "embedded" else []
    keep = where == "embedded"
    return [p for p in PROVIDERS if (p in WAREHOUSE_PROVIDERS) == keep]


def load_providers(paths: Iterable[str] = ()) -> list[Provider]:
    return core.load_providers(list(paths) or PROVIDERS)


@dataclass
class _Batch:
    """A chunk's events of interest, as columns."""

    offsets: list[int] = field(default_factory=list)
    persons: list[int] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    props: list[str | None] = field(default_factory=list)
    items: list[str | None] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    running: list[datetime] = field(default_factory=list)


class Engine(Core):
    """One per process and warehouse (``engine_for``); ``run_pass`` after each stage-1 pass."""

    def __init__(
        self,
        ws: Workspace,
        providers: list[Provider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = ws.settings
        if providers is None:
            providers = core.load_providers(provider_paths(s))
        super().__init__(
            ws,
            providers,
            self._history,
            lateness=timedelta(seconds=s.stream_lateness_seconds),
            max_persons=s.stream_max_persons,
        )
        self.clock = clock
        self.idle = s.stream_idle_seconds
        self.offset: int | None = None
        self.merge_seq = -1
        self.started = False
        self.last_activity = clock()
        #: the profile fingerprint each state was built with (``profiles``; may name persons
        #: since dropped: pruned when compared), and when they were last compared
        self.fps: dict[int, int] = {}
        self.profile_stamp: tuple[Any, ...] = ()
        self.profile_checked = float("-inf")

    def refresh_rules(self) -> bool:
        changed = super().refresh_rules()
        if changed:
            self.started = False
            self.fps = {}  # the states are gone
        return changed

    # -- a pass -------------------------------------------------------------------------------
    def run_pass(self, loaded: int | None = None) -> PassStats:
        """Apply the events stage 1 has finished since the checkpoint; the pass's numbers.
        ``loaded``: how many records stage 1 has just loaded (0 lets a pass with no rules skip
        the warehouse altogether)."""
        self.stats = PassStats()
        self.refresh_rules()
        if not self.rules and self.offset is not None and loaded == 0:
            self.stats.offset, self.stats.watermark = self.offset, self.watermark
            return self.stats
        with self.ws.warehouse.connect() as con:
            if self.offset is None:
                self._read_checkpoint(con)
            assert self.offset is not None
            hi = ready_until(self.ws, con, self.offset)
            merges = self._merges(con) if self.rules else []
            if not self.rules and hi > self.offset:  # nothing to judge: only move along
                ev = con.table("events")
                rng = ev.filter(ev.log_offset > self.offset, ev.log_offset <= hi)
                top = clock(rng).max().to_pyarrow().as_py()
                if top is not None:
                    self.watermark = max(self.watermark, top - self.lateness)
                self.offset = hi
                self._checkpoint(con)
        if not self.rules:
            self.stats.offset, self.stats.watermark = self.offset, self.watermark
            return self.stats
        now = self.clock()
        idle = self.idle > 0 and hi <= self.offset and now - self.last_activity >= self.idle
        if hi > self.offset:
            self.last_activity = now
        if not (hi > self.offset or merges or idle or not self.started):
            self.stats.offset, self.stats.watermark = self.offset, self.watermark
            return self.stats
        for provider in self.providers:
            provider.begin(self.ws)
        self._refresh_profiles()
        if not self.started:
            self._restore_timers()
        if merges:
            self._merge(merges)
        while self.offset < hi:
            self._chunk(min(hi, self.offset + CHUNK))
        if idle:  # a quiet log: event time moves with the clock
            wall = datetime.fromtimestamp(now, UTC) - self.lateness
            if wall > self.watermark:
                self.advance(wall)
        self._flush()
        self.evict()
        self.stats.offset, self.stats.watermark = self.offset, self.watermark
        return self.stats

    def _chunk(self, upto: int) -> None:
        assert self.offset is not None
        with self.ws.warehouse.connect() as con:
            batch, top = self._fetch(con, self.offset, upto)
        end = self.watermark if top is None else max(self.watermark, top - self.lateness)
        missing = {p for p in batch.persons if p not in self.states} | self.persons_due(end)
        low = min(batch.times, default=end)
        self._load(missing, min(low, self.watermark))
        items = batch.items if self.reads.items else None
        loads, feed = orjson.loads, self.feed
        for i, person in enumerate(batch.persons):
            raw = batch.props[i]
            item = items[i] if items is not None else None
            rec = EventRec(
                batch.times[i],
                batch.names[i],
                loads(raw) if raw else {},
                loads(item) if item else None,
                batch.ids[i],
            )
            feed(person, rec, batch.running[i])
        self.advance(end)
        self.offset = upto
        self._flush()
        self.evict()

    def _restore_timers(self) -> None:
        """A new engine: judge the watched persons and those with an event of interest within
        the rules' horizon, at the watermark (this rebuilds their timers, and catches up with a
        definition the batch path has not refreshed yet)."""
        self.started = True
        watched: set[int] = set()
        for rule in self.rules.values():
            watched.update(rule.watched())
        horizon = self.horizon
        if horizon and self.watermark > _EPOCH and self.names != []:
            with self.ws.warehouse.connect() as con:
                ev = con.table("events")
                recent = ev.filter(
                    ev.person_key >= 0,
                    ev.ts >= self.watermark - horizon,
                    (ev.log_offset <= self.offset) | ev.log_offset.isnull(),
                )
                if self.names is not None:
                    recent = recent.filter(recent.event.isin(self.names))
                keys = recent.select("person_key").distinct().to_pyarrow()
            watched.update(keys["person_key"].to_pylist())
        if not watched:
            return
        self.restore(watched)
        self._flush()
        self.evict()

    # -- merges -------------------------------------------------------------------------------
    def _merges(self, con: Backend) -> list[tuple[int, int, int]]:
        h = con.table("identity_history")
        rows = h.filter(h.action == "merge", h.seq > self.merge_seq, h.other_id.notnull())
        rows = rows.order_by("seq").select("seq", "person_id", "other_id")
        t = rows.to_pyarrow()
        return list(
            zip(
                t["seq"].to_pylist(),
                t["person_id"].to_pylist(),
                t["other_id"].to_pylist(),
                strict=True,
            )
        )

    def _merge(self, merges: list[tuple[int, int, int]]) -> None:
        """Both states go (the warehouse has re-keyed the merged-away person's rows); rules
        hear of the merged-away id; the survivor is judged on the merged history."""
        self.merge_seq = max(self.merge_seq, *(m[0] for m in merges))
        self.merge(merges)

    # -- outputs and the checkpoint -----------------------------------------------------------
    def _flush(self) -> None:
        self.apply_outputs()
        self._checkpoint()

    def _checkpoint(self, con: Backend | None = None) -> None:
        if con is None:
            with self.ws.warehouse.connect() as con:
                return self._checkpoint(con)
        state = ibis.memtable(
            {
                "key": [OFFSET_KEY, WATERMARK_KEY, MERGE_KEY],
                "value": [str(self.offset), self.watermark.isoformat(), str(self.merge_seq)],
            }
        )
        with self.ws.warehouse.transaction(con):
            con.upsert("warehouse_state", state, on="key")
        return None

    def _read_checkpoint(self, con: Backend) -> None:
        get = self.ws.warehouse.get_state
        self.offset = int(get(con, OFFSET_KEY) or 0)
        mark = get(con, WATERMARK_KEY)
        self.watermark = datetime.fromisoformat(mark) if mark else _EPOCH
        seq = get(con, MERGE_KEY)
        if seq is None:  # a first start reads every event as merged already: skip the past
            h = con.table("identity_history")
            last = h.filter(h.action == "merge").seq.max().to_pyarrow().as_py()
            self.merge_seq = -1 if last is None else int(last)
        else:
            self.merge_seq = int(seq)

    # -- person states from the warehouse -----------------------------------------------------
    def _refresh_profiles(self) -> None:
        """Before a pass judges anything: replace the attributes, tags and segments of the
        states whose profile fingerprint moved since they were built (when the ``stamp`` moved,
        and every ``PROFILE_SECONDS``). Judges no one: the next event or timer reads the new
        data. Events and memos stay: the memos (sequence automata, a leaf's matching events)
        hold events only; attribute, tag and segment leaves read the state at every judgement."""
        reads = self.reads
        if not self.states or not profiles.reads_profile(reads):
            return
        now = self.clock()
        with self.ws.warehouse.connect() as con:
            mark = profiles.stamp(self.ws, con, reads)
            if mark == self.profile_stamp and now - self.profile_checked < profiles.PROFILE_SECONDS:
                return
            held = {p: self.fps.get(p, 0) for p in self.states}
            moved = profiles.changed(con, reads, profiles.fingerprint_table(held))
            if moved:
                fresh = {p: PersonState(p) for p in moved}
                load_profile(self.ws, con, profiles.people(moved), fresh, reads)
                for p, new in fresh.items():
                    state = self.states[p]
                    state.attrs, state.tags, state.segments = new.attrs, new.tags, new.segments
                held.update(moved)
        self.fps = held
        self.profile_stamp, self.profile_checked = mark, now
        if moved:
            log.debug("stream: new profile data for %d persons in memory", len(moved))

    def _history(self, persons: set[int], ref: datetime) -> dict[int, PersonState]:
        """The states of ``persons`` from the warehouse: their events of interest up to the
        checkpoint (and imported ones), from what the rules need at ``ref`` or later."""
        keys = sorted(persons)
        states = {k: PersonState(k) for k in keys}
        with self.ws.warehouse.connect() as con:
            people = profiles.people(keys)
            if self.names != []:
                ev = con.table("events")
                q = ev.filter((ev.log_offset <= self.offset) | ev.log_offset.isnull())
                if self.names is not None:
                    q = q.filter(q.event.isin(self.names))
                keep = self.retention.where(q.ts, q.event, ref)  # per event, too
                if keep is not None:
                    q = q.filter(keep)
                q = q.join(people, "person_key")
                t = event_columns(con, q, self.reads.items).order_by(
                    ["person_key", "ts", "log_offset"]
                )
                for p, rec in event_records(t.to_pyarrow(), self.reads.items):
                    states[p].events.append(rec)
            if profiles.reads_profile(self.reads):  # the fingerprints first: see ``profiles``
                self.fps.update(dict.fromkeys(keys, 0))
                self.fps.update(profiles.fingerprints(con, self.reads, persons))
                load_profile(self.ws, con, people, states, self.reads)
        return states

    def evict(self) -> None:
        super().evict()
        if len(self.fps) > 2 * self.max_persons:  # dropped states' fingerprints
            self.fps = {p: self.fps.get(p, 0) for p in self.states}

    def _fetch(self, con: Backend, lo: int, hi: int) -> tuple[_Batch, datetime | None]:
        """The events of offsets ``(lo, hi]`` that some rule reads, in log order, each with
        the latest event time of the log up to it (what the watermark has seen); and the
        latest event time of the whole range."""
        ev = con.table("events")
        rng = ev.filter(ev.log_offset > lo, ev.log_offset <= hi)
        top = clock(rng).max().to_pyarrow().as_py()
        batch = _Batch()
        if self.names == []:
            return batch, top
        q = rng.mutate(running=running(rng))
        q = q.filter(q.person_key >= 0)
        if self.names is not None:
            q = q.filter(q.event.isin(self.names))
        t = event_columns(con, q, self.reads.items, extra=("running",)).order_by("log_offset")
        rows = t.to_pyarrow()
        batch.offsets = rows["log_offset"].to_pylist()
        batch.persons = rows["person_key"].to_pylist()
        batch.times = rows["ts"].to_pylist()
        batch.names = rows["event"].to_pylist()
        batch.props = rows["props"].to_pylist()
        batch.items = rows["item"].to_pylist() if self.reads.items else []
        batch.ids = rows["event_id"].to_pylist()
        batch.running = rows["running"].to_pylist()
        return batch, top


def ready_until(ws: Workspace, con: Backend, after: int) -> int:
    """The last log offset loaded whose events (and all before it) have a person."""
    loaded = int(ws.warehouse.get_state(con, "log_offset") or 0)
    ev = con.table("events")
    waiting = ev.filter(ev.log_offset > after, ev.person_key.isnull()).log_offset.min()
    first = waiting.to_pyarrow().as_py()
    return loaded if first is None else min(loaded, int(first) - 1)


def event_records(rows: pa.Table, items: bool) -> Iterator[tuple[int, EventRec]]:
    """(person, event) from the rows of ``event_columns``, in their order."""
    loads = orjson.loads
    item_col = rows["item"].to_pylist() if items else None
    columns = (rows[c].to_pylist() for c in ("person_key", "ts", "event", "props", "event_id"))
    for i, (p, ts, name, raw, eid) in enumerate(zip(*columns, strict=True)):
        item = item_col[i] if item_col is not None else None
        yield p, EventRec(ts, name, loads(raw) if raw else {}, loads(item) if item else None, eid)


def clock(events: Any) -> Any:
    """The time an event moves the watermark to: its own time, but never past its arrival
    (``received_at``). A device clock hours ahead, yet within ``max_clock_skew_hours``, keeps
    its event time for the rules, without making absence timers fire early for everyone;
    imported history (received long after it happened) is unaffected."""
    return ibis.least(events.ts, events.received_at)


def running(events: Any) -> Any:
    """Per event in log order: the latest ``clock`` of the log up to it (what the watermark
    has seen)."""
    return clock(events).max().over(ibis.cumulative_window(order_by=events.log_offset))


def event_columns(con: Backend, q: Any, items: bool, extra: tuple[str, ...] = ()) -> Any:
    """person_key, ts, event, log_offset, event_id, props (JSON text) and, when rules filter on
    items, item: the properties of the item the event's ``item_id`` names (of several items
    with that id, the one of the smallest item_type, then source, as the batch compiler does)."""
    from rapport.conditions.to_ibis import as_json, json_text

    cols = {
        "person_key": q.person_key,
        "ts": q.ts,
        "event": q.event,
        "log_offset": q.log_offset,
        "event_id": q.event_id,
        "props": q.properties.cast("string"),
        **{name: q[name] for name in extra},
    }
    if not items:
        return q.select(**cols)
    spark = con.name == "pyspark"  # (JSON is text there: offline rules read from Spark)
    q = q.select(**cols, item_ref=json_text(as_json(q.properties)["item_id"], spark))
    table = con.table("items")
    ranked = table.mutate(
        item_rank=ibis.row_number().over(
            group_by=table.item_id, order_by=[table.item_type, table.source]
        )
    )
    first = ranked.filter(ranked.item_rank == 0).select(
        item_key=ranked.item_id, item=ranked.properties.cast("string")
    )
    j = q.left_join(first, q.item_ref == first.item_key)
    return j.select(*cols, "item")


# -- one engine per process and warehouse -------------------------------------------------------
_ENGINES: dict[Any, Engine] = {}


def engine_for(ws: Workspace) -> Engine:
    engine = _ENGINES.get(ws.warehouse.path)
    if engine is None or engine.ws is not ws:
        engine = _ENGINES[ws.warehouse.path] = Engine(ws)
    return engine


def run_pass(ws: Workspace, loaded: int | None = None) -> PassStats:
    """Stage 2 after stage 1 (``follow.one_pass``); an engine that fails is rebuilt from the
    warehouse on the next pass. Scaled out, the pass also publishes the workers' input."""
    engine = engine_for(ws)
    try:
        stats = engine.run_pass(loaded)
    except BaseException:
        _ENGINES.pop(ws.warehouse.path, None)
        raise
    if ws.settings.stream_backend == "nats":
        from rapport.stream.partitions import publish_ready

        publish_ready(ws)
    return stats


def forget(ws: Workspace | None = None) -> None:
    """Drop the cached engine(s): the next pass starts a new one (as after a restart)."""
    if ws is None:
        _ENGINES.clear()
    else:
        _ENGINES.pop(ws.warehouse.path, None)
