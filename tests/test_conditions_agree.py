"""Both compilers and the reference interpreter pick the same persons (issue 4, "Done when").

Hypothesis draws a small warehouse (persons with typed-or-garbage attributes, tags, segment
memberships, events with properties and item ids, items with a duplicate id) and a random
condition tree over that vocabulary. Times aim at the edges: events sit exactly on, 1 µs and
1 s either side of every window boundary the conditions can draw (``last N`` from as_of,
``between`` midnights and instants), several events share an instant (ties in sequences, a
``since`` anchor at the same instant as another event), and birthdays / datetimes sit on, and a
day or a second either side of, the "within N days" boundaries. The
batch compiler runs it on DuckDB (and, in ``test_conditions_spark.py``, on Spark), the stream
compiler over the same persons' states; every answer must equal ``reference.matching``.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import ibis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conditions_world import AS_OF, ATTR_TYPES, World
from rapport.conditions import reference, to_ibis, to_stream
from rapport.conditions.model import (
    And,
    Attr,
    Compare,
    Condition,
    Did,
    Duration,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Sequence,
    Step,
    Window,
)

EVENTS = ["view", "cart", "pay", "login"]
TAGS = {"hnw": ["yes"], "tier": ["gold", "silver", "bronze"]}
SEGMENTS = {"vip": [None], "life": ["new", "retained", "lost"]}
CITIES = ["Shanghai", "Beijing", "shanghai", "Shenzhen", "S", ""]
RAW_ATTRS: dict[str, list[str]] = {
    "city": CITIES,
    "age": ["18", "34", "61", "+7", "-3", "x", "3.5", ""],
    "score": ["1.5", "2", "-0.5", "1e2", ".5", "abc", ""],
    "vip": ["true", "False", "1", "no", "Y", "maybe", ""],
    "birthday": ["1990-03-05", "1992-02-29", "1985-02-20", "2001-03-01", "12/3/1990", ""],
    "last_seen": [
        "2024-02-28 09:00:00",
        "2024-03-01",
        "2024-03-01 12:00:00",
        "2024-03-03T08:30:00",
        "2023-12-01",
        "never",
    ],
}
ITEMS = [
    ("product", "i1", "crm", {"category": "fridge", "stars": 4}),
    ("product", "i2", "crm", {"category": "tv", "stars": 5}),
    ("sku", "i1", "crm", {"category": "shadowed", "stars": 1}),
    ("product", "i3", "crm", {"category": "fridge"}),
]
ITEM_IDS = ["i1", "i2", "i3", "nope"]
PRICES = [0.5, 10.0, 99.5, 2000.0, 2500.5]
COLORS = ["red", "Red", "blue", "green"]
#: event times before AS_OF: few and on the edges of the windows and ``within``s drawn below,
#: so that ties and boundaries are common (negative: after as_of, ignored)
OFFSETS = [
    timedelta(**{unit: n})
    for unit, ns in {"minutes": [-30, 0, 30], "hours": [1, 3], "days": [1, 30]}.items()
    for n in ns
]
#: every boundary gets events on it and this far either side
JITTER = [
    timedelta(0),
    timedelta(microseconds=1),
    -timedelta(microseconds=1),
    timedelta(seconds=1),
    -timedelta(seconds=1),
]
#: the as_of values drawn below (``as_ofs``); worlds put their edges around one of them
AS_OF_CHOICES = [
    AS_OF,
    AS_OF - timedelta(hours=1),
    AS_OF + timedelta(hours=7, minutes=30),
    AS_OF.replace(month=2),
]
#: midnights UTC: ``between`` boundaries that are whole dates
MIDNIGHTS = [
    datetime.combine(AS_OF.date() - timedelta(days=d), time(), UTC) for d in (-1, 0, 1, 3, 30)
]
TIME_POINTS = (
    [AS_OF - timedelta(days=d) for d in (0, 1, 3, 7, 30, 60)]
    + [AS_OF + timedelta(days=1)]
    + MIDNIGHTS
)


# -- data -----------------------------------------------------------------------------------
@st.composite
def props(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        price = draw(st.sampled_from(PRICES))
        out["price"] = str(price) if draw(st.integers(0, 9)) == 0 else price
    if draw(st.booleans()):
        out["qty"] = draw(st.integers(0, 3))
    if draw(st.booleans()):
        out["color"] = draw(st.sampled_from(COLORS))
    if draw(st.booleans()):
        out["item_id"] = draw(st.sampled_from(ITEM_IDS))
    return out


def edges(as_of: datetime) -> list[datetime]:
    """Instants on and around every boundary a window can have at ``as_of``: ``last`` spans
    back from as_of, as_of itself, the ``between`` / ``from`` points and midnights."""
    spans = sorted({d.seconds() for d in DURATIONS})
    bases = [as_of - timedelta(seconds=s) for s in spans] + [as_of, *TIME_POINTS]
    return sorted({b + j for b in bases for j in JITTER})


def edge_attrs(as_of: datetime) -> dict[str, list[str]]:
    """Birthdays whose anniversary is N days after as_of's date (and a day either side), for
    every N "within N days" can draw; datetimes on, and 1 s / 1 µs around, ``in last`` /
    ``in next`` boundaries and midnights."""
    today = as_of.date()
    days = sorted({d.amount for d in DURATIONS if d.unit == "days"} | {0})
    birthdays = {
        (today + timedelta(days=n + j)).replace(year=1990).isoformat()
        for n in days
        for j in (-1, 0, 1)
        if (today + timedelta(days=n + j)).timetuple()[1:3] != (2, 29)
    }
    instants = [as_of - timedelta(seconds=d.seconds()) for d in DURATIONS] + [as_of]
    instants += [as_of + timedelta(seconds=d.seconds()) for d in DURATIONS] + MIDNIGHTS
    stamps = {
        (i + j).astimezone(UTC).isoformat(sep=" ").removesuffix("+00:00")
        for i in instants
        for j in JITTER
    }
    return {"birthday": sorted(birthdays), "last_seen": sorted(stamps)}


@st.composite
def worlds(draw: st.DrawFn, as_of: datetime | None = None) -> World:
    """A world whose times and dates crowd the boundaries of conditions evaluated at
    ``as_of`` (default: one of the as_ofs drawn by ``as_ofs``)."""
    anchor = as_of or draw(st.sampled_from(AS_OF_CHOICES))
    near = edges(anchor)
    raw = {a: list(v) for a, v in RAW_ATTRS.items()}
    for a, extra in edge_attrs(anchor).items():
        raw[a] = raw[a] + extra
    w = World(items=list(ITEMS))
    n = draw(st.integers(1, 5))
    keys = list(range(n))
    for k in keys:
        if draw(st.integers(0, 4)) > 0:
            w.profiles[k] = {a: draw(st.none() | st.sampled_from(v)) for a, v in raw.items()}
    name = st.sampled_from(EVENTS[:3]) | st.sampled_from(EVENTS)
    for person in keys:  # dense: most persons have events at most offsets (edges, ties)
        for offset in OFFSETS:
            for _ in range(draw(st.sampled_from([0, 1, 0, 0, 2]))):
                w.events.append((person, draw(name), AS_OF - offset, draw(props())))
        # on and around the boundaries; often several events at one instant (ties)
        for ts in draw(st.lists(st.sampled_from(near), max_size=6)):
            for _ in range(draw(st.sampled_from([1, 1, 2, 3]))):
                w.events.append((person, draw(name), ts, draw(props())))
    for k in keys:
        for tag, values in TAGS.items():
            for v in values:
                if draw(st.integers(0, 3)) == 0:
                    w.tags.append((k, tag, v))
        for seg, buckets in SEGMENTS.items():
            for b in buckets:
                if draw(st.integers(0, 3)) == 0:
                    w.segments.append((seg, b, k))
    if draw(st.booleans()):  # someone outside the universe
        w.tags.append((99, "hnw", "yes"))
        w.segments.append(("vip", None, 99))
    return w


# -- conditions -----------------------------------------------------------------------------
#: mostly the spans between the event offsets above (edges), sometimes any of the others
EDGE_DURATIONS = [
    Duration(amount=a, unit=u)
    for u, ns in {"minutes": [30], "hours": [1, 2, 3], "days": [1, 29, 30]}.items()
    for a in ns
]
DURATIONS = EDGE_DURATIONS + [
    Duration(amount=a, unit=u)
    for a in (1, 2, 3, 7, 30)
    for u in ("minutes", "hours", "days")
    if Duration(amount=a, unit=u) not in EDGE_DURATIONS
]
durations = st.sampled_from(EDGE_DURATIONS) | st.sampled_from(DURATIONS)
ATTR_VALUES: dict[str, Any] = {
    "string": st.sampled_from(["Shanghai", "Beijing", "S", "hai", "shanghai"]),
    "integer": st.sampled_from([-3, 7, 18, 34, 61]),
    "number": st.sampled_from([-0.5, 0.5, 1.5, 2, 100]),
    "boolean": st.booleans(),
    "datetime": st.sampled_from(
        ["2024-03-01", "2024-02-28 09:00:00", "1990-03-05", "2024-02-29", "2024-03-01 12:00:00"]
    ),
}
ORDERED = [Op.eq, Op.ne, Op.lt, Op.le, Op.gt, Op.ge]


@st.composite
def compares(draw: st.DrawFn, field: str, kind: str, values: Any) -> Compare:
    ops = [*ORDERED, Op.between, Op.in_, Op.not_in, Op.is_set, Op.not_set]
    if kind == "string":
        ops += [Op.contains, Op.starts_with]
    if kind == "boolean":
        ops = [Op.eq, Op.ne, Op.is_set, Op.not_set]
    if kind == "datetime":
        ops += [Op.in_last, Op.in_next, Op.anniversary_in_next]
    op = draw(st.sampled_from(ops))
    value: Any = None
    if op in (Op.in_, Op.not_in):
        value = draw(st.lists(values, min_size=1, max_size=3))
    elif op is Op.between:
        value = sorted(draw(st.lists(values, min_size=2, max_size=2)), key=str)
        if kind != "datetime" and kind != "string":
            value = sorted(value)
    elif op in (Op.in_last, Op.in_next, Op.anniversary_in_next):
        value = draw(durations)
    elif op not in (Op.is_set, Op.not_set):
        value = draw(values)
    return Compare(field=field, op=op, value=value)


@st.composite
def attrs(draw: st.DrawFn) -> Attr:
    field = draw(st.sampled_from(sorted(ATTR_TYPES)))
    kind = ATTR_TYPES[field]
    c = draw(compares(field, kind, ATTR_VALUES[kind]))
    return Attr(field=c.field, op=c.op, value=c.value)


def event_filters() -> st.SearchStrategy[Compare]:
    return st.one_of(
        compares("price", "number", st.sampled_from([10, 99.5, 2000])),
        compares("qty", "integer", st.sampled_from([0, 1, 2])),
        compares("color", "string", st.sampled_from(["red", "Red", "r"])),
        compares("item.category", "string", st.sampled_from(["fridge", "tv", "f"])),
        compares("item.stars", "integer", st.sampled_from([1, 4, 5])),
    )


windows = st.one_of(
    st.just(Window()),
    st.builds(Window, last=durations),
    st.builds(
        lambda a, b: Window(start=min(a, b), end=max(a, b)),
        st.sampled_from(TIME_POINTS),
        st.sampled_from(TIME_POINTS),
    ),
    st.builds(lambda a: Window(start=a), st.sampled_from(TIME_POINTS)),
    st.builds(Window, since_event=st.sampled_from(EVENTS)),
)
few_filters = st.just([]) | st.lists(event_filters(), max_size=1)
steps = st.builds(Step, event=st.sampled_from(EVENTS), where=few_filters)


@st.composite
def dids(draw: st.DrawFn) -> Did:
    agg = draw(st.sampled_from(["count", "count", "sum", "avg", "min", "max", "distinct"]))
    prop = None
    thresholds = [0, 1, 2, 3]
    if agg != "count":
        prop = draw(st.sampled_from(["color", "qty"] if agg == "distinct" else ["price", "qty"]))
        if prop == "price":
            thresholds = [0, 10, 99.5, 2000, 2010.5]
    return Did(
        event=draw(st.sampled_from(EVENTS)),
        where=draw(few_filters | st.lists(event_filters(), max_size=2)),
        agg=agg,
        property=prop,
        op=draw(st.sampled_from(ORDERED)),
        threshold=draw(st.sampled_from(thresholds)),
        window=draw(windows),
    )


@st.composite
def sequences(draw: st.DrawFn) -> Sequence:
    within = draw(durations)
    window = draw(windows)
    if draw(st.integers(0, 2)) == 0:
        return Sequence(steps=[draw(steps)], within=within, then_not=draw(steps), window=window)
    return Sequence(
        steps=draw(st.lists(steps, min_size=2, max_size=3)),
        within=within,
        excluding=draw(st.none() | steps),
        window=window,
    )


leaves = st.one_of(
    attrs(),
    st.builds(
        HasTag,
        tag=st.sampled_from(sorted(TAGS)),
        values=st.none() | st.lists(st.sampled_from(["yes", "gold", "silver", "x"]), max_size=2),
    ),
    st.builds(
        InSegment,
        segment=st.sampled_from(sorted(SEGMENTS)),
        bucket=st.none() | st.sampled_from(["new", "lost", "x"]),
    ),
    dids(),
    sequences(),
)
conditions: st.SearchStrategy[Condition] = st.recursive(
    leaves,
    lambda c: st.one_of(
        st.builds(And, all=st.lists(c, min_size=1, max_size=3)),
        st.builds(Or, any=st.lists(c, min_size=1, max_size=3)),
        st.builds(Not, cond=c),
    ),
    max_leaves=5,
)
as_ofs = st.sampled_from([AS_OF] * 6) | st.sampled_from(AS_OF_CHOICES[1:])


@st.composite
def cases(draw: st.DrawFn) -> tuple[datetime, World]:
    """An as_of and a world whose edges are drawn around that very as_of."""
    as_of = draw(as_ofs)
    return as_of, draw(worlds(as_of))


# -- the check ------------------------------------------------------------------------------
def batch_sets(ctx: to_ibis.BatchContext, conds: list[Condition]) -> list[set[int]]:
    """Each condition's persons from one query (a UNION ALL tagged by condition): one round
    trip per world instead of one per condition keeps the suite fast."""
    parts = [
        to_ibis.compile(c, ctx).mutate(q=ibis.literal(i, "int64")) for i, c in enumerate(conds)
    ]
    rows = parts[0].union(*parts[1:], distinct=False).to_pyarrow().to_pylist()
    out: list[set[int]] = [set() for _ in conds]
    for row in rows:
        out[row["q"]].add(int(row["person_key"]))
    return out


def agree(ctx: to_ibis.BatchContext, world: World, conds: list[Condition], as_of: datetime) -> None:
    """Every compiler's person set equals the reference's, condition by condition."""
    states = world.states()
    got = batch_sets(ctx, conds)
    for cond, batch in zip(conds, got, strict=True):
        expected = reference.matching(cond, states, as_of, attr_types=ATTR_TYPES)
        assert batch == expected, f"to_ibis {sorted(batch)} != reference {sorted(expected)}"
        predicate = to_stream.compile(cond, attr_types=dict(ATTR_TYPES))
        streamed = {s.person for s in states if predicate(s, as_of)}
        assert streamed == expected, f"to_stream {sorted(streamed)} != {sorted(expected)}"


@pytest.fixture(scope="module")
def duck() -> Any:
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    return con


PER_WORLD = 4  # conditions checked on each drawn world: 50 worlds x 4 = 200 trees


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=cases(),
    conds=st.lists(conditions, min_size=PER_WORLD, max_size=PER_WORLD),
    typed=st.booleans(),
)
def test_duckdb_agrees(
    duck: Any, case: tuple[datetime, World], conds: list[Condition], typed: bool
) -> None:
    as_of, world = case
    world.to_duckdb(duck, typed_props=typed)
    ctx = to_ibis.BatchContext(con=duck, as_of=as_of, attr_types=ATTR_TYPES)
    agree(ctx, world, conds, as_of)


def test_every_edge_agrees_deterministically(duck: Any) -> None:
    """One person per boundary instant (on it, ±1 µs, ±1 s), each with a view, a cart and a pay
    at that very instant, and a birthday / last_seen on each edge: every ``last N`` window,
    ``between`` midnights, ``since`` an anchor tied with other events, a sequence over tied
    steps and "birthday within N days" must agree with the reference, whatever the hypothesis
    draws happen to cover."""
    w = World(items=list(ITEMS))
    instants = edges(AS_OF)
    extra = edge_attrs(AS_OF)
    for k, ts in enumerate(instants):
        for name in ("view", "cart", "pay"):
            w.events.append((k, name, ts, {"qty": 1}))
        w.profiles[k] = {
            "birthday": extra["birthday"][k % len(extra["birthday"])],
            "last_seen": extra["last_seen"][k % len(extra["last_seen"])],
        }
    conds: list[Condition] = []
    for d in DURATIONS:
        conds.append(Did(event="view", window=Window(last=d)))
        conds.append(Attr(field="birthday", op=Op.anniversary_in_next, value=d))
        conds.append(Attr(field="last_seen", op=Op.in_last, value=d))
        conds.append(Attr(field="last_seen", op=Op.in_next, value=d))
        conds.append(Sequence(steps=[Step(event="view"), Step(event="cart")], within=d))
        conds.append(Sequence(steps=[Step(event="cart")], then_not=Step(event="pay"), within=d))
    for a in MIDNIGHTS:
        for b in MIDNIGHTS:
            if a < b:
                conds.append(Did(event="pay", window=Window(start=a, end=b)))
        conds.append(Attr(field="last_seen", op=Op.between, value=[a.date().isoformat()] * 2))
    conds.append(Did(event="cart", op=Op.ge, threshold=1, window=Window(since_event="view")))
    conds.append(Did(event="view", op=Op.ge, threshold=1, window=Window(since_event="view")))
    w.to_duckdb(duck)
    ctx = to_ibis.BatchContext(con=duck, as_of=AS_OF, attr_types=ATTR_TYPES)
    for start in range(0, len(conds), 50):
        agree(ctx, w, conds[start : start + 50], AS_OF)
