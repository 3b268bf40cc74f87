"""The plain interpreter of the condition language: the meaning both compilers must agree with.

It is written to be obviously right, not fast: every leaf walks the person's whole state. The
agreement suite (``tests/test_conditions_agree.py``) runs random trees over random data through
``to_ibis`` (and ``to_stream``) and compares the person sets with ``matching`` here.

Typing rules shared with ``to_ibis`` (which implements the same ones in SQL):

- attributes are cast by ``cast_attr`` (a value that does not cast is missing);
- an event or item property compares as a number when the condition's value is a number (the
  property then must be a JSON number or text that reads as one), otherwise as text
  (``prop_text``: strings as they are, other JSON values as their JSON text).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

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
from rapport.stream.state import EventRec, PersonState

TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0"})
_INT = re.compile(r"[+-]?[0-9]+")
_NUM = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


# -- typing ---------------------------------------------------------------------------------
def cast_attr(value: Any, kind: str) -> Any:
    """A profile value (text) as the attribute's plan type; ``None`` when missing or not castable.

    integer: optional sign and digits; number: a decimal or exponent literal; boolean: one of
    ``TRUE_TEXT`` / ``FALSE_TEXT`` (any case); datetime: ISO 8601, UTC when no offset is given.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        value = prop_text(value)
    if value == "":
        return None
    if kind == "integer":
        return int(value) if _INT.fullmatch(value) else None
    if kind == "number":
        return float(value) if _NUM.fullmatch(value) else None
    if kind == "boolean":
        low = value.lower()
        return True if low in TRUE_TEXT else False if low in FALSE_TEXT else None
    if kind == "datetime":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return value


def condition_value(value: Any, kind: str, path: str) -> Any:
    """A value written in a condition, as the attribute's type (an error if it is not one)."""
    if value is None:
        raise ConditionError("compare with `is set` / `is not set` to test for no value", path)
    if kind == "string":
        return prop_text(value)
    typed = cast_attr(value if isinstance(value, str) else prop_text(value), kind)
    if typed is None:
        raise ConditionError(f"{value!r} is not a {kind}", path)
    return typed


def prop_text(value: Any) -> str | None:
    """An event/item property as text: strings as they are, other values as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def prop_number(value: Any) -> float | None:
    """An event/item property as a number: a JSON number, or text that reads as one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    if isinstance(value, str) and _NUM.fullmatch(value):
        return float(value)
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_filter(cmp: Compare) -> bool:
    """An event filter compares numerically when its value (every value of a list) is a number."""
    v = cmp.value
    if isinstance(v, list):
        return bool(v) and all(is_number(x) for x in v)
    return is_number(v)


# -- comparisons ----------------------------------------------------------------------------
def compare(op: Op, have: Any, want: Any) -> bool:
    """``have op want`` for a present, typed ``have`` (``want`` already of the same type)."""
    if op is Op.eq:
        return bool(have == want)
    if op is Op.ne:
        return bool(have != want)
    if op is Op.lt:
        return bool(have < want)
    if op is Op.le:
        return bool(have <= want)
    if op is Op.gt:
        return bool(have > want)
    if op is Op.ge:
        return bool(have >= want)
    if op is Op.between:
        return bool(want[0] <= have <= want[1])
    if op is Op.in_:
        return have in want
    if op is Op.not_in:
        return have not in want
    if op is Op.contains:
        return want in have
    if op is Op.starts_with:
        return bool(have.startswith(want))
    raise AssertionError(op)


def next_anniversary(month: int, day: int, today: date) -> date:
    """The first date on or after ``today`` with this month and day (Feb 29: Feb 28 when the
    year has none)."""
    for year in (today.year, today.year + 1):
        d = 28 if (month, day) == (2, 29) and not calendar.isleap(year) else day
        candidate = date(year, month, d)
        if candidate >= today:
            return candidate
    raise AssertionError("unreachable")


