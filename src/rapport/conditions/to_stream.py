"""The stream compiler: a condition becomes a Python predicate over one person's state.

``compile`` walks the tree once and returns a tree of closures, so evaluating a rule on an
event costs no interpretation. A behaviour leaf reads only its event's time-ordered list and
finds its window by bisection: with ``where`` filters, the list of matching events is kept in
the state's memo and fed only the events added since (each event is filtered once; a count is
then two bisections, other measures a scan of the window's matches). A sequence is a small
automaton carried in the memo the same way; ``EventIs`` looks at the event being processed.
An event older than the person's latest starts the memo over (``PersonState.epoch``). The
semantics are the common ones of the two compilers: the reference interpreter
(``rapport.conditions.reference``, whose typing helpers are used here) is the arbiter, and the
tests compare both on random trees and states, also fed one event at a time.

Sequences (DESIGN.md, "Sequences"): ``A then B then C within T`` matches when some chain with
strictly increasing times fits in ``T`` (and no ``excluding`` event falls strictly inside it).
The automaton keeps, per step, only the latest start among the partial matches that reached it
— with events read in time order (equal times together), a later start dominates — so its
state is one timestamp per step however many partial matches there are, and the answer for a
window is whether the latest complete chain starts inside it. ``A then not B within T`` holds
once some A has gone ``T`` without a B (one pass over the window's A and B events); until then
``next_deadline`` says when to look again (a timer on event time), as it does for windows that
will let an event go and for dates coming into range.

Patterns (strict ``next`` steps, counted steps, step references) and lead-rule triggers run on
``_Pattern``: per step, one partial match per distinct combination of referred-to values (the
latest start dominates), read one time group at a time. ``compile_trigger`` turns an ``event``
or a window-less sequence into a ``Trigger`` reporting ``Match``es (docs/conditions.md,
"Trigger matches"); ``replay`` reads a whole history with it (batch backtests).
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from operator import attrgetter
from typing import Any, Protocol

from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    RELATIVE,
    SYSTEM_EVENTS,
    And,
    Attr,
    Compare,
    Condition,
    Did,
    Duration,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Ref,
    Sequence,
    Step,
    Window,
)
from rapport.conditions.reference import (
    Env,
    Match,
    atoms,
    capture_fields,
    check_sequence,
    check_trigger,
    condition_value,
    field_value,
    is_plain,
    match_key,
    next_anniversary,
    numeric_filter,
    order,
    prop_number,
    prop_text,
    ref_compare,
)
from rapport.stream.state import EventRec, PersonState, Retention

__all__ = [
    "Match",
    "Predicate",
    "Trigger",
    "compile_trigger",
    "StreamRule",
    "compile",
    "compile_rule",
    "events_of_interest",
    "next_deadline",
    "replay",
    "retention",
]


class Predicate(Protocol):
    def __call__(
        self, state: PersonState, as_of: datetime, event: EventRec | None = None
    ) -> bool: ...


#: the internal form: every closure takes (state, as_of, current event) positionally
_Pred = Callable[[PersonState, datetime, EventRec | None], bool]
#: when a leaf's answer may next change with time alone (None: never)
_Deadline = Callable[[PersonState, datetime], datetime | None]
_Test = Callable[[Any], bool]
_RecTest = Callable[[EventRec], bool]
_Range = Callable[[PersonState, datetime, list[EventRec]], tuple[int, int]]

_MICRO = timedelta(microseconds=1)
_ORDER: dict[Op, Callable[[Any, Any], bool]] = {
    Op.eq: operator.eq,
    Op.ne: operator.ne,
    Op.lt: operator.lt,
    Op.le: operator.le,
    Op.gt: operator.gt,
    Op.ge: operator.ge,
}


@dataclass(frozen=True, slots=True)
class StreamRule:
    """A rule compiled for the stream engine: the predicate, its timer, the events that can
    change it (``None``: any) and the history it needs. ``accepts`` is a cheaper cut: an event
    of interest it rejects changes nothing the rule's timers do not already cover, so the
    engine need not judge the rule at all (``None``: judge on every event of interest)."""

    predicate: Predicate
    deadline: _Deadline | None  # None: it never changes with time alone (no timer)
    interest: frozenset[str] | None
    retention: Retention
    accepts: _RecTest | None = None


def compile(cond: Condition, *, attr_types: dict[str, str] | None = None) -> Predicate:
    """The predicate ``(state, as_of, event=None) -> bool`` of ``cond``; built once per rule.
    A condition the stream cannot evaluate raises ``ConditionError`` here, not per event."""
    return compile_rule(cond, attr_types=attr_types).predicate


def compile_rule(cond: Condition, *, attr_types: dict[str, str] | None = None) -> StreamRule:
    """Everything the stream engine keeps for one rule."""
    c = _Compiler(attr_types or {})
    root = c.pred(cond, "$")
    deadline = c.deadline(cond)

    def predicate(state: PersonState, as_of: datetime, event: EventRec | None = None) -> bool:
        return root(state, as_of, event)

    interest = events_of_interest(cond)
    return StreamRule(
        predicate,
        deadline,
        None if interest is None else frozenset(interest),
        retention(cond),
    )


def next_deadline(
    cond: Condition,
    state: PersonState,
    as_of: datetime,
    *,
    attr_types: dict[str, str] | None = None,
) -> datetime | None:
    """The earliest event time after ``as_of`` at which ``cond`` may change for this person
    without a new event (an absence rule maturing, an event leaving a window, a date attribute
    coming into range); None: only a new event or a new profile can change it. Conservative:
    at the deadline the answer may turn out unchanged (ask again then). Engines keep
    ``compile_rule(...).deadline`` rather than recompiling through this."""
    return _Compiler(attr_types or {}).deadline(cond)(state, as_of)


def events_of_interest(cond: Condition, *, negated: bool = False) -> set[str] | None:
    """The event names whose arrival can change ``cond`` (behaviour leaves, with their
    ``since_event`` anchors, and ``EventIs``); ``None``: any event — an ``EventIs`` under a
    ``Not`` holds for every other event. Attribute, tag and segment leaves add nothing: they
    change with the profile, not with an event."""
    match cond:
        case And(all=parts) | Or(any=parts):
            init: set[str] | None = set()
            found = (events_of_interest(p, negated=negated) for p in parts)
            return reduce(_union, found, init)
        case Not(cond=inner):
            return events_of_interest(inner, negated=not negated)
        case Did(event=name, window=w):
            return {name, *_anchor(w)}
        case EventIs(event=name):
            return None if negated else {name}
        case Sequence():
            if any(s.next for s in cond.steps):
                return None  # any event can break a strict contiguity
            names = {s.event for s in cond.steps} | _anchor(cond.window)
            for extra in (cond.excluding, cond.then_not):
                if extra is not None:
                    names.add(extra.event)
            return names
        case _:
            return set()


def retention(cond: Condition) -> Retention:
    """The history ``cond`` can still need (``Retention.keep_since`` turns it into a prune
    time): a window's look-back; all history for behaviour with no window (its answer at any
    later time may depend on any past event)."""
    match cond:
        case And(all=parts) | Or(any=parts):
            return reduce(Retention.merge, (retention(p) for p in parts), Retention())
        case Not(cond=inner):
            return retention(inner)
        case Did(window=w) | Sequence(window=w):
            return _window_retention(w)
        case _:
            return Retention()


def _union(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    return None if a is None or b is None else a | b


def _anchor(w: Window) -> set[str]:
    return {w.since_event} if w.since_event else set()


def _window_retention(w: Window) -> Retention:
    if w.last is not None:
        return Retention(lookback=timedelta(seconds=w.last.seconds()))
    if w.since_event is not None:
        return Retention(anchors=frozenset({w.since_event}))
    if w.start is not None:
        return Retention(since=_utc(w.start))
    return Retention.everything()


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _missing(v: Any) -> bool:
    return v is None or v == ""


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


# -- event values: as numbers when the filter's value is a number, otherwise as text ------------
def _number(v: Any) -> float | None:
    """``prop_number`` with a fast path for JSON numbers."""
    t = type(v)
    if t is int:
        return float(v)
    if t is float:
        return v if v == v else None  # NaN is no number
    return prop_number(v)


def _text(v: Any) -> str | None:
    """``prop_text`` with a fast path for strings."""
    return v if type(v) is str else prop_text(v)


def _ev_test(c: Compare, path: str) -> _Test:
    """The test of a present (not None) event or item value, with the reference's typing:
    ``prop_number`` against a numeric filter value, ``prop_text`` otherwise."""
    op, want = c.op, c.value
    if op in RELATIVE:
        raise ConditionError(f"`{op}` compares a person's date, not an event property", path)
    if op is Op.is_set:
        return lambda v: True
    numeric = numeric_filter(c) and op not in (Op.contains, Op.starts_with)
    conv: Callable[[Any], Any] = _number if numeric else _text
    one: Callable[[Any], Any] = float if numeric else prop_text
    w: Any = [one(x) for x in want] if isinstance(want, list) else one(want)
    if w is None or (isinstance(w, list) and None in w):
        return lambda v: False
    if op in _ORDER:
        cmp = _ORDER[op]
        return lambda v: (h := conv(v)) is not None and cmp(h, w)
    if op is Op.between:
        lo, hi = w
        return lambda v: (h := conv(v)) is not None and lo <= h <= hi
    if op is Op.in_:
        options = frozenset(w)
        return lambda v: (h := conv(v)) is not None and h in options
    if op is Op.not_in:
        options = frozenset(w)
        return lambda v: (h := conv(v)) is not None and h not in options
    if op is Op.contains:
        return lambda v: (h := _text(v)) is not None and w in h
    if op is Op.starts_with:
        return lambda v: (h := _text(v)) is not None and h.startswith(w)
    raise ConditionError(f"`{op}` is not supported here", path)  # pragma: no cover


def _where(c: Compare, path: str) -> _RecTest:
    """One filter on an event: the value's lookup and its test in one closure."""
    key = c.field
    if key.startswith("item."):
        key = key[5:]
        if c.op is Op.not_set:
            return lambda r: r.item is None or r.item.get(key) is None
        test = _ev_test(c, path)

        def item(r: EventRec) -> bool:
            it = r.item
            return it is not None and (v := it.get(key)) is not None and test(v)

        return item
    if c.op is Op.not_set:
        return lambda r: r.props.get(key) is None
    test = _ev_test(c, path)
    return lambda r: (v := r.props.get(key)) is not None and test(v)


