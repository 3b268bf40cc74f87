"""A person's in-memory state on the stream path: what the per-event predicate and the
reference interpreter evaluate conditions against (values already typed, items looked up).

The state stays small on purpose: events are kept in time order, indexed by event name (a
behaviour leaf reads only its own event's list and finds its window by bisection), and pruned
to what the rules need (``Retention``: a look-back for every event, longer ones for named
events, e.g. a year of orders beside an hour of views). ``RuleIndex`` tells which rules an
incoming event can change at all, so that most events touch no rule (DESIGN.md, Sequences).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort_right
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

import msgspec

_ts = attrgetter("ts")


class EventRec(msgspec.Struct, array_like=True, gc=False):
    """One event of the person: ``item`` is the properties of the item its ``item_id`` names;
    ``id`` is the warehouse's ``event_id`` (what a lead cites as evidence and dedupes on).

    A msgspec struct: a worker's checkpoint encodes the states' events as they are, and the
    garbage collector does not walk them (they hold no cycles)."""

    ts: datetime
    event: str
    props: dict[str, Any] = msgspec.field(default_factory=dict)
    item: dict[str, Any] | None = None
    id: str | None = None


@dataclass(slots=True)
class PersonState:
    """``segments`` maps a segment to its buckets (``None`` for an audience membership).

    ``events`` is owned by the state once it is built: it is sorted by time on construction and
    changed only through ``add`` / ``prune``, which keep the per-event-name index in step (a
    list changed behind the state's back leaves the index stale; call ``reindex`` then).

    ``memo`` holds what compiled rules carry from one evaluation to the next (a sequence's
    automaton, a filtered behaviour leaf's matching events), valid while ``epoch`` stands:
    ``appended`` counts events added in time order, so a rule knows which are new; an event
    older than the latest rewrites history (a new epoch, and the rules start over once).
    ``blank``: the epoch began with no events, so every event of it came through ``add`` in
    time order, and a rule that has no memo yet has been shown every event it accepts: it can
    start from nothing instead of reading the history again.
    ``trimmed``: a per-event prune took events out of the middle of ``events``; a memo that
    reads the last ``appended - mark`` events as its new ones is stale when its ``mark`` is
    below ``trimmed`` (the events it has not seen yet are no longer all at the end)."""

    person: int
    attrs: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, set[str]] = field(default_factory=dict)
    segments: dict[str, set[str | None]] = field(default_factory=dict)
    events: list[EventRec] = field(default_factory=list)
    by_event: dict[str, list[EventRec]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    appended: int = field(init=False, repr=False, compare=False, default=0)
    epoch: int = field(init=False, repr=False, compare=False, default=0)
    blank: bool = field(init=False, repr=False, compare=False, default=True)
    memo: dict[object, Any] = field(init=False, repr=False, compare=False, default_factory=dict)
    trimmed: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        """Sort the events by time (stable: equal times keep their arrival order), rebuild
        the per-name index."""
        self.events.sort(key=_ts)
        self.epoch += 1
        self.memo.clear()
        self.blank = not self.events
        self.by_event = {}
        for rec in self.events:
            self.by_event.setdefault(rec.event, []).append(rec)

    def add(self, rec: EventRec) -> None:
        """Insert in time order (after events of the same time: arrival order breaks ties)."""
        events = self.events
        if not events or events[-1].ts <= rec.ts:
            events.append(rec)
            self.appended += 1
        else:
            insort_right(events, rec, key=_ts)
            self.epoch += 1
            self.memo.clear()
            self.blank = False
        recs = self.by_event.get(rec.event)
        if recs is None:
            self.by_event[rec.event] = [rec]
        elif recs[-1].ts <= rec.ts:  # the common case: in time order
            recs.append(rec)
        else:
            insort_right(recs, rec, key=_ts)

    def prune(self, before: datetime, longer: Mapping[str, datetime | None] | None = None) -> int:
        """Forget events older than ``before`` (the events ``longer`` names: older than their
        own time there, None: none of them); the number forgotten."""
        if longer:
            return self._prune_each(before, longer)
        events = self.events
        cut = bisect_left(events, before, key=_ts)
        if not cut:
            return 0
        del events[:cut]
        if len(events) <= 2:  # the common case on a stream: only the newest events are left
            by_event: dict[str, list[EventRec]] = {}
            for rec in events:
                by_event.setdefault(rec.event, []).append(rec)
            self.by_event = by_event
            return cut
        for name in list(self.by_event):
            recs = self.by_event[name]
            if recs[0].ts >= before:
                continue
            k = bisect_left(recs, before, key=_ts)
            if k == len(recs):
                del self.by_event[name]
            elif k:
                del recs[:k]
        return cut

    def _prune_each(self, before: datetime, longer: Mapping[str, datetime | None]) -> int:
        """``prune`` with per-event times: cut each name's list, then drop the same events
        from ``events`` (from its middle, too: ``trimmed`` tells the memos)."""
        by_event = self.by_event
        gone: set[int] = set()
        for name in list(by_event):
            cut = longer.get(name, before)  # None: all of it kept
            recs = by_event[name]
            if cut is None or recs[0].ts >= cut:
                continue
            k = bisect_left(recs, cut, key=_ts)
            gone.update(map(id, recs[:k]))
            if k == len(recs):
                del by_event[name]
            else:
                del recs[:k]
        if not gone:
            return 0
        kept: list[EventRec] = []
        after = 0  # the kept events after the last one forgotten
        for rec in self.events:
            if id(rec) in gone:
                after = 0
            else:
                kept.append(rec)
                after += 1
        self.events[:] = kept
        self.trimmed = max(self.trimmed, self.appended - after)
        return len(gone)

    def of(self, event: str) -> list[EventRec]:
        """The person's ``event`` events in time order (empty list: none; do not mutate)."""
        return self.by_event.get(event, _EMPTY)

    def latest(self, event: str, as_of: datetime) -> datetime | None:
        """Time of the person's latest ``event`` at or before ``as_of`` (None: never)."""
        recs = self.by_event.get(event)
        if not recs:
            return None
        k = bisect_right(recs, as_of, key=_ts)
        return recs[k - 1].ts if k else None


_EMPTY: list[EventRec] = []


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a person's history the rules can still need.

    ``lookback`` is relative to the evaluation time and applies to every event (``None``: all
    history — a rule with no window, or an absence rule judged over all time); ``since`` an
    absolute floor (rules with a fixed start); ``anchors`` the ``since_event`` events whose
    latest occurrence (and what follows it) must be kept. ``events``: (name, look-back) pairs
    of events kept longer than ``lookback`` (``None``: all of that event's history), so that a
    year of orders does not keep a year of views; normalised to one pair per name, each
    longer than ``lookback`` (``longer`` is the same as a dict). ``Retention()`` needs nothing
    (attribute, tag, segment rules)."""

    lookback: timedelta | None = timedelta(0)
    since: datetime | None = None
    anchors: frozenset[str] = frozenset()
    events: frozenset[tuple[str, timedelta | None]] = frozenset()
    longer: dict[str, timedelta | None] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if not self.events:
            return
        longer: dict[str, timedelta | None] = {}
        for name, back in self.events:
            if name in longer:
                old = longer[name]
                back = None if old is None or back is None else max(old, back)
            longer[name] = back
        base = self.lookback
        keep = {n: b for n, b in longer.items() if b is None or (base is not None and b > base)}
        longer = keep if base is not None else {}
        object.__setattr__(self, "longer", longer)
        object.__setattr__(self, "events", frozenset(longer.items()))

    @classmethod
    def everything(cls) -> Retention:
        return cls(lookback=None)

    @property
    def longest(self) -> timedelta | None:
        """The longest look-back of any event (None: some event keeps all its history)."""
        if self.lookback is None or not self.longer:
            return self.lookback
        longest = self.lookback
        for back in self.longer.values():
            if back is None:
                return None
            longest = max(longest, back)
        return longest

    def merge(self, other: Retention) -> Retention:
        """What both need (the longer look-back, per event too; the earlier floor; all
        anchors)."""
        if self.lookback is None or other.lookback is None:
            lookback = None
        else:
            lookback = max(self.lookback, other.lookback)
        since = [s for s in (self.since, other.since) if s is not None]
        return Retention(
            lookback,
            min(since) if since else None,
            self.anchors | other.anchors,
            self.events | other.events,  # one pair per name again: see ``__post_init__``
        )

    def keep_since(self, state: PersonState, as_of: datetime) -> datetime | None:
        """The oldest event time still needed at ``as_of`` or later, of any event (None: keep
        everything); ``state.prune(keep_since(...))`` then changes no rule's answer (``prune``
        below also forgets the events not kept longer)."""
        lookback = self.longest if self.longer else self.lookback
        if lookback is None:
            return None
        return self._floor(state, as_of, as_of - lookback)

    def _floor(self, state: PersonState, as_of: datetime, floor: datetime) -> datetime:
        if self.since is not None:
            floor = min(floor, self.since)
        for name in self.anchors:
            at = state.latest(name, as_of)
            if at is not None:
                floor = min(floor, at)
        return floor

    def prune(self, state: PersonState, as_of: datetime) -> int:
        """Forget the events no rule needs at ``as_of`` or later; the number forgotten."""
        if self.lookback is None:
            return 0
        events = state.events
        if not events:
            return 0
        floor = as_of - self.lookback
        if self.since is not None or self.anchors:
            floor = self._floor(state, as_of, floor)
        if not self.longer:  # the common case
            return state.prune(floor) if events[0].ts < floor else 0
        cuts = {n: None if b is None else min(floor, as_of - b) for n, b in self.longer.items()}
        return state.prune(floor, cuts)

    def where(self, ts: Any, event: Any, ref: datetime) -> Any | None:
        """For a loader with no state at hand: a filter over an events table's ``ts`` and
        ``event`` columns (ibis expressions) keeping what the rules can need at ``ref`` or
        later; None: all history (no look-back, or anchors: their latest time is not known)."""
        if self.lookback is None or self.anchors:
            return None
        floor = ref - self.lookback
        if self.since is not None:
            floor = min(floor, self.since)
        keep = ts >= floor
        for name, back in sorted(self.longer.items(), key=lambda kv: kv[0]):
            named = event == name
            keep = keep | (named if back is None else named & (ts >= min(floor, ref - back)))
        return keep


class RuleIndex:
    """Which rules an event can change: built from each rule's event names of interest
    (``None``: every event, e.g. a rule with ``EventIs`` on any name is not; ``set()``: no
    event — attribute/tag/segment rules, re-evaluated when those change instead)."""

    def __init__(self, interests: Mapping[Hashable, Iterable[str] | None]) -> None:
        self._by_event: dict[str, list[Hashable]] = {}
        self._any: list[Hashable] = []
        for rule, names in interests.items():
            if names is None:
                self._any.append(rule)
                continue
            for name in names:
                self._by_event.setdefault(name, []).append(rule)

    def rules_for(self, event: str) -> list[Hashable]:
        """The rules to re-evaluate when ``event`` arrives (most events: none)."""
        named = self._by_event.get(event)
        if not self._any:
            return named or []
        return [*(named or ()), *self._any]

    def events(self) -> set[str]:
        """Every event name some rule reads (others need not be kept in a state at all)."""
        return set(self._by_event)

    def reads_all(self) -> bool:
        return bool(self._any)
