"""Stage 2 of the stream path: rules kept current per event, and timers on event time.

Rules come from *providers* (audiences now, lead rules next): a provider turns its definitions
into ``Rule`` objects (a compiled ``StreamRule`` plus what to do when it is judged) and applies
the outputs the rules return, once per chunk of events. The engine owns what is generic:

- which events to read: those past the ``stream_offset`` checkpoint that have a person
  (stage 1 done) and that some rule is interested in (``RuleIndex``), in log-offset order;
- each person's ``PersonState``: loaded from the warehouse on first sight (one query for all
  new persons of a chunk: their interesting events within the rules' ``Retention``, taken
  from before the checkpoint so that the chunk's own events are not added twice), kept in an
  LRU of ``stream_max_persons`` and pruned. The warehouse is the durable state: a dropped
  state is reloaded and gives the same answers;
- the watermark: the latest event time read so far minus ``stream_lateness_seconds``, and,
  when the log has been idle for ``stream_idle_seconds``, wall-clock minus the lateness (so an
  absence or a window still ends in a quiet hour). It only moves forward;
- timers on event time: after judging a rule for a person, the rule's ``deadline`` (the next
  event time at which its answer may change by time alone) goes on a heap; a timer fires when
  the watermark passes it, before any later event is applied. Timers are not stored: a new
  engine (a restart, a changed definition) recomputes them for the persons the rules watch
  (an audience's members) and for those with an interesting event within the rules' horizon;
- identity merges (``identity_history`` rows after ``stream_merge_seq``): both persons' states
  are dropped, rules are told of the merged-away id, and the survivor is judged again.

A rule is judged at ``max(event time, watermark, the person's latest event)``: the person's
"now" in event time, so a late event changes the answer of now, not of the past.

Checkpoint: ``stream_offset``, ``stream_watermark`` and ``stream_merge_seq`` in
``warehouse_state``, written after the providers applied a chunk's outputs. A pass cut short
between the two re-reads the chunk: outputs must be idempotent (audience changes are; system
events carry a message id the log deduplicates).
"""

from __future__ import annotations

import heapq
import importlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any, Protocol, cast

import ibis
import orjson
import pyarrow as pa

from rapport.conditions.model import (
    And,
    Attr,
    Compare,
    Condition,
    Did,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Or,
    Sequence,
)
from rapport.conditions.reference import cast_attr
from rapport.stream.state import EventRec, PersonState, Retention, RuleIndex

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.conditions.to_stream import StreamRule
    from rapport.workspace import Workspace

log = logging.getLogger(__name__)

#: providers by import path ("module:factory"); a factory takes no argument
PROVIDERS: list[str] = ["rapport.segments.live:AudienceProvider"]
OFFSET_KEY = "stream_offset"
WATERMARK_KEY = "stream_watermark"
MERGE_KEY = "stream_merge_seq"
#: log offsets read per chunk (one history load and one apply per chunk)
CHUNK = 50_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- what rules read ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reads:
    """What a person's state must hold besides events: attributes, tags, segments, items."""

    attrs: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    items: bool = False

    def merge(self, other: Reads) -> Reads:
        return Reads(
            self.attrs | other.attrs,
            self.tags | other.tags,
            self.segments | other.segments,
            self.items or other.items,
        )


def _item_filter(where: Iterable[Compare]) -> bool:
    return any(c.field.startswith("item.") for c in where)


def reads_of(cond: Condition) -> Reads:
    """The profile data ``cond`` reads (events are given by ``StreamRule.interest``)."""
    match cond:
        case And(all=parts) | Or(any=parts):
            return reduce(Reads.merge, (reads_of(p) for p in parts), Reads())
        case Not(cond=inner):
            return reads_of(inner)
        case Attr(field=name):
            return Reads(attrs=frozenset({name}))
        case HasTag(tag=tag):
            return Reads(tags=frozenset({tag}))
        case InSegment(segment=seg):
            return Reads(segments=frozenset({seg}))
        case Did(where=where) | EventIs(where=where):
            return Reads(items=_item_filter(where))
        case Sequence():
            steps = [*cond.steps, *(s for s in (cond.excluding, cond.then_not) if s)]
            return Reads(items=any(_item_filter(s.where) for s in steps))
    return Reads()