def _filter(where: list[Compare], path: str) -> _RecTest | None:
    """One test of an event against all ``where`` filters (None: no filter)."""
    tests = [_where(c, f"{path}[{i}]") for i, c in enumerate(where)]
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda r: a(r) and b(r)
    return lambda r: all(t(r) for t in tests)


def _step(s: Step | EventIs, path: str) -> _RecTest:
    name, f = s.event, _filter(s.where, f"{path}.where")
    if f is None:
        return lambda r: r.event == name
    return lambda r: r.event == name and f(r)


# -- windows ------------------------------------------------------------------------------------
def _range(w: Window) -> _Range:
    """Where the window's events sit in a time-ordered list: ``recs[lo:hi]`` (``ts <= as_of``
    always)."""
    if w.last is not None:
        span = timedelta(seconds=w.last.seconds())

        def last(s: PersonState, as_of: datetime, recs: list[EventRec]) -> tuple[int, int]:
            return bisect_right(recs, as_of - span, key=_ts), bisect_right(recs, as_of, key=_ts)

        return last
    if w.since_event is not None:
        anchor = w.since_event

        def since(s: PersonState, as_of: datetime, recs: list[EventRec]) -> tuple[int, int]:
            at = s.latest(anchor, as_of)
            if at is None:
                return 0, 0
            return bisect_right(recs, at, key=_ts), bisect_right(recs, as_of, key=_ts)

        return since
    start = None if w.start is None else _utc(w.start)
    end = None if w.end is None else _utc(w.end)

    def between(s: PersonState, as_of: datetime, recs: list[EventRec]) -> tuple[int, int]:
        hi = bisect_right(recs, as_of, key=_ts)
        if end is not None:
            hi = min(hi, bisect_left(recs, end, key=_ts))
        return (0 if start is None else bisect_left(recs, start, key=_ts)), hi

    return between