def attr_matches(cmp: Compare, value: Any, kind: str, as_of: datetime, path: str) -> bool:
    """``Attr`` on the person's typed value (``None`` = missing)."""
    if cmp.op is Op.not_set:
        return value is None
    if cmp.op is Op.is_set:
        return value is not None
    if cmp.op in RELATIVE:
        if kind != "datetime":
            raise ConditionError(f"`{cmp.op}` needs a datetime attribute", path)
        if value is None:
            return False
        assert isinstance(cmp.value, Duration)
        span = timedelta(seconds=cmp.value.seconds())
        if cmp.op is Op.in_last:
            return bool(as_of - span < value <= as_of)
        if cmp.op is Op.in_next:
            return bool(as_of <= value < as_of + span)
        today = as_of.astimezone(UTC).date()
        days = (next_anniversary(value.month, value.day, today) - today).days
        return days * 86400 < cmp.value.seconds()
    if cmp.op in (Op.contains, Op.starts_with) and kind != "string":
        raise ConditionError(f"`{cmp.op}` needs a text attribute", path)
    if value is None:
        return False
    want: Any
    if isinstance(cmp.value, list):
        want = [condition_value(v, kind, path) for v in cmp.value]
    else:
        want = condition_value(cmp.value, kind, path)
    return compare(cmp.op, value, want)


def field_value(rec: EventRec, name: str) -> Any:
    """An event property, or ``item.<prop>`` of the event's item (None: missing)."""
    if name.startswith("item."):
        return (rec.item or {}).get(name[5:])
    return rec.props.get(name)


def ref_compare(op: Op, have: Any, want: Any) -> bool:
    """``have op want`` for a step reference: as numbers when both read as numbers
    (``prop_number``), otherwise as text (``prop_text``); a missing side never matches."""
    if have is None or want is None:
        return False
    a, b = prop_number(have), prop_number(want)
    if a is None or b is None:
        return compare(op, prop_text(have), prop_text(want))
    return compare(op, a, b)


#: the events a sequence's steps have matched so far, by step name (for ``Ref`` values)
Env = Mapping[str, EventRec]


def filter_matches(cmp: Compare, rec: EventRec, path: str, env: Env | None = None) -> bool:
    """An event filter (``where``) on one event: an event property or ``item.<prop>``;
    a ``Ref`` value compares with the named earlier step's event in ``env``."""
    raw = field_value(rec, cmp.field)
    if isinstance(cmp.value, Ref):
        other = (env or {}).get(cmp.value.alias)
        if other is None:
            raise ConditionError(f"`{cmp.value.ref}` names no earlier step", path)
        return ref_compare(cmp.op, raw, field_value(other, cmp.value.field))
    if cmp.op is Op.not_set:
        return raw is None
    if cmp.op is Op.is_set:
        return raw is not None
    if cmp.op in RELATIVE:
        raise ConditionError(f"`{cmp.op}` compares a person's date, not an event property", path)
    if numeric_filter(cmp):
        have: Any = prop_number(raw)
        want: Any = (
            [float(v) for v in cmp.value]  # type: ignore[arg-type]
            if isinstance(cmp.value, list)
            else float(cmp.value)  # type: ignore[arg-type]
        )
        if cmp.op in (Op.contains, Op.starts_with):
            have, want = prop_text(raw), prop_text(cmp.value)
    else:
        have = prop_text(raw)
        want = (
            [prop_text(v) for v in cmp.value]
            if isinstance(cmp.value, list)
            else prop_text(cmp.value)
        )
    if have is None or want is None or (isinstance(want, list) and None in want):
        return False
    return compare(cmp.op, have, want)


# -- behaviour ------------------------------------------------------------------------------
def in_window(events: list[EventRec], window: Window, as_of: datetime) -> list[EventRec]:
    """The events the window lets count, in time order (never any after ``as_of``)."""
    out = [e for e in events if e.ts <= as_of]
    if window.last is not None:
        low = as_of - timedelta(seconds=window.last.seconds())
        out = [e for e in out if e.ts > low]
    if window.start is not None:
        out = [e for e in out if e.ts >= window.start]
    if window.end is not None:
        out = [e for e in out if e.ts < window.end]
    if window.since_event is not None:
        anchors = [e.ts for e in out if e.event == window.since_event]
        if not anchors:
            return []
        anchor = max(anchors)
        out = [e for e in out if e.ts > anchor]
    return sorted(out, key=lambda e: e.ts)


def step_matches(
    step: Step | EventIs | Did, rec: EventRec, path: str, env: Env | None = None
) -> bool:
    return rec.event == step.event and all(
        filter_matches(c, rec, f"{path}.where[{i}]", env) for i, c in enumerate(step.where)
    )