def horizon_of(cond: Condition) -> timedelta:
    """How long after an event a timer of ``cond`` can still be due (a ``last N`` window
    letting it go, an absence maturing): the look-back that rebuilding timers needs."""
    match cond:
        case And(all=parts) | Or(any=parts):
            return max((horizon_of(p) for p in parts), default=timedelta(0))
        case Not(cond=inner):
            return horizon_of(inner)
        case Did(window=w) if w.last is not None:
            return timedelta(seconds=w.last.seconds())
        case Sequence(window=w):
            last = timedelta(seconds=w.last.seconds()) if w.last is not None else timedelta(0)
            return max(last, timedelta(seconds=cond.within.seconds()))
    return timedelta(0)


# -- the seam -----------------------------------------------------------------------------------
class Rule(Protocol):
    """One rule of a provider. The ``on_*`` methods return an output for the provider's
    ``apply`` (None: nothing happened)."""

    key: str
    compiled: StreamRule
    reads: Reads
    horizon: timedelta

    def on_event(self, state: PersonState, at: datetime, event: EventRec) -> Any | None: ...

    def on_timer(self, state: PersonState, at: datetime) -> Any | None: ...

    def on_merge(self, survivor: int, merged_away: int, at: datetime) -> Any | None: ...

    def watched(self) -> Iterable[int]:
        """Persons whose timers a new engine must rebuild even without a recent event."""
        ...


class Provider(Protocol):
    name: str

    def version(self, ws: Workspace) -> Hashable:
        """Cheap: changes when the definitions change (the rules are then rebuilt)."""
        ...

    def rules(self, ws: Workspace) -> list[Rule]: ...

    def begin(self, ws: Workspace) -> None:
        """Before a pass does work: re-read what the batch path may have changed."""
        ...

    def apply(self, ws: Workspace, outputs: list[Any]) -> None: ...


def load_providers(paths: Iterable[str] = ()) -> list[Provider]:
    out = []
    for path in paths or PROVIDERS:
        module, _, name = path.partition(":")
        out.append(getattr(importlib.import_module(module), name)())
    return out


@dataclass
class PassStats:
    events: int = 0  # events read (of interest to some rule)
    judged: int = 0  # rule evaluations
    timers: int = 0  # timers fired
    outputs: int = 0
    loaded: int = 0  # person states loaded from the warehouse
    offset: int = 0
    watermark: datetime | None = None


@dataclass
class _Batch:
    """A chunk's events of interest, as columns."""

    offsets: list[int] = field(default_factory=list)
    persons: list[int] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    props: list[str | None] = field(default_factory=list)
    items: list[str | None] = field(default_factory=list)
    running: list[datetime] = field(default_factory=list)