_ts = attrgetter("ts")


# -- measures -----------------------------------------------------------------------------------
def _measure(d: Did) -> Callable[[list[EventRec]], float | None]:
    """The measure of the window's matching events; None: undefined (avg/min/max of nothing).
    The property is an event property (``prop_number`` / ``prop_text`` typing)."""
    if d.agg == "count":
        return len
    prop = d.property or ""
    if d.agg == "distinct":
        return lambda recs: len({_text(v) for r in recs if (v := r.props.get(prop)) is not None})

    def numbers(recs: list[EventRec]) -> list[float]:
        return [n for r in recs if (n := _number(r.props.get(prop))) is not None]

    if d.agg == "sum":
        return lambda recs: sum(numbers(recs))
    if d.agg == "avg":
        return lambda recs: sum(xs) / len(xs) if (xs := numbers(recs)) else None
    fold = min if d.agg == "min" else max
    return lambda recs: fold(xs) if (xs := numbers(recs)) else None


class _Compiler:
    def __init__(self, attr_types: dict[str, str]) -> None:
        self.attr_types = attr_types

    # -- predicates -----------------------------------------------------------------------------
    def pred(self, cond: Condition, path: str) -> _Pred:
        match cond:
            case And(all=parts):
                ps = [self.pred(p, f"{path}.all[{i}]") for i, p in enumerate(parts)]
                if len(ps) == 1:
                    return ps[0]
                return lambda s, t, e: all(p(s, t, e) for p in ps)
            case Or(any=parts):
                ps = [self.pred(p, f"{path}.any[{i}]") for i, p in enumerate(parts)]
                if len(ps) == 1:
                    return ps[0]
                return lambda s, t, e: any(p(s, t, e) for p in ps)
            case Not(cond=inner):
                p = self.pred(inner, f"{path}.cond")
                return lambda s, t, e: not p(s, t, e)
            case Attr():
                return self.attr(cond, path)
            case HasTag(tag=tag, values=None):
                return lambda s, t, e: bool(s.tags.get(tag))
            case HasTag(tag=tag, values=values):
                wanted = frozenset(values or ())
                return lambda s, t, e: not wanted.isdisjoint(s.tags.get(tag, ()))
            case InSegment(segment=seg, bucket=None):
                return lambda s, t, e: bool(s.segments.get(seg))
            case InSegment(segment=seg, bucket=bucket):
                return lambda s, t, e: bucket in s.segments.get(seg, ())
            case Did():
                return self.did(cond, path)
            case Sequence():
                return self.sequence(cond, path)
            case EventIs():
                test = _step(cond, path)
                return lambda s, t, e: e is not None and test(e)
        raise ConditionError(f"unknown condition {type(cond).__name__}", path)  # pragma: no cover

    def attr(self, a: Attr, path: str) -> _Pred:
        name, op, typ = a.field, a.op, self.attr_types.get(a.field, "string")
        if op is Op.not_set:
            return lambda s, t, e: _missing(s.attrs.get(name))
        test = self.attr_test(a, typ, path)

        def attr(s: PersonState, t: datetime, e: EventRec | None) -> bool:
            v = s.attrs.get(name)
            return not _missing(v) and test(v, t)

        return attr

    def attr_test(self, a: Attr, typ: str, path: str) -> Callable[[Any, datetime], bool]:
        """The test of a present, typed attribute value at ``as_of`` (the condition's value
        typed once, here: one that is not of the attribute's type is an error)."""
        op, want = a.op, a.value
        if op is Op.is_set:
            return lambda v, t: True
        if op in RELATIVE:
            if typ != "datetime":
                raise ConditionError(f"`{op}` needs a datetime attribute", path)
            assert isinstance(want, Duration)
            secs = want.seconds()
            span = timedelta(seconds=secs)
            if op is Op.anniversary_in_next:

                def anniversary(v: datetime, t: datetime) -> bool:
                    today = t.astimezone(UTC).date()
                    days = (next_anniversary(v.month, v.day, today) - today).days
                    return days * 86400 < secs

                return anniversary
            if op is Op.in_last:
                return lambda v, t: t - span < v <= t
            return lambda v, t: t <= v < t + span
        if op in (Op.contains, Op.starts_with) and typ != "string":
            raise ConditionError(f"`{op}` needs a text attribute", path)
        if isinstance(want, list):
            w: Any = [condition_value(x, typ, path) for x in want]
        else:
            w = condition_value(want, typ, path)
        if op in _ORDER:
            cmp = _ORDER[op]
            return lambda v, t: cmp(v, w)
        if op is Op.between:
            lo, hi = w
            return lambda v, t: lo <= v <= hi
        if op is Op.in_:
            return lambda v, t: v in w
        if op is Op.not_in:
            return lambda v, t: v not in w
        if op is Op.contains:
            return lambda v, t: w in v
        if op is Op.starts_with:
            return lambda v, t: v.startswith(w)
        raise ConditionError(f"`{op}` is not supported on attributes", path)  # pragma: no cover

    def did(self, d: Did, path: str) -> _Pred:
        name, rng, f = d.event, _range(d.window), _filter(d.where, f"{path}.where")
        measure, cmp, threshold = _measure(d), _ORDER[d.op], d.threshold
        of: Callable[[PersonState], list[EventRec]] = (
            operator.methodcaller("of", name) if f is None else _matches(name, f)
        )
        if d.agg == "count":  # "did X n times": two bisections in the matching events

            def count(s: PersonState, t: datetime, e: EventRec | None) -> bool:
                lo, hi = rng(s, t, of(s))
                return cmp(max(hi - lo, 0), threshold)

            return count

        def did(s: PersonState, t: datetime, e: EventRec | None) -> bool:
            recs = of(s)
            lo, hi = rng(s, t, recs)
            m = measure(recs[lo:hi])
            return m is not None and cmp(m, threshold)

        return did

    def sequence(self, q: Sequence, path: str) -> _Pred:
        check_sequence(q, path)
        if not is_plain(q):
            return _pattern_pred(q, path)
        gather = _gatherer(q)
        within = timedelta(seconds=q.within.seconds())
        if q.then_not is not None:
            first = _step(q.steps[0], f"{path}.steps[0]")
            absent = _step(q.then_not, f"{path}.then_not")

            def then_not(s: PersonState, t: datetime, e: EventRec | None) -> bool:
                return _absence(gather(s, t), first, absent, within, t)[0]

            return then_not
        plan: dict[str, list[tuple[int, _RecTest | None]]] = {}
        for j in reversed(range(len(q.steps))):  # last step first: see ``_feed``
            st = q.steps[j]
            plan.setdefault(st.event, []).append((j, _filter(st.where, f"{path}.steps[{j}].where")))
        x = q.excluding
        excl = None if x is None else (x.event, _filter(x.where, f"{path}.excluding.where"))
        names = frozenset(plan) | ({x.event} if x is not None else set())
        last = len(q.steps) - 1
        w = q.window
        span = None if w.last is None else timedelta(seconds=w.last.seconds())
        lo_b = None if w.start is None else _utc(w.start)
        hi_b = None if w.end is None else _utc(w.end)
        token = object()  # this leaf's automaton in each state's memo

        def feed(evs: list[EventRec], best: list[datetime | None], done: datetime | None) -> Any:
            return _feed(evs, plan, last, excl, within, best, done)

        def sequence(s: PersonState, t: datetime, e: EventRec | None) -> bool:
            evs = s.events
            if not evs:
                return False
            if evs[-1].ts > t:  # judged in the past: one pass over the window's events
                return feed(gather(s, t), [None] * (last + 1), None)[1] is not None
            # the automaton carried over from the last evaluation, fed the new events
            m = s.memo.get(token)
            best: list[datetime | None]
            if (
                m is None
                or m[0] != s.epoch
                or m[1] - m[2] < s.trimmed  # a per-event prune cut into the unread events
                or (count := s.appended - m[1] + m[2]) > len(evs)
            ):
                best, done, tail = [None] * (last + 1), None, evs
            else:
                best, done, tail = m[3], m[4], evs[len(evs) - count :]
            final = tail[-1].ts
            held = 0  # the events at the latest time stay unfed: one at the same time may come
            while held < len(tail) and tail[-1 - held].ts == final:
                held += 1
            rel = [
                r
                for r in tail
                if r.event in names
                and (lo_b is None or r.ts >= lo_b)
                and (hi_b is None or r.ts < hi_b)
            ]
            cut = len(rel)
            while cut and rel[cut - 1].ts == final:
                cut -= 1
            best, done = feed(rel[:cut], best, done)
            s.memo[token] = (s.epoch, s.appended, held, best, done)
            done = feed(rel[cut:], best[:], done)[1]
            if done is None:
                return False
            if span is not None:
                return done > t - span
            if w.since_event is not None:
                anchor = s.latest(w.since_event, t)
                return anchor is not None and done > anchor
            return True

        return sequence

    # -- deadlines ------------------------------------------------------------------------------
    def deadline(self, cond: Condition) -> _Deadline:
        """When ``cond`` may next change with time alone (see ``next_deadline``)."""
        match cond:
            case And(all=parts) | Or(any=parts):
                ds = [self.deadline(p) for p in parts]
                return lambda s, t: _earliest(d(s, t) for d in ds)
            case Not(cond=inner):
                return self.deadline(inner)
            case Attr(op=op) if op in RELATIVE:
                return self.attr_deadline(cond)
            case Did(window=w) if w.last is not None:
                name, f = cond.event, _filter(cond.where, "$")
                return _leaving(w, lambda s: s.of(name), f)
            case Sequence():
                return self.sequence_deadline(cond)
        return lambda s, t: None

    def attr_deadline(self, a: Attr) -> _Deadline:
        name, want = a.field, a.value
        assert isinstance(want, Duration)
        span = timedelta(seconds=want.seconds())
        days = timedelta(days=-(-want.seconds() // 86400))  # true while next - today < days

        def deadline(s: PersonState, t: datetime) -> datetime | None:
            v = s.attrs.get(name)
            if not isinstance(v, datetime):
                return None
            if a.op is Op.in_last:  # true on [v, v + span)
                return _earliest(x for x in (v, v + span) if x > t)
            if a.op is Op.in_next:  # true on (v - span, v]
                return _earliest(x for x in (v - span + _MICRO, v + _MICRO) if x > t)
            today = t.astimezone(UTC).date()  # anniversary: true from next - days + 1 to next
            nxt = next_anniversary(v.month, v.day, today)
            if nxt < today + days:
                return _midnight(nxt + timedelta(days=1))
            return _midnight(max(nxt - days + timedelta(days=1), today + timedelta(days=1)))

        return deadline

    def sequence_deadline(self, q: Sequence) -> _Deadline:
        leaving = _leaving(q.window, lambda s: s.of(q.steps[0].event), _step(q.steps[0], "$"))
        if q.then_not is None:
            return leaving
        if not is_plain(q):  # conservative: when the next first step's wait runs out
            first, rng = _step(q.steps[0], "$"), _range(q.window)
            span = timedelta(seconds=q.within.seconds())

            def pending(s: PersonState, t: datetime) -> datetime | None:
                recs = s.of(q.steps[0].event)
                lo, hi = rng(s, t, recs)
                due = (r.ts + span for r in recs[lo:hi] if r.ts + span > t and first(r))
                return _earliest((next(due, None), leaving(s, t)))

            return pending
        gather = _gatherer(q)
        first, absent = _step(q.steps[0], "$"), _step(q.then_not, "$")
        within = timedelta(seconds=q.within.seconds())

        def deadline(s: PersonState, t: datetime) -> datetime | None:
            matched, pending = _absence(gather(s, t), first, absent, within, t)
            due = None if matched or pending is None else pending + within
            return _earliest((due, leaving(s, t)))

        return deadline


def _earliest(times: Any) -> datetime | None:
    known = [x for x in times if x is not None]
    return min(known) if known else None


def _leaving(
    w: Window, recs_of: Callable[[PersonState], list[EventRec]], f: _RecTest | None
) -> _Deadline:
    """For a ``last N`` window: when the oldest matching event in it leaves (else never)."""
    if w.last is None:
        return lambda s, t: None
    span = timedelta(seconds=w.last.seconds())

    def leaving(s: PersonState, t: datetime) -> datetime | None:
        recs = recs_of(s)
        lo, hi = bisect_right(recs, t - span, key=_ts), bisect_right(recs, t, key=_ts)
        for i in range(lo, hi):
            if f is None or f(recs[i]):
                return recs[i].ts + span
        return None

    return leaving


def _matches(name: str, f: _RecTest) -> Callable[[PersonState], list[EventRec]]:
    """The person's ``name`` events that pass ``f``, in time order: a list kept in the state's
    memo (a buffer of the leaf's matches), fed only the events added since the last look and
    trimmed to what the state still holds, so each event is filtered once."""
    token = object()

    def matches(s: PersonState) -> list[EventRec]:
        m = s.memo.get(token)
        evs = s.events
        if (
            m is None
            or m[0] != s.epoch
            or m[1] < s.trimmed  # a per-event prune cut into the unread events
            or (count := s.appended - m[1]) > len(evs)
        ):
            out = [r for r in s.of(name) if f(r)]
        else:
            out = m[2]
            if count:
                out.extend(r for r in evs[len(evs) - count :] if r.event == name and f(r))
            recs = s.of(name)
            if out and (not recs or out[0].ts < recs[0].ts):  # the state was pruned
                del out[: bisect_left(out, recs[0].ts, key=_ts) if recs else len(out)]
        s.memo[token] = (s.epoch, s.appended, out)
        return out

    return matches


def _gatherer(q: Sequence) -> Callable[[PersonState, datetime], list[EventRec]]:
    """The window's events of the kinds a sequence reads, in time order."""
    rng = _range(q.window)
    names = {st.event for st in q.steps}
    names |= {x.event for x in (q.excluding, q.then_not) if x is not None}
    ordered = sorted(names)

    def gather(s: PersonState, t: datetime) -> list[EventRec]:
        out: list[EventRec] = []
        runs = 0
        for name in ordered:
            recs = s.of(name)
            if recs:
                lo, hi = rng(s, t, recs)
                if hi > lo:
                    out.extend(recs[lo:hi])
                    runs += 1
        if runs > 1:
            out.sort(key=_ts)  # a merge of sorted runs
        return out

    return gather


def _groups(evs: list[EventRec]) -> Any:
    """The events in runs of equal time (``(ts, run)``)."""
    i, n = 0, len(evs)
    while i < n:
        t, j = evs[i].ts, i + 1
        while j < n and evs[j].ts == t:
            j += 1
        yield t, evs[i:j]
        i = j


def _feed(
    evs: list[EventRec],
    plan: dict[str, list[tuple[int, _RecTest | None]]],
    last: int,
    excl: tuple[str, _RecTest | None] | None,
    within: timedelta,
    best: list[datetime | None],
    done: datetime | None,
) -> tuple[list[datetime | None], datetime | None]:
    """Feed the time-ordered ``evs`` to a sequence's automaton; ``plan`` maps an event name to
    the steps it can take (step index, filter), last step first. The result: the automaton and
    ``done``, the latest start of a complete chain (strictly increasing times, ``ek - e1 <=
    within``, no excluded event strictly between e1 and ek).

    ``best[j]``: the latest start of a live partial match that has reached step ``j`` (one
    timestamp per step, however many partial matches). Events of equal time are read together
    against the partial matches from before them (a chain needs strictly later times); so
    every live partial match can take any later event, and the latest start dominates — for
    ``within``, for exclusions, and for a window that the chain's start must fall in. A lone
    event reads and writes ``best`` in place: it tries the last step first, so it never extends
    a match it has just extended itself."""
    excl_name, excl_f = excl if excl is not None else (None, None)
    i, n = 0, len(evs)
    while i < n:
        r = evs[i]
        t = r.ts
        j = i + 1
        if j < n and evs[j].ts == t:
            while j < n and evs[j].ts == t:
                j += 1
            run, prev = evs[i:j], best[:]
        else:
            run, prev = [r], best
        i = j
        excluded = False
        oldest = None  # the earliest start that can still finish at t
        for r in run:
            if r.event == excl_name and (excl_f is None or excl_f(r)):
                excluded = True
            steps = plan.get(r.event)
            if steps is None:
                continue
            for step, f in steps:
                if f is not None and not f(r):
                    continue
                if step == 0:
                    start: datetime | None = t
                else:
                    start = prev[step - 1]
                    if start is None:
                        continue
                    if oldest is None:
                        oldest = t - within
                    if start < oldest:
                        continue
                    if step == last:
                        if done is None or start > done:
                            done = start
                        continue
                b = best[step]
                if b is None or start > b:  # type: ignore[operator]
                    best[step] = start
        if excluded:  # kills every partial match started before t (not one starting at t)
            best = [t if best[0] == t else None] + [None] * last
    return best, done


def _absence(
    evs: list[EventRec], first: _RecTest, absent: _RecTest, within: timedelta, as_of: datetime
) -> tuple[bool, datetime | None]:
    """``A then not B within T`` over the time-ordered ``evs``: (some A went T without a B by
    ``as_of``, the earliest A still waiting). Every waiting A is older than any later event,
    so one B ends them all and the earliest one is the one to watch."""
    pending: datetime | None = None
    for t, run in _groups(evs):
        if pending is not None and pending + within < t:
            return True, None
        if pending is not None and any(absent(r) for r in run):
            pending = None
        if pending is None and any(first(r) for r in run):
            pending = t
    if pending is not None and pending + within <= as_of:
        return True, None
    return False, pending


# -- patterns: strict, counted and referring steps; trigger matches ------------------------------
def _never(r: EventRec) -> bool:
    return False


#: a test of an event given the events the earlier steps matched (by step name)
_EnvTest = Callable[[EventRec, Env], bool]


def _env_step(s: Step | EventIs, path: str) -> _EnvTest:
    """A step's test where filters may compare with earlier steps' events (``Ref``): plain
    filters compiled as usual, references with ``ref_compare``."""
    plain = _filter([c for c in s.where if not isinstance(c.value, Ref)], f"{path}.where")
    pairs = [
        (c.field, c.op, c.value.alias, c.value.field) for c in s.where if isinstance(c.value, Ref)
    ]
    name = s.event

    def test(r: EventRec, env: Env) -> bool:
        if r.event != name or (plain is not None and not plain(r)):
            return False
        for field, op, alias, other in pairs:
            if not ref_compare(op, field_value(r, field), field_value(env[alias], other)):
                return False
        return True

    return test


@dataclass(slots=True)
class _Partial:
    """A partial match: its first event's time, its events, its named events."""

    start: datetime
    chain: tuple[EventRec, ...]
    env: dict[str, EventRec]


_Sig = tuple[str | None, ...]


class _Run:
    """One person's pattern automaton (in the state's memo): per step and partition key the
    live partial match with the latest start; the time group being read; the keys' barriers."""

    __slots__ = (
        "best", "fresh", "upd", "dirty", "t", "counted", "excl", "barrier", "waits", "group_as"
    )  # fmt: skip

    def __init__(self, empty: list[dict[_Sig, _Partial]]) -> None:
        # the pattern's shared ``empty`` tables until something is written (never into them)
        self.best = self.fresh = self.upd = empty
        self.dirty = False  # ``upd`` holds something
        self.t: datetime | None = None
        self.counted = False
        self.excl: list[EventRec] = []
        self.barrier: dict[_Sig, datetime] = {}
        self.waits: dict[_Sig, EventRec] = {}
        self.group_as: dict[_Sig, EventRec] = {}


class _Pattern:
    """The automaton of a sequence (see ``compile_trigger`` for the policy). Events are read in
    ``order`` (time, then id); events of one time read the partial matches from before that
    time and write new ones aside, merged when a later time comes (a chain needs strictly
    later times). Dominance: of two partial matches at the same step with the same referred-to
    values, the later start can do all the earlier can (``within``, exclusions, the barrier),
    so one per (step, values) is kept; a ``next`` step reads only those made at the latest
    counted time before its own (``fresh``)."""

    def __init__(self, q: Sequence, path: str) -> None:
        check_sequence(q, path)
        self.atoms = atoms(q)
        self.tests = [_env_step(s, path + p[1:]) for s, p in self.atoms]
        self.by_event: dict[str, list[int]] = {}
        for j, (s, _) in enumerate(self.atoms):
            self.by_event.setdefault(s.event, []).append(j)
        self.within = timedelta(seconds=q.within.seconds())
        self.fields = capture_fields(q)
        self.last = len(self.atoms) - 1
        self.excluding = (
            None if q.excluding is None else _env_step(q.excluding, f"{path}.excluding")
        )
        self.excl_name = None if q.excluding is None else q.excluding.event
        self.then_not = None if q.then_not is None else _env_step(q.then_not, f"{path}.then_not")
        self.absent_name = None if q.then_not is None else q.then_not.event
        self.first_alias = self.atoms[0][0].alias
        self.accepts = self._accepts()
        self.empty: list[dict[_Sig, _Partial]] = [{} for _ in self.atoms]  # never written

    def tables(self) -> list[dict[_Sig, _Partial]]:
        return [{} for _ in self.atoms]

    def _accepts(self) -> _RecTest | None:
        """Whether an event can change the automaton: it passes some step's own filters (the
        references aside), or it may exclude or end a wait. ``None`` when any event can (a
        ``next`` step: every counted event breaks a strict chain)."""
        if any(s.next for s, _ in self.atoms):
            return None
        always = {n for n in (self.excl_name, self.absent_name) if n is not None}
        plain: dict[str, list[_RecTest | None]] = {}
        for s, p in self.atoms:
            own = [c for c in s.where if not isinstance(c.value, Ref)]
            plain.setdefault(s.event, []).append(_filter(own, p))
        tests: dict[str, _RecTest | None] = {name: None for name in always}
        for name, fs in plain.items():
            if name in always or None in fs:
                tests[name] = None
            elif len(fs) == 1:
                tests[name] = fs[0]
            else:
                tests[name] = lambda r, fs=fs: any(f(r) for f in fs)  # type: ignore[misc]

        def accepts(r: EventRec) -> bool:
            f = tests.get(r.event, _never)
            return f is None or f(r)

        return accepts

    def sig(self, env: Env) -> _Sig:
        if not self.fields:
            return ()
        return tuple(
            prop_text(field_value(env[a], f)) if a in env else None for a, f in self.fields
        )

    # -- time groups ------------------------------------------------------------------------
    def open(self, run: _Run, t: datetime, out: list[Match]) -> None:
        """Close the group being read (if any) and start one at ``t``."""
        if run.t is not None and self.then_not is None:  # an absence keeps only its waits
            self.commit(run)
        run.t = t
        run.counted = False
        if run.excl:
            run.excl = []
        if run.group_as:
            run.group_as = {}
        if self.then_not is not None:
            self.fire(run, t, False, out)

    def commit(self, run: _Run) -> None:
        """Merge the partial matches made at the group's time; forget those too old to
        finish, and those an excluded event of that time falls inside."""
        t = run.t
        assert t is not None
        upd = run.upd
        if run.dirty:
            if run.best is self.empty:
                run.best = self.tables()
            for j in range(self.last):
                best = run.best[j]
                for sig, p in upd[j].items():
                    cur = best.get(sig)
                    if cur is None or p.start > cur.start:
                        best[sig] = p
            if run.counted:
                run.fresh = upd
            else:
                if run.fresh is self.empty:
                    run.fresh = self.tables()
                for j in range(self.last):
                    fresh = run.fresh[j]
                    for sig, p in upd[j].items():
                        cur = fresh.get(sig)
                        if cur is None or p.start > cur.start:
                            fresh[sig] = p
            run.upd = self.empty
            run.dirty = False
        elif run.counted and any(run.fresh):
            run.fresh = self.empty
        low = t - self.within
        if run.barrier:  # a barrier older than any live start bars nothing
            run.barrier = {k: b for k, b in run.barrier.items() if b >= low}
        excl = run.excl if self.excluding is not None else None
        for tables in (run.best, run.fresh):
            for table in tables:
                if not table:
                    continue
                gone = [
                    s
                    for s, p in table.items()
                    if p.start < low
                    or (excl and p.start < t and any(self.excluding(x, p.env) for x in excl))  # type: ignore[misc]
                ]
                for sig in gone:
                    del table[sig]

    def fire(self, run: _Run, before: datetime, inclusive: bool, out: list[Match]) -> None:
        """Absence: the waits due before ``before`` (or at it, ``inclusive``) fire."""
        if not run.waits:
            return
        for key, a in list(run.waits.items()):
            due = a.ts + self.within
            if due < before or (inclusive and due == before):
                out.append(Match(due, (a,), match_key([a])))
                del run.waits[key]

    # -- one event ------------------------------------------------------------------------------
    def feed(self, run: _Run, r: EventRec, out: list[Match], barrier: bool = True) -> None:
        """Read ``r`` (not earlier than the group being read); completed chains go to ``out``."""
        t = r.ts
        if run.t is None or t > run.t:
            self.open(run, t, out)
        if r.event not in SYSTEM_EVENTS:
            run.counted = True
        if r.event == self.excl_name:
            run.excl.append(r)
        if self.then_not is not None:
            self.absence(run, r)
            return
        for j in self.by_event.get(r.event, ()):
            test, alias = self.tests[j], self.atoms[j][0].alias
            if j == 0:
                sources: Any = (_Partial(t, (), {}),)
            else:
                table = run.fresh[j - 1] if self.atoms[j][0].next else run.best[j - 1]
                low = t - self.within
                sources = [p for p in table.values() if p.start >= low]
            for p in sources:
                if not test(r, p.env):
                    continue
                env = p.env if alias is None else {**p.env, alias: r}
                sig = self.sig(env)
                if j == self.last:
                    if barrier:
                        seen = run.barrier.get(sig)
                        if seen is not None and p.start <= seen:
                            continue
                        run.barrier[sig] = t
                    chain = (*p.chain, r)
                    out.append(Match(t, chain, match_key(chain)))
                    continue
                cur = run.upd[j].get(sig)
                if cur is None or p.start > cur.start:
                    if not run.dirty:
                        run.upd, run.dirty = self.tables(), True
                    run.upd[j][sig] = _Partial(p.start, (*p.chain, r), env)

    def absence(self, run: _Run, r: EventRec) -> None:
        t = r.ts
        assert self.then_not is not None
        if r.event == self.absent_name:
            for key, a in list(run.waits.items()):
                env = {self.first_alias: a} if self.first_alias else {}
                if a.ts < t and self.then_not(r, env):
                    del run.waits[key]
                    if key in run.group_as:
                        run.waits[key] = run.group_as[key]
        if self.tests[0](r, {}):
            key = self.sig({self.first_alias: r} if self.first_alias else {})
            run.group_as.setdefault(key, r)
            run.waits.setdefault(key, r)


class Trigger:
    """What a lead rule fires on, per person, on the stream (``compile_trigger``).

    The engine adds each event to the person's state, then calls ``on_event(state, event)``,
    in event-time order (events of one time in id order: the reorder buffer holding events
    back until the watermark passes them gives exactly this), and ``on_timer(state,
    watermark)`` when the watermark reaches ``deadline(state)``; a watermark ``W`` promises
    that no event at or before ``W`` is still to come. Both return the new matches. An event
    older than what the trigger has read (a late one the engine did not hold back) makes it
    read the person's retained history again and report the matches at or after that event's
    time: repeats carry the same ``key``, and matches already reported are not withdrawn."""

    def __init__(self, cond: Condition, path: str = "$") -> None:
        trigger = check_trigger(cond, path)
        self.cond = trigger
        self.interest: frozenset[str] | None = None
        self._event: _RecTest | None = None
        self._pattern: _Pattern | None = None
        #: an event it rejects completes no match and changes no wait (see ``StreamRule``)
        self.accepts: _RecTest | None
        if isinstance(trigger, EventIs):
            self._event = self.accepts = _step(trigger, path)
            self.interest = frozenset({trigger.event})
            self.retention = Retention()
        else:
            self._pattern = _Pattern(trigger, path)
            self.accepts = self._pattern.accepts
            names = events_of_interest(trigger)
            self.interest = None if names is None else frozenset(names)
            self.retention = Retention(lookback=timedelta(seconds=trigger.within.seconds()))
        self._token = object()

    def _run(self, state: PersonState) -> tuple[_Run, list[Match], bool]:
        """The person's automaton, rebuilt from the state's events when the memo does not hold
        a current one (the matches found then, and True). The rebuild reads only the events
        ``accepts`` lets through: the others change nothing, as on the way in."""
        pattern = self._pattern
        assert pattern is not None
        m = state.memo.get(self._token)
        if m is not None and m[0] == state.epoch:
            return m[1], [], False
        run = _Run(pattern.empty)
        out: list[Match] = []
        if state.blank:  # shown every event it accepts: nothing to read again
            state.memo[self._token] = (state.epoch, run)
            return run, out, False
        accepts = pattern.accepts
        evs = state.events if accepts is None else [r for r in state.events if accepts(r)]
        for r in sorted(evs, key=order) if len(evs) > 1 else evs:
            pattern.feed(run, r, out)
        state.memo[self._token] = (state.epoch, run)
        return run, out, True

    def _unstarted(self, state: PersonState) -> bool:
        """A blank state this automaton has never been needed for: no partial match, no wait."""
        if not state.blank:
            return False
        m = state.memo.get(self._token)
        return m is None or m[0] != state.epoch

    def on_event(self, state: PersonState, event: EventRec) -> list[Match]:
        """The matches ``event`` completes (it is already in ``state``)."""
        if self._event is not None:
            return [Match(event.ts, (event,), match_key([event]))] if self._event(event) else []
        assert self._pattern is not None
        if self._unstarted(state) and not self._pattern.tests[0](event, {}):
            return []  # only a first step can start from nothing
        run, found, rebuilt = self._run(state)
        if rebuilt:
            return [x for x in found if x.fired_at >= event.ts]
        out: list[Match] = []
        if run.t is not None and event.ts < run.t:  # older than what was read: read it all again
            state.memo.pop(self._token, None)
            _, found, _ = self._run(state)
            return [x for x in found if x.fired_at >= event.ts]
        self._pattern.feed(run, event, out)
        return out

    def on_timer(self, state: PersonState, watermark: datetime) -> list[Match]:
        """The absences due at or before ``watermark``."""
        if self._pattern is None or self._pattern.then_not is None or self._unstarted(state):
            return []
        run, found, _ = self._run(state)
        out = [x for x in found if x.fired_at <= watermark]
        self._pattern.fire(run, watermark, True, out)
        return out

    def deadline(self, state: PersonState) -> datetime | None:
        """When the next absence is due (None: none is waiting)."""
        if self._pattern is None or self._pattern.then_not is None or self._unstarted(state):
            return None
        run = self._run(state)[0]
        within = self._pattern.within
        return min((a.ts + within for a in run.waits.values()), default=None)


def compile_trigger(cond: Condition) -> Trigger:
    """A lead rule's trigger (``event ...`` or a sequence without a window) for the stream
    engine: built once per rule; ``ConditionError`` for anything else."""
    return Trigger(cond)


def _pattern_pred(q: Sequence, path: str) -> _Pred:
    """The boolean form of a sequence with strict, counted or referring steps: the pattern
    automaton run over the window's events at each evaluation, without the no-overlap rule
    (some chain exists); ``A then not B`` with references: some A whose wait ran out. A pass
    over the window's events per evaluation (the plain sequences keep their incremental
    automaton)."""
    pattern = _Pattern(q, path)
    rng = _range(q.window)
    first = pattern.tests[0]
    within = pattern.within

    def window(s: PersonState, t: datetime) -> list[EventRec]:
        lo, hi = rng(s, t, s.events)
        return sorted(s.events[lo:hi], key=order)

    if q.then_not is not None:
        absent, alias = pattern.then_not, pattern.first_alias
        assert absent is not None

        def then_not(s: PersonState, t: datetime, e: EventRec | None) -> bool:
            evs = window(s, t)
            for a in evs:
                if a.ts + within > t or not first(a, {}):
                    continue
                env = {alias: a} if alias else {}
                if not any(a.ts < b.ts <= a.ts + within and absent(b, env) for b in evs):
                    return True
            return False

        return then_not

    def sequence(s: PersonState, t: datetime, e: EventRec | None) -> bool:
        run, out = _Run(pattern.empty), list[Match]()
        for r in window(s, t):
            pattern.feed(run, r, out, barrier=False)
            if out:
                return True
        return False

    return sequence


def replay(cond: Condition, events: list[EventRec], until: datetime) -> list[Match]:
    """The trigger's matches over a whole history as of event time ``until`` (absences due by
    then included): the stream automaton read once, for batch backtests
    (``to_ibis.trigger_matches``) and for comparing with ``reference.trigger_matches``."""
    trigger = check_trigger(cond)
    evs = sorted((e for e in events if e.ts <= until), key=order)
    if isinstance(trigger, EventIs):
        test = _step(trigger, "$")
        return [Match(e.ts, (e,), match_key([e])) for e in evs if test(e)]
    pattern, out = _Pattern(trigger, "$"), list[Match]()
    run = _Run(pattern.empty)
    for r in evs:
        pattern.feed(run, r, out)
    if pattern.then_not is not None:
        pattern.fire(run, until, True, out)
    return out