def measure(did: Did, events: list[EventRec]) -> float | None:
    """The behaviour measure over the matching events; ``None`` = missing (avg/min/max of none)."""
    if did.agg == "count":
        return float(len(events))
    raw = [e.props.get(did.property or "") for e in events]
    if did.agg == "distinct":
        return float(len({prop_text(v) for v in raw if v is not None}))
    nums = [n for n in (prop_number(v) for v in raw) if n is not None]
    if did.agg == "sum":
        return float(sum(nums))
    if not nums:
        return None
    if did.agg == "avg":
        return sum(nums) / len(nums)
    return min(nums) if did.agg == "min" else max(nums)


def did_matches(did: Did, state: PersonState, as_of: datetime, path: str) -> bool:
    events = [e for e in in_window(state.events, did.window, as_of) if step_matches(did, e, path)]
    value = measure(did, events)
    return value is not None and compare(did.op, value, float(did.threshold))


def atoms(seq: Sequence) -> list[tuple[Step, str]]:
    """The steps with every counted step written out (``3 times A`` is ``A then A then A``;
    the first copy keeps the step's ``next``), each with its JSON path."""
    out: list[tuple[Step, str]] = []
    for i, step in enumerate(seq.steps):
        for k in range(step.times):
            one = step if step.times == 1 else step.model_copy(update={"times": 1})
            if k:
                one = one.model_copy(update={"next": False})
            out.append((one, f"$.steps[{i}]"))
    return out


def is_plain(seq: Sequence) -> bool:
    """No strict, counted or referring step: the sequences every compiler has always run."""
    steps = [*seq.steps, *(x for x in (seq.excluding, seq.then_not) if x is not None)]
    return not any(
        s.next or s.times != 1 or s.alias or any(isinstance(c.value, Ref) for c in s.where)
        for s in steps
    )


def counted(events: list[EventRec]) -> list[datetime]:
    """The times of the events that break a strict contiguity (all but ``SYSTEM_EVENTS``)."""
    return [e.ts for e in events if e.event not in SYSTEM_EVENTS]


def chains(seq: Sequence, events: list[EventRec], path: str) -> Iterator[list[EventRec]]:
    """Every chain of ``events`` (time-ordered) matching the sequence's steps: strictly
    increasing times, the last within ``within`` of the first, a ``next`` step with no
    counted event strictly between it and the step before, references holding, and no
    ``excluding`` event strictly between the first and the last."""
    steps = atoms(seq)
    within = timedelta(seconds=seq.within.seconds())
    breaks = counted(events)
    excluding = seq.excluding

    def go(k: int, chain: list[EventRec], env: dict[str, EventRec]) -> Iterator[list[EventRec]]:
        if k == len(steps):
            if excluding is None or not any(
                chain[0].ts < x.ts < chain[-1].ts
                and step_matches(excluding, x, f"{path}.excluding", env)
                for x in events
            ):
                yield chain
            return
        step, where = steps[k]
        prev = chain[-1] if chain else None
        for e in events:
            if prev is not None:
                if e.ts <= prev.ts or e.ts - chain[0].ts > within:
                    continue
                if step.next and any(prev.ts < b < e.ts for b in breaks):
                    continue
            if not step_matches(step, e, path + where[1:], env):
                continue
            yield from go(k + 1, [*chain, e], env | {step.alias: e} if step.alias else env)

    yield from go(0, [], {})


def absent(seq: Sequence, a: EventRec, events: list[EventRec], path: str) -> bool:
    """No ``then_not`` event (referring to ``a`` when it is named) in ``(a, a + within]``."""
    assert seq.then_not is not None
    within = timedelta(seconds=seq.within.seconds())
    env = {seq.steps[0].alias: a} if seq.steps[0].alias else {}
    return not any(
        a.ts < b.ts <= a.ts + within and step_matches(seq.then_not, b, f"{path}.then_not", env)
        for b in events
    )