class Engine:
    """One per process and warehouse (``engine_for``); ``run_pass`` after each stage-1 pass."""

    def __init__(
        self,
        ws: Workspace,
        providers: list[Provider] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = ws.settings
        self.ws = ws
        self.providers = load_providers() if providers is None else providers
        self.clock = clock
        self.lateness = timedelta(seconds=s.stream_lateness_seconds)
        self.idle = s.stream_idle_seconds
        self.max_persons = s.stream_max_persons
        self.states: OrderedDict[int, PersonState] = OrderedDict()
        #: (deadline as POSIX seconds: cheap to compare, sequence, person, rule, deadline)
        self.timers: list[tuple[float, int, int, str, datetime]] = []
        self.due: dict[tuple[int, str], datetime] = {}
        self._seq = 0
        self.rules: dict[str, Rule] = {}
        self.owner: dict[str, Provider] = {}
        self.outputs: dict[str, list[Any]] = {}
        self.index = RuleIndex({})
        self.names: list[str] | None = []
        self.retention = Retention()
        self.reads = Reads()
        self.versions: list[Hashable] | None = None
        self.offset: int | None = None
        self.watermark = _EPOCH
        self.merge_seq = -1
        self.started = False
        self.last_activity = clock()
        self.stats = PassStats()

    # -- rules --------------------------------------------------------------------------------
    def refresh_rules(self) -> None:
        versions = [p.version(self.ws) for p in self.providers]
        if versions == self.versions:
            return
        self.rules, self.owner = {}, {}
        for provider in self.providers:
            for rule in provider.rules(self.ws):
                self.rules[rule.key] = rule
                self.owner[rule.key] = provider
        compiled = [r.compiled for r in self.rules.values()]
        self.index = RuleIndex({k: r.compiled.interest for k, r in self.rules.items()})
        self.names = None if self.index.reads_all() else sorted(self.index.events())
        self.retention = reduce(Retention.merge, (c.retention for c in compiled), Retention())
        self.reads = reduce(Reads.merge, (r.reads for r in self.rules.values()), Reads())
        self.versions = versions
        # compiled rules keep their memo in the states, and timers name rules: start over
        self.states.clear()
        self.timers, self.due = [], {}
        self.started = False

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
            hi = self._ready_until(con, self.offset)
            merges = self._merges(con) if self.rules else []
            if not self.rules and hi > self.offset:  # nothing to judge: only move along
                ev = con.table("events")
                rng = ev.filter(ev.log_offset > self.offset, ev.log_offset <= hi)
                top = rng.ts.max().to_pyarrow().as_py()
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
        if not self.started:
            self._restore_timers()
        if merges:
            self._merge(merges)
        while self.offset < hi:
            self._chunk(min(hi, self.offset + CHUNK))
        if idle:  # a quiet log: event time moves with the clock
            wall = datetime.fromtimestamp(now, UTC) - self.lateness
            if wall > self.watermark:
                self.watermark = wall
                self._fire(wall, inclusive=True)
        self._flush()
        self._evict()
        self.stats.offset, self.stats.watermark = self.offset, self.watermark
        return self.stats

    def _chunk(self, upto: int) -> None:
        assert self.offset is not None
        with self.ws.warehouse.connect() as con:
            batch, top = self._fetch(con, self.offset, upto)
        end = self.watermark if top is None else max(self.watermark, top - self.lateness)
        missing = {p for p in batch.persons if p not in self.states}
        bound = end.timestamp()
        missing |= {t[2] for t in self.timers if t[0] <= bound and t[2] not in self.states}
        low = min(batch.times, default=end)
        self._load(missing, min(low, self.watermark))
        rules, index, item_reads = self.rules, self.index, self.reads.items
        states, lateness = self.states, self.lateness
        loads = orjson.loads
        for i, person in enumerate(batch.persons):
            ts = batch.times[i]
            w = batch.running[i] - lateness
            if w > self.watermark:
                self._fire(w, inclusive=False)
                self.watermark = w
            raw = batch.props[i]
            item = batch.items[i] if item_reads else None
            rec = EventRec(
                ts, batch.names[i], loads(raw) if raw else {}, loads(item) if item else None
            )
            state = states.get(person)
            if state is None:  # dropped meanwhile (a merge): reload from the warehouse
                self._load({person}, ts)
                state = states[person]
            states.move_to_end(person)  # least recently used first
            state.add(rec)
            at = max(ts, self.watermark, state.events[-1].ts)
            keys = cast(list[str], index.rules_for(rec.event))
            for key in keys:
                rule = rules[key]
                self._emit(key, rule.on_event(state, at, rec))
                self._schedule(state, key, rule, at)
            self.stats.judged += len(keys)
            floor = self.retention.keep_since(state, at)
            if floor is not None and state.events and state.events[0].ts < floor:
                state.prune(floor)
        self.stats.events += len(batch.persons)
        if end > self.watermark:
            self.watermark = end
        self._fire(self.watermark, inclusive=True)
        self.offset = upto
        self._flush()
        self._evict()

    # -- timers -------------------------------------------------------------------------------
    def _schedule(self, state: PersonState, key: str, rule: Rule, at: datetime) -> None:
        when = rule.compiled.deadline(state, at)
        slot = (state.person, key)
        if when is None or when <= at:
            self.due.pop(slot, None)
            return
        if self.due.get(slot) == when:
            return
        self.due[slot] = when
        self._seq += 1
        heapq.heappush(self.timers, (when.timestamp(), self._seq, state.person, key, when))

    def _fire(self, limit: datetime, inclusive: bool) -> None:
        """Fire the timers due before ``limit`` (at it, too, when ``inclusive``) in time order."""
        timers, bound = self.timers, limit.timestamp()
        while timers and (timers[0][0] < bound or (inclusive and timers[0][0] == bound)):
            _, _, person, key, when = heapq.heappop(timers)
            if self.due.get((person, key)) != when:
                continue  # superseded by a later judgement
            del self.due[(person, key)]
            rule = self.rules.get(key)
            if rule is None:
                continue
            state = self.states.get(person)
            if state is None:
                self._load({person}, when)
                state = self.states[person]
            at = max(when, state.events[-1].ts) if state.events else when
            self._emit(key, rule.on_timer(state, at))
            self._schedule(state, key, rule, at)
            self.stats.timers += 1

    def _restore_timers(self) -> None:
        """A new engine: judge the watched persons and those with an event of interest within
        the rules' horizon, at the watermark (this rebuilds their timers, and catches up with a
        definition the batch path has not refreshed yet)."""
        self.started = True
        watched: set[int] = set()
        for rule in self.rules.values():
            watched.update(rule.watched())
        horizon = max((r.horizon for r in self.rules.values()), default=timedelta(0))
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
        self._load(watched, self.watermark)
        for person in watched:
            self._judge_all(self.states[person], self.watermark)
        self._flush()
        self._evict()

    def _judge_all(self, state: PersonState, when: datetime) -> None:
        at = max(when, state.events[-1].ts) if state.events else when
        for key, rule in self.rules.items():
            self._emit(key, rule.on_timer(state, at))
            self._schedule(state, key, rule, at)

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
        gone: set[int] = set()
        survivors: set[int] = set()
        for seq, survivor, away in merges:
            self.merge_seq = max(self.merge_seq, seq)
            gone.add(away)
            survivors.add(survivor)
            self.states.pop(survivor, None)
            self.states.pop(away, None)
            for key, rule in self.rules.items():
                self._emit(key, rule.on_merge(survivor, away, self.watermark))
        for slot in [s for s in self.due if s[0] in gone]:
            del self.due[slot]
        survivors -= gone
        if survivors:
            self._load(survivors, self.watermark)
            for person in survivors:
                self._judge_all(self.states[person], self.watermark)

    # -- outputs and the checkpoint -----------------------------------------------------------
    def _emit(self, key: str, output: Any | None) -> None:
        if output is not None:
            self.outputs.setdefault(self.owner[key].name, []).append(output)
            self.stats.outputs += 1

    def _flush(self) -> None:
        for provider in self.providers:
            outputs = self.outputs.pop(provider.name, None)
            if outputs:
                provider.apply(self.ws, outputs)
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

    def _ready_until(self, con: Backend, after: int) -> int:
        """The last log offset loaded whose events (and all before it) have a person."""
        loaded = int(self.ws.warehouse.get_state(con, "log_offset") or 0)
        ev = con.table("events")
        waiting = ev.filter(ev.log_offset > after, ev.person_key.isnull()).log_offset.min()
        first = waiting.to_pyarrow().as_py()
        return loaded if first is None else min(loaded, int(first) - 1)

    # -- person states ------------------------------------------------------------------------
    def _evict(self) -> None:
        while len(self.states) > self.max_persons:
            self.states.popitem(last=False)

    def _load(self, persons: Iterable[int], ref: datetime) -> None:
        """Build the states of ``persons`` from the warehouse: their events of interest up to
        the checkpoint (and imported ones), from what the rules need at ``ref`` or later."""
        keys = sorted(set(persons))
        if not keys:
            return
        self.stats.loaded += len(keys)
        states = {k: PersonState(k) for k in keys}
        with self.ws.warehouse.connect() as con:
            people = ibis.memtable(pa.table({"person_key": pa.array(keys, pa.int64())}))
            if self.names != []:
                ev = con.table("events")
                q = ev.filter((ev.log_offset <= self.offset) | ev.log_offset.isnull())
                if self.names is not None:
                    q = q.filter(q.event.isin(self.names))
                floor = self._floor(ref)
                if floor is not None:
                    q = q.filter(q.ts >= floor)
                q = q.join(people, "person_key")
                t = _event_columns(con, q, self.reads.items).order_by(
                    ["person_key", "ts", "log_offset"]
                )
                rows = t.to_pyarrow()
                loads = orjson.loads
                items = rows["item"].to_pylist() if self.reads.items else None
                for i, (p, ts, name, raw) in enumerate(
                    zip(
                        rows["person_key"].to_pylist(),
                        rows["ts"].to_pylist(),
                        rows["event"].to_pylist(),
                        rows["props"].to_pylist(),
                        strict=True,
                    )
                ):
                    item = items[i] if items is not None else None
                    rec = EventRec(
                        ts, name, loads(raw) if raw else {}, loads(item) if item else None
                    )
                    states[p].events.append(rec)
            self._profile(con, people, states)
        for key, state in states.items():
            state.reindex()
            self.states[key] = state

    def _floor(self, ref: datetime) -> datetime | None:
        r = self.retention
        if r.lookback is None or r.anchors:
            return None
        floor = ref - r.lookback
        return floor if r.since is None else min(floor, r.since)

    def _profile(self, con: Backend, people: Any, states: dict[int, PersonState]) -> None:
        """Attributes, tags and segments the rules read."""
        reads = self.reads
        if reads.attrs and "profiles" in con.list_tables():
            from rapport.catalog import current_plan

            types = dict(current_plan(self.ws.db).user_properties())
            profiles = con.table("profiles")
            have = set(profiles.columns)
            # a property whose name clashes with a fixed column is stored as prop_<name>
            cols = {a: a if a in have else f"prop_{a}" for a in reads.attrs}
            cols = {a: c for a, c in cols.items() if c in have and c != "person_key"}
            if cols:
                p = profiles.join(people, "person_key")
                rows = p.select("person_key", *cols.values()).to_pyarrow().to_pylist()
                for row in rows:
                    state = states[row["person_key"]]
                    for a, c in cols.items():
                        state.attrs[a] = cast_attr(row[c], types.get(a, "string"))
        if reads.tags:
            tv = con.table("tag_values")
            tv = tv.filter(tv.tag.isin(sorted(reads.tags))).join(people, "person_key")
            for row in tv.select("person_key", "tag", "value").to_pyarrow().to_pylist():
                states[row["person_key"]].tags.setdefault(row["tag"], set()).add(row["value"])
        if reads.segments:
            sm = con.table("segment_members")
            sm = sm.filter(sm.segment.isin(sorted(reads.segments))).join(people, "person_key")
            for row in sm.select("person_key", "segment", "bucket").to_pyarrow().to_pylist():
                buckets = states[row["person_key"]].segments.setdefault(row["segment"], set())
                buckets.add(row["bucket"])

    def _fetch(self, con: Backend, lo: int, hi: int) -> tuple[_Batch, datetime | None]:
        """The events of offsets ``(lo, hi]`` that some rule reads, in log order, each with
        the latest event time of the log up to it (what the watermark has seen); and the
        latest event time of the whole range."""
        ev = con.table("events")
        rng = ev.filter(ev.log_offset > lo, ev.log_offset <= hi)
        top = rng.ts.max().to_pyarrow().as_py()
        batch = _Batch()
        if self.names == []:
            return batch, top
        q = rng.mutate(running=rng.ts.max().over(ibis.cumulative_window(order_by=rng.log_offset)))
        q = q.filter(q.person_key >= 0)
        if self.names is not None:
            q = q.filter(q.event.isin(self.names))
        t = _event_columns(con, q, self.reads.items, extra=("running",)).order_by("log_offset")
        rows = t.to_pyarrow()
        batch.offsets = rows["log_offset"].to_pylist()
        batch.persons = rows["person_key"].to_pylist()
        batch.times = rows["ts"].to_pylist()
        batch.names = rows["event"].to_pylist()
        batch.props = rows["props"].to_pylist()
        batch.items = rows["item"].to_pylist() if self.reads.items else []
        batch.running = rows["running"].to_pylist()
        return batch, top


def _rec(ts: datetime, name: str, raw: str | None, item: str | None) -> EventRec:
    loads = orjson.loads
    return EventRec(ts, name, loads(raw) if raw else {}, loads(item) if item else None)


def _event_columns(con: Backend, q: Any, items: bool, extra: tuple[str, ...] = ()) -> Any:
    """person_key, ts, event, log_offset, props (JSON text) and, when rules filter on items,
    item: the properties of the item the event's ``item_id`` names (of several items with
    that id, the one of the smallest item_type, then source, as the batch compiler does)."""
    from rapport.conditions.to_ibis import json_text

    cols = {
        "person_key": q.person_key,
        "ts": q.ts,
        "event": q.event,
        "log_offset": q.log_offset,
        "props": q.properties.cast("string"),
        **{name: q[name] for name in extra},
    }
    if not items:
        return q.select(**cols)
    q = q.select(**cols, item_ref=json_text(q.properties["item_id"], False))
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
    warehouse on the next pass."""
    engine = engine_for(ws)
    try:
        return engine.run_pass(loaded)
    except BaseException:
        _ENGINES.pop(ws.warehouse.path, None)
        raise


def forget(ws: Workspace | None = None) -> None:
    """Drop the cached engine(s): the next pass starts a new one (as after a restart)."""
    if ws is None:
        _ENGINES.clear()
    else:
        _ENGINES.pop(ws.warehouse.path, None)
