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
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    RELATIVE,
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


def filter_matches(cmp: Compare, rec: EventRec, path: str) -> bool:
    """An event filter (``where``) on one event: an event property or ``item.<prop>``."""
    if cmp.field.startswith("item."):
        raw = (rec.item or {}).get(cmp.field[5:])
    else:
        raw = rec.props.get(cmp.field)
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


def step_matches(step: Step | EventIs | Did, rec: EventRec, path: str) -> bool:
    return rec.event == step.event and all(
        filter_matches(c, rec, f"{path}.where[{i}]") for i, c in enumerate(step.where)
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


def sequence_matches(seq: Sequence, state: PersonState, as_of: datetime, path: str) -> bool:
    """Some chain of events matching the steps in order, with strictly increasing times,
    spanning at most ``within``, with no ``excluding`` event strictly between its ends; or, with
    ``then_not``, some first step that no ``then_not`` event followed within ``within``."""
    events = in_window(state.events, seq.window, as_of)
    within = timedelta(seconds=seq.within.seconds())
    check_sequence(seq, path)
    if seq.then_not is not None:
        then_not = seq.then_not
        for a in events:
            if not step_matches(seq.steps[0], a, f"{path}.steps[0]"):
                continue
            if a.ts + within > as_of:
                continue
            if not any(
                a.ts < b.ts <= a.ts + within and step_matches(then_not, b, f"{path}.then_not")
                for b in events
            ):
                return True
        return False
    n = len(seq.steps)

    def chains(k: int, after: EventRec, first: EventRec) -> Iterable[EventRec]:
        """The last events of every chain completing steps k.. after ``after``."""
        for e in events:
            if e.ts > after.ts and step_matches(seq.steps[k], e, f"{path}.steps[{k}]"):
                if k == n - 1:
                    yield e
                else:
                    yield from chains(k + 1, e, first)

    for first in events:
        if not step_matches(seq.steps[0], first, f"{path}.steps[0]"):
            continue
        for last in chains(1, first, first):
            if last.ts - first.ts > within:
                continue
            excluding = seq.excluding
            if excluding is not None and any(
                first.ts < x.ts < last.ts and step_matches(excluding, x, f"{path}.excluding")
                for x in events
            ):
                continue
            return True
    return False


def check_sequence(seq: Sequence, path: str) -> None:
    """Shapes the model allows but the semantics do not define."""
    if seq.then_not is not None and len(seq.steps) != 1:
        raise ConditionError("`then not` follows exactly one step", path)
    if seq.then_not is not None and seq.excluding is not None:
        raise ConditionError("`then not` and `without ... in between` do not combine", path)


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