def sequence_matches(seq: Sequence, state: PersonState, as_of: datetime, path: str) -> bool:
    """Some chain of events matching the steps (``chains``); or, with ``then_not``, some
    first step that no ``then_not`` event followed within ``within`` (judged once ``within``
    has passed by ``as_of``)."""
    events = in_window(state.events, seq.window, as_of)
    within = timedelta(seconds=seq.within.seconds())
    check_sequence(seq, path)
    if seq.then_not is not None:
        return any(
            step_matches(seq.steps[0], a, f"{path}.steps[0]")
            and a.ts + within <= as_of
            and absent(seq, a, events, path)
            for a in events
        )
    return next(chains(seq, events, path), None) is not None


def check_sequence(seq: Sequence, path: str) -> None:
    """Shapes the model allows but the semantics do not define."""
    if seq.then_not is not None and (len(seq.steps) != 1 or seq.steps[0].times != 1):
        raise ConditionError("`then not` follows exactly one step", path)
    if seq.then_not is not None and seq.excluding is not None:
        raise ConditionError("`then not` and `without ... in between` do not combine", path)


# -- trigger matches ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Match:
    """One firing of a trigger: when (event time), the events that made it, and a key that is
    the same wherever and however often the match is found (the evidence events' ids)."""

    fired_at: datetime
    evidence: tuple[EventRec, ...]
    key: str


def match_key(evidence: Iterable[EventRec]) -> str:
    """The dedupe key of a match: a hash of its evidence events' ids, in chain order (an event
    without an id stands for itself by name and time)."""
    ids = [e.id if e.id is not None else f"{e.event}@{e.ts.isoformat()}" for e in evidence]
    return hashlib.blake2b("\x1f".join(ids).encode(), digest_size=16).hexdigest()


def order(e: EventRec) -> tuple[datetime, str]:
    """How triggers read events: by time, events of the same time by id."""
    return e.ts, e.id or ""


def capture_fields(seq: Sequence) -> list[tuple[str, str]]:
    """The (step name, property) pairs that filters refer to, in order of first use: the
    values a match's partition key is made of."""
    found: list[tuple[str, str]] = []
    for step in [*seq.steps, *(x for x in (seq.excluding, seq.then_not) if x is not None)]:
        for c in step.where:
            if isinstance(c.value, Ref) and (c.value.alias, c.value.field) not in found:
                found.append((c.value.alias, c.value.field))
    return found


def partition(fields: list[tuple[str, str]], env: Env) -> tuple[str | None, ...]:
    """The partition key of a chain: the referred-to values (as ``prop_text``)."""
    return tuple(prop_text(field_value(env[a], f)) for a, f in fields)


def check_trigger(cond: Condition, path: str = "$") -> EventIs | Sequence:
    """A lead rule's trigger is one event or one sequence, judged as events happen (so a
    sequence takes no window)."""
    if isinstance(cond, EventIs):
        return cond
    if not isinstance(cond, Sequence):
        raise ConditionError("a trigger is `event ...` or `sequence ...`", path)
    check_sequence(cond, path)
    if cond.window != Window():
        raise ConditionError("a trigger's sequence takes no window: it fires as it happens", path)
    return cond


def trigger_matches(cond: Condition, events: Iterable[EventRec], until: datetime) -> list[Match]:
    """Every match of trigger ``cond`` over a person's whole history, as of event time
    ``until`` (docs/conditions.md, "Trigger matches"), in firing order (ties: by key).

    - ``event X where ...``: every matching event.
    - a sequence: at each time ``t`` and for each partition key, at most one match among the
      chains completing at ``t`` whose first event is later than the key's previous match's
      last event (no overlapping leads); the chain with the latest start, ties broken by the
      earliest later events (time, then id).
    - ``A then not B within T``: an A opens a wait on ``(A, A+T]`` unless one of its key is
      open (it is absorbed); a B inside it closes it; a wait still open at ``A+T`` fires then.
    """
    trigger = check_trigger(cond)
    evs = sorted((e for e in events if e.ts <= until), key=order)
    if isinstance(trigger, EventIs):
        return [Match(e.ts, (e,), match_key([e])) for e in evs if step_matches(trigger, e, "$")]
    fields = capture_fields(trigger)
    if trigger.then_not is not None:
        return _absences(trigger, evs, until, fields)
    steps = atoms(trigger)

    def env_of(chain: list[EventRec]) -> dict[str, EventRec]:
        return {s.alias: e for (s, _), e in zip(steps, chain, strict=True) if s.alias}

    found: dict[tuple[datetime, tuple[str | None, ...]], list[list[EventRec]]] = {}
    for chain in chains(trigger, evs, "$"):
        found.setdefault((chain[-1].ts, partition(fields, env_of(chain))), []).append(chain)
    out: list[Match] = []
    barrier: dict[tuple[str | None, ...], datetime] = {}
    for t, key in sorted(found, key=lambda k: (k[0], [v or "" for v in k[1]])):
        fresh = [c for c in found[t, key] if key not in barrier or c[0].ts > barrier[key]]
        if not fresh:
            continue
        best = min(fresh, key=lambda c: (-c[0].ts.timestamp(), [order(e) for e in c]))
        barrier[key] = t
        out.append(Match(t, tuple(best), match_key(best)))
    return sorted(out, key=lambda m: (m.fired_at, m.key))


