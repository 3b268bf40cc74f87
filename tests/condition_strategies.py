"""Hypothesis strategies for random condition trees, shared by the text, compiler and reference
tests.

By default every part is general (every node kind and operator, windows of all three kinds,
sequences with ``excluding``/``then_not``, unicode and keyword names, ints and floats). A test
over real data narrows the vocabulary with a ``Vocabulary``::

    vocab = Vocabulary(events=st.sampled_from(["pay", "view"]), props=st.just("price"),
                       attrs=st.sampled_from(["age", "city"]), values=st.integers(0, 9))
    @given(conditions(max_depth=3, vocab=vocab, triggers=False))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from rapport.conditions.model import (
    RELATIVE,
    UNARY,
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
    Unit,
    Window,
)

SearchStrategy = st.SearchStrategy

KEYWORDISH = ["and", "or", "not", "did", "in", "where", "then", "count", "true", "null", "all"]


def names() -> SearchStrategy[str]:
    """Identifiers (ASCII, dotted, Chinese), keywords, and any text (which must be quoted)."""
    ascii_id = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
    return st.one_of(
        ascii_id,
        st.builds(lambda a, b: f"{a}.{b}", ascii_id, ascii_id),
        st.sampled_from(["城市", "高净值", "价格", "Größe", "item.category"]),
        st.sampled_from(KEYWORDISH),
        st.text(max_size=8),
    )


def numbers() -> SearchStrategy[int | float]:
    return st.one_of(
        st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False)
    )


def scalars() -> SearchStrategy[Any]:
    """One value of a comparison: text (any unicode), an int, a finite float, a boolean."""
    return st.one_of(st.text(max_size=10), numbers(), st.booleans())


def durations() -> SearchStrategy[Duration]:
    return st.builds(Duration, amount=st.integers(1, 10_000), unit=st.sampled_from(list(Unit)))


#: how far from a boundary the edge instants sit: on it, 1 µs and 1 s either side
JITTER = (
    timedelta(0),
    timedelta(microseconds=1),
    -timedelta(microseconds=1),
    timedelta(seconds=1),
    -timedelta(seconds=1),
)


def instants() -> SearchStrategy[datetime]:
    """Aware datetimes (UTC, or a whole-minute offset), midnight or not, microseconds too, and
    midnights UTC give or take 1 µs / 1 s (the edges of ``between`` dates)."""
    offsets = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5))])
    plain = st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=offsets)
    days = st.dates().map(lambda d: datetime(d.year, d.month, d.day, tzinfo=UTC))
    near = st.dates(date(1900, 1, 2), date(2199, 12, 30))  # room for the jitter
    edges = st.builds(
        lambda d, j: datetime(d.year, d.month, d.day, tzinfo=UTC) + j, near, st.sampled_from(JITTER)
    )
    return st.one_of(plain, days, edges)


@dataclass
class Vocabulary:
    """What the random trees are made of; narrow any part to match generated data."""

    attrs: SearchStrategy[str] = field(default_factory=names)
    events: SearchStrategy[str] = field(default_factory=names)
    props: SearchStrategy[str] = field(default_factory=names)  # event and item.x properties
    tags: SearchStrategy[str] = field(default_factory=names)
    tag_values: SearchStrategy[str] = field(default_factory=lambda: st.text(max_size=8))
    segments: SearchStrategy[str] = field(default_factory=names)
    buckets: SearchStrategy[str] = field(default_factory=names)
    values: SearchStrategy[Any] = field(default_factory=scalars)
    thresholds: SearchStrategy[int | float] = field(default_factory=numbers)
    durations: SearchStrategy[Duration] = field(default_factory=durations)
    instants: SearchStrategy[datetime] = field(default_factory=instants)
    ops: tuple[Op, ...] = tuple(Op)
    aggs: tuple[str, ...] = ("count", "sum", "avg", "min", "max", "distinct")

    def __repr__(self) -> str:  # keeps hypothesis' reports readable
        return f"Vocabulary#{id(self):x}"


GENERAL = Vocabulary()


@st.composite
def _value_for(draw: st.DrawFn, op: Op, vocab: Vocabulary) -> Any:
    if op in UNARY:
        return None
    if op in RELATIVE:
        return draw(vocab.durations)
    if op is Op.between:
        return [draw(vocab.values), draw(vocab.values)]
    if op in (Op.in_, Op.not_in):
        return draw(st.lists(st.one_of(vocab.values, st.none()), max_size=4))
    return draw(vocab.values)


def compares(
    fields: SearchStrategy[str] | None = None,
    vocab: Vocabulary = GENERAL,
    model: type[Compare] = Compare,
) -> SearchStrategy[Compare]:
    """``field op value`` with a value of the shape the operator needs (every operator)."""

    @st.composite
    def build(draw: st.DrawFn) -> Compare:
        op = draw(st.sampled_from(vocab.ops))
        return model(
            field=draw(fields if fields is not None else vocab.attrs),
            op=op,
            value=draw(_value_for(op, vocab)),
        )

    return build()


def attrs(vocab: Vocabulary = GENERAL) -> SearchStrategy[Compare]:
    return compares(vocab.attrs, vocab, Attr)


def filters(vocab: Vocabulary = GENERAL) -> SearchStrategy[list[Compare]]:
    """Event filters over event properties and ``item.<prop>``."""
    fields = st.one_of(vocab.props, vocab.props.map(lambda p: f"item.{p}"))
    return st.lists(compares(fields, vocab), max_size=2)


def windows(vocab: Vocabulary = GENERAL) -> SearchStrategy[Window]:
    """None, the last N units, between / from / before instants, since an event."""
    return st.one_of(
        st.just(Window()),
        st.builds(Window, last=vocab.durations),
        st.builds(Window, start=vocab.instants, end=vocab.instants),
        st.builds(Window, start=vocab.instants),
        st.builds(Window, end=vocab.instants),
        st.builds(Window, since_event=vocab.events),
    )


def has_tags(vocab: Vocabulary = GENERAL) -> SearchStrategy[HasTag]:
    values = st.one_of(st.none(), st.lists(vocab.tag_values, max_size=3))
    return st.builds(HasTag, tag=vocab.tags, values=values)


def in_segments(vocab: Vocabulary = GENERAL) -> SearchStrategy[InSegment]:
    return st.builds(InSegment, segment=vocab.segments, bucket=st.none() | vocab.buckets)


@st.composite
def _did(draw: st.DrawFn, vocab: Vocabulary) -> Did:
    agg = draw(st.sampled_from(vocab.aggs))
    needs = agg != "count"
    prop = draw(vocab.props.filter(bool)) if needs else draw(st.none() | vocab.props)
    return Did(
        event=draw(vocab.events),
        where=draw(filters(vocab)),
        agg=agg,  # type: ignore[arg-type]
        property=prop,
        op=draw(st.sampled_from([Op.eq, Op.ne, Op.lt, Op.le, Op.gt, Op.ge])),
        threshold=draw(vocab.thresholds),
        window=draw(windows(vocab)),
    )


def dids(vocab: Vocabulary = GENERAL) -> SearchStrategy[Did]:
    """Behaviour leaves: every measure and comparison, filters, every window kind."""
    return _did(vocab)


def steps(vocab: Vocabulary = GENERAL) -> SearchStrategy[Step]:
    return st.builds(Step, event=vocab.events, where=filters(vocab))


@st.composite
def _sequence(draw: st.DrawFn, vocab: Vocabulary) -> Sequence:
    then_not = draw(st.none() | steps(vocab))
    low = 1 if then_not is not None else 2
    return Sequence(
        steps=draw(st.lists(steps(vocab), min_size=low, max_size=3)),
        within=draw(vocab.durations),
        excluding=draw(st.none() | steps(vocab)),
        then_not=then_not,
        window=draw(windows(vocab)),
    )


def sequences(vocab: Vocabulary = GENERAL) -> SearchStrategy[Sequence]:
    """``A then B [then C]`` or ``A then not B``, with or without ``excluding``, any window."""
    return _sequence(vocab)


def event_is(vocab: Vocabulary = GENERAL) -> SearchStrategy[EventIs]:
    return st.builds(EventIs, event=vocab.events, where=filters(vocab))


def leaves(vocab: Vocabulary = GENERAL, *, triggers: bool = True) -> SearchStrategy[Condition]:
    """Every leaf kind; ``triggers=False`` leaves out ``EventIs`` (the batch compiler refuses)."""
    kinds = [attrs(vocab), has_tags(vocab), in_segments(vocab), dids(vocab), sequences(vocab)]
    if triggers:
        kinds.append(event_is(vocab))
    return st.one_of(*kinds)


def conditions(
    max_depth: int = 3, vocab: Vocabulary = GENERAL, *, triggers: bool = True
) -> SearchStrategy[Condition]:
    """Trees of and / or / not up to ``max_depth`` groups deep over ``leaves``."""
    base = leaves(vocab, triggers=triggers)
    if max_depth <= 0:
        return base
    inner = conditions(max_depth - 1, vocab, triggers=triggers)
    return st.one_of(
        base,
        st.builds(And, all=st.lists(inner, min_size=1, max_size=3)),
        st.builds(Or, any=st.lists(inner, min_size=1, max_size=3)),
        st.builds(Not, cond=inner),
    )
