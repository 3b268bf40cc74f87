"""The stage-2 core: rules judged per event and timers on event time, whatever feeds it.

The core knows nothing of where events and states come from. A *driver* feeds it each
person-keyed ``EventRec`` in log order (``feed``), moves the watermark (``advance``), applies
the providers' outputs (``flush``) and keeps a checkpoint of its own:

- the embedded driver (``rapport.stream.engine``) reads the warehouse past its
  ``stream_offset`` and loads a person's history from the warehouse on first sight;
- a scaled-out worker (``rapport.stream.worker``) reads a NATS JetStream partition and has a
  person's history only from its own checkpoint.

What the core owns:

- the rules of the providers (``refresh_rules``), a ``RuleIndex`` telling which rules an
  event can change (and, per rule, ``StreamRule.accepts``: a cheaper cut on the event's own
  properties), the merged ``Retention`` (how much history to keep) and ``Reads``;
- each person's ``PersonState`` in an LRU of ``max_persons``; a person not in memory is
  built by the driver's *history loader* ``loader(persons, ref) -> {person: state}``;
- the watermark (it only moves forward) and timers on event time: after judging a rule for a
  person, the rule's ``deadline`` goes on a heap; a timer fires when the watermark passes it,
  before any later event is applied;
- identity merges (``merge``): both states go, rules hear of the merged-away id, the survivor
  is judged again.

A rule is judged at ``max(event time, watermark, the person's latest event)``: the person's
"now" in event time, so a late event changes the answer of now, not of the past.
"""

from __future__ import annotations

import heapq
import importlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any, Protocol

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
from rapport.stream.state import EventRec, PersonState, Retention, RuleIndex

if TYPE_CHECKING:
    from rapport.conditions.to_stream import StreamRule
    from rapport.workspace import Workspace

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: builds the states of persons not in memory: ``loader(persons, ref)`` gives each person's
#: history of interest from ``ref`` (or earlier) on; a person with none gets an empty state
Loader = Callable[[set[int], datetime], dict[int, PersonState]]


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


def load_providers(paths: Iterable[str]) -> list[Provider]:
    """Providers by import path ("module:factory"; a factory takes no argument)."""
    out = []
    for path in paths:
        module, _, name = path.partition(":")
        out.append(getattr(importlib.import_module(module), name)())
    return out


@dataclass
class PassStats:
    events: int = 0  # events read (of interest to some rule)
    judged: int = 0  # rule evaluations
    timers: int = 0  # timers fired
    outputs: int = 0
    loaded: int = 0  # person states built by the loader
    offset: int = 0
    watermark: datetime | None = None