def _absences(
    seq: Sequence, evs: list[EventRec], until: datetime, fields: list[tuple[str, str]]
) -> list[Match]:
    assert seq.then_not is not None
    first, name = seq.steps[0], seq.steps[0].alias
    within = timedelta(seconds=seq.within.seconds())
    waits: dict[tuple[str | None, ...], EventRec] = {}
    out: list[Match] = []

    def fire(before: datetime, inclusive: bool) -> None:
        for key, a in list(waits.items()):
            due = a.ts + within
            if due < before or (inclusive and due == before):
                out.append(Match(due, (a,), match_key([a])))
                del waits[key]

    i = 0
    while i < len(evs):
        t = evs[i].ts
        run = [e for e in evs[i:] if e.ts == t]
        i += len(run)
        fire(t, inclusive=False)
        for b in run:
            for key, a in list(waits.items()):
                env = {name: a} if name else {}
                if a.ts < t and step_matches(seq.then_not, b, "$.then_not", env):
                    del waits[key]
        for a in run:
            if step_matches(first, a, "$.steps[0]"):
                key = partition(fields, {name: a} if name else {})
                waits.setdefault(key, a)
    fire(until, inclusive=True)
    return sorted(out, key=lambda m: (m.fired_at, m.key))


# -- the tree -------------------------------------------------------------------------------
def evaluate(
    cond: Condition,
    state: PersonState,
    as_of: datetime,
    *,
    attr_types: Mapping[str, str],
    event: EventRec | None = None,
    path: str = "$",
) -> bool:
    """Whether the person matches ``cond`` at ``as_of``. ``event`` is the current event, for
    ``EventIs`` (trigger conditions); without one, ``EventIs`` is false."""

    def ev(c: Condition, p: str) -> bool:
        return evaluate(c, state, as_of, attr_types=attr_types, event=event, path=p)

    if isinstance(cond, And):
        results = [ev(c, f"{path}.all[{i}]") for i, c in enumerate(cond.all)]
        return all(results)
    if isinstance(cond, Or):
        results = [ev(c, f"{path}.any[{i}]") for i, c in enumerate(cond.any)]
        return any(results)
    if isinstance(cond, Not):
        return not ev(cond.cond, f"{path}.cond")
    if isinstance(cond, Attr):
        kind = attr_types.get(cond.field, "string")
        value = state.attrs.get(cond.field)
        if value == "":
            value = None
        return attr_matches(cond, value, kind, as_of, path)
    if isinstance(cond, HasTag):
        have = state.tags.get(cond.tag, set())
        return bool(have) if cond.values is None else bool(have & set(cond.values))
    if isinstance(cond, InSegment):
        buckets = state.segments.get(cond.segment, set())
        return bool(buckets) if cond.bucket is None else cond.bucket in buckets
    if isinstance(cond, Did):
        return did_matches(cond, state, as_of, path)
    if isinstance(cond, Sequence):
        return sequence_matches(cond, state, as_of, path)
    if isinstance(cond, EventIs):
        return event is not None and step_matches(cond, event, path)
    raise ConditionError(f"unknown condition {type(cond).__name__}", path)


def matching(
    cond: Condition,
    states: Iterable[PersonState],
    as_of: datetime,
    *,
    attr_types: Mapping[str, str],
    event: EventRec | None = None,
) -> set[int]:
    """The persons among ``states`` (the universe) who match ``cond`` at ``as_of``."""
    return {
        s.person for s in states if evaluate(cond, s, as_of, attr_types=attr_types, event=event)
    }
