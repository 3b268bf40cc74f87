"""Both compilers and the reference interpreter pick the same persons (issue 4, "Done when").

Hypothesis draws a small warehouse (persons with typed-or-garbage attributes, tags, segment
memberships, events with properties and item ids on a coarse time grid so that ties and window
edges happen, items with a duplicate id) and a random condition tree over that vocabulary. The
batch compiler runs it on DuckDB (and, in ``test_conditions_spark.py``, on Spark), the stream
compiler over the same persons' states; every answer must equal ``reference.matching``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
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
TIME_POINTS = [AS_OF - timedelta(days=d) for d in (0, 1, 3, 7, 30, 60)] + [
    AS_OF + timedelta(days=1)
]


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


@st.composite
def worlds(draw: st.DrawFn) -> World:
    w = World(items=list(ITEMS))
    n = draw(st.integers(1, 5))
    keys = list(range(n))
    for k in keys:
        if draw(st.integers(0, 4)) > 0:
            w.profiles[k] = {a: draw(st.none() | st.sampled_from(v)) for a, v in RAW_ATTRS.items()}
    for person in keys:  # dense: most persons have events at most offsets (edges, ties)
        for offset in OFFSETS:
            for _ in range(draw(st.sampled_from([0, 1, 0, 0, 2]))):
                name = draw(st.sampled_from(EVENTS[:3]) | st.sampled_from(EVENTS))
                w.events.append((person, name, AS_OF - offset, draw(props())))
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
#: mostly the spans between the event offsets above (edges), sometimes anything
durations = st.sampled_from(
    [
        Duration(amount=a, unit=u)
        for u, ns in {"minutes": [30], "hours": [1, 2, 3], "days": [1, 29, 30]}.items()
        for a in ns
    ]
) | st.builds(
    Duration,
    amount=st.sampled_from([1, 2, 3, 7, 30]),
    unit=st.sampled_from(["minutes", "hours", "days"]),
)
ATTR_VALUES: dict[str, Any] = {
    "string": st.sampled_from(["Shanghai", "Beijing", "S", "hai", "shanghai"]),
    "integer": st.sampled_from([-3, 7, 18, 34, 61]),
    "number": st.sampled_from([-0.5, 0.5, 1.5, 2, 100]),
    "boolean": st.booleans(),
    "datetime": st.sampled_from(["2024-03-01", "2024-02-28 09:00:00", "1990-03-05"]),
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
as_ofs = st.sampled_from([AS_OF] * 6) | st.sampled_from(
    [AS_OF - timedelta(hours=1), AS_OF + timedelta(hours=7, minutes=30), AS_OF.replace(month=2)]
)


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
    world=worlds(),
    conds=st.lists(conditions, min_size=PER_WORLD, max_size=PER_WORLD),
    as_of=as_ofs,
    typed=st.booleans(),
)
def test_duckdb_agrees(
    duck: Any, world: World, conds: list[Condition], as_of: datetime, typed: bool
) -> None:
    world.to_duckdb(duck, typed_props=typed)
    ctx = to_ibis.BatchContext(con=duck, as_of=as_of, attr_types=ATTR_TYPES)
    agree(ctx, world, conds, as_of)