class Core:
    """Rules, person states, watermark and timers; fed by a driver (see the module doc)."""

    def __init__(
        self,
        ws: Workspace,
        providers: list[Provider],
        loader: Loader,
        *,
        lateness: timedelta = timedelta(0),
        max_persons: int = 100_000,
    ) -> None:
        self.ws = ws
        self.providers = providers
        self.loader = loader
        self.lateness = lateness
        self.max_persons = max_persons
        self.states: OrderedDict[int, PersonState] = OrderedDict()
        #: (deadline as POSIX seconds: cheap to compare, sequence, person, rule, deadline)
        self.timers: list[tuple[float, int, int, str, datetime]] = []
        self.due: dict[tuple[int, str], datetime] = {}
        self._seq = 0
        self.rules: dict[str, Rule] = {}
        self.owner: dict[str, Provider] = {}
        self.outputs: dict[str, list[Any]] = {}
        self.index = RuleIndex({})
        #: per event name: (key, rule, accepts) of the rules it can change
        self.routes: dict[str, list[tuple[str, Rule, Callable[[EventRec], bool] | None]]] = {}
        self.names: list[str] | None = []
        self.retention = Retention()
        self.reads = Reads()
        self.versions: list[Hashable] | None = None
        self.watermark = EPOCH
        self.stats = PassStats()
        #: a rule change keeps the states (a driver with no other source of history)
        self.keep_states = False

    # -- rules --------------------------------------------------------------------------------
    def refresh_rules(self) -> bool:
        """Rebuild the rules when a provider's version changed; True when they were (timers
        are then dropped, as they name rules, and states too unless ``keep_states``: compiled
        rules keep their memo in the states)."""
        versions = [p.version(self.ws) for p in self.providers]
        if versions == self.versions:
            return False
        self.rules, self.owner = {}, {}
        for provider in self.providers:
            for rule in provider.rules(self.ws):
                self.rules[rule.key] = rule
                self.owner[rule.key] = provider
        compiled = [r.compiled for r in self.rules.values()]
        self.index = RuleIndex({k: r.compiled.interest for k, r in self.rules.items()})
        self.routes = {}
        self.names = None if self.index.reads_all() else sorted(self.index.events())
        self.retention = reduce(Retention.merge, (c.retention for c in compiled), Retention())
        self.reads = reduce(Reads.merge, (r.reads for r in self.rules.values()), Reads())
        self.versions = versions
        if self.keep_states:  # the states are the only history: keep them, forget the memos
            for state in self.states.values():
                state.reindex()
        else:
            self.states.clear()
        self.timers, self.due = [], {}
        return True

    def wants(self, event: str) -> bool:
        """Whether some rule reads ``event`` (others only move the watermark)."""
        return bool(self.index.rules_for(event))

    @property
    def horizon(self) -> timedelta:
        return max((r.horizon for r in self.rules.values()), default=timedelta(0))

    # -- events and time ----------------------------------------------------------------------
    def feed(self, person: int, rec: EventRec, running: datetime) -> None:
        """Apply one event of interest; ``running`` is the latest event time the log has
        shown up to and including it (what the watermark has seen). Timers due before the
        new watermark fire first."""
        w = running - self.lateness
        if w > self.watermark:
            timers = self.timers
            if timers and timers[0][0] < w.timestamp():  # the common case: none due
                self._fire(w, inclusive=False)
            self.watermark = w
        states = self.states
        state = states.get(person)
        if state is None:
            self._load({person}, rec.ts)
            state = states[person]
        states.move_to_end(person)  # least recently used first
        state.add(rec)
        last = state.events[-1].ts  # not before ``rec``'s
        at = last if last > self.watermark else self.watermark
        routes = self.routes.get(rec.event)
        if routes is None:
            routes = self.routes[rec.event] = self._routes(rec.event)
        judged = 0
        for key, rule, accepts in routes:
            if accepts is not None and not accepts(rec):
                continue
            judged += 1
            out = rule.on_event(state, at, rec)
            if out is not None:
                self._emit(key, out)
            self._schedule(state, key, rule, at)
        self.stats.judged += judged
        self.stats.events += 1
        # kept from the watermark's view, not ``at``'s: a rule skipped by ``accepts`` still
        # has its timers, due after the watermark, and they may need these events again
        self.retention.prune(state, self.watermark)

    def _routes(self, event: str) -> list[tuple[str, Rule, Callable[[EventRec], bool] | None]]:
        keys: list[str] = self.index.rules_for(event)  # type: ignore[assignment]
        return [(k, self.rules[k], self.rules[k].compiled.accepts) for k in keys]

    def advance(self, watermark: datetime) -> None:
        """Move the watermark to ``watermark`` (if later) and fire the timers due at or
        before it."""
        if watermark > self.watermark:
            self.watermark = watermark
        self._fire(self.watermark, inclusive=True)

    # -- timers -------------------------------------------------------------------------------
    def _schedule(self, state: PersonState, key: str, rule: Rule, at: datetime) -> None:
        deadline = rule.compiled.deadline
        if deadline is None:
            return
        when = deadline(state, at)
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

    def persons_due(self, limit: datetime) -> set[int]:
        """Persons with a timer due at or before ``limit`` whose state is not in memory."""
        bound = limit.timestamp()
        return {t[2] for t in self.timers if t[0] <= bound and t[2] not in self.states}

    def restore(self, persons: Iterable[int]) -> None:
        """Judge every rule for ``persons`` at the watermark: rebuilds their timers (a new
        engine) and catches up with a definition the batch path has not applied yet."""
        persons = set(persons)
        if not persons:
            return
        self._load(persons, self.watermark)
        for person in persons:
            self.judge_all(self.states[person], self.watermark)

    def judge_all(self, state: PersonState, when: datetime) -> None:
        at = max(when, state.events[-1].ts) if state.events else when
        for key, rule in self.rules.items():
            self._emit(key, rule.on_timer(state, at))
            self._schedule(state, key, rule, at)

    # -- merges -------------------------------------------------------------------------------
    def merge(self, merges: list[tuple[int, int, int]]) -> None:
        """``(seq, survivor, merged_away)`` rows: both states go (the history loader gives the
        merged history), rules hear of the merged-away id, the survivor is judged again."""
        gone: set[int] = set()
        survivors: set[int] = set()
        for _seq, survivor, away in merges:
            gone.add(away)
            survivors.add(survivor)
            self.states.pop(survivor, None)
            self.states.pop(away, None)
            for key, rule in self.rules.items():
                self._emit(key, rule.on_merge(survivor, away, self.watermark))
        for slot in [s for s in self.due if s[0] in gone]:
            del self.due[slot]
        self.restore(survivors - gone)

    def drop(self, person: int) -> None:
        """Forget ``person`` (merged into a person another core holds): state and timers."""
        self.states.pop(person, None)
        for slot in [s for s in self.due if s[0] == person]:
            del self.due[slot]

    # -- outputs and states -------------------------------------------------------------------
    def _emit(self, key: str, output: Any | None) -> None:
        if output is not None:
            self.outputs.setdefault(self.owner[key].name, []).append(output)
            self.stats.outputs += 1

    def apply_outputs(self) -> int:
        """Hand each provider the outputs gathered since the last call; how many."""
        n = 0
        for provider in self.providers:
            outputs = self.outputs.pop(provider.name, None)
            if outputs:
                provider.apply(self.ws, outputs)
                n += len(outputs)
        return n

    def evict(self) -> None:
        while len(self.states) > self.max_persons:
            self.states.popitem(last=False)

    def _load(self, persons: Iterable[int], ref: datetime) -> None:
        keys = set(persons)
        if not keys:
            return
        self.stats.loaded += len(keys)
        built = self.loader(keys, ref)
        for key in sorted(keys):
            state = built.get(key)
            if state is None:
                state = PersonState(key)
            else:
                state.reindex()
            self.states[key] = state
