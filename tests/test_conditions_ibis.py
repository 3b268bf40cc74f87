"""The batch compiler on hand-made data: one case per leaf and window kind, each checked against
the persons a reader would pick out by hand (and against the reference interpreter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ibis
import pytest

from conditions_world import AS_OF, ATTR_TYPES, World
from rapport.conditions import reference, to_ibis
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    And,
    Attr,
    Compare,
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


def ago(**kw: float) -> datetime:
    return AS_OF - timedelta(**kw)


def world() -> World:
    w = World()
    w.profiles = {
        1: {"city": "Shanghai", "age": "34", "vip": "true", "birthday": "1990-03-05"},
        2: {"city": "Beijing", "age": "x", "vip": "no", "birthday": "1992-02-29"},
        3: {"city": "", "age": "61", "score": "2.5", "last_seen": "2024-02-28 09:00:00"},
        4: {"city": "Shenzhen", "birthday": "1985-02-20"},
    }
    w.items = [
        ("product", "h1", "crm", {"category": "hotel", "stars": 5}),
        ("product", "f1", "crm", {"category": "fridge"}),
        ("sku", "f1", "crm", {"category": "ignored: product sorts first"}),
    ]
    # person 1: 30 hotel bookings over 2,000 in the last 30 days -> high net worth
    for i in range(30):
        w.events.append((1, "book_hotel", ago(days=i % 29, hours=1), {"price": 2500.0}))
    # person 2: 30 bookings, but one is cheap; person 5 (events only): old bookings
    for i in range(29):
        w.events.append((2, "book_hotel", ago(days=i % 29, hours=1), {"price": 3000.0}))
    w.events.append((2, "book_hotel", ago(days=2), {"price": 1500.0}))
    for i in range(30):
        w.events.append((5, "book_hotel", ago(days=40 + i), {"price": 5000.0}))
    # sequences: person 3 viewed, carted, paid within an hour; person 4 viewed then nothing
    w.events += [
        (3, "view", ago(hours=5), {"item_id": "f1", "price": 4999}),
        (3, "cart", ago(hours=4, minutes=40), {"item_id": "f1"}),
        (3, "pay", ago(hours=4, minutes=10), {"amount": 4999}),
        (4, "view", ago(hours=5), {"item_id": "h1", "color": "red"}),
        (4, "support", ago(hours=4, minutes=50), {}),
        (4, "cart", ago(hours=4, minutes=40), {"item_id": "h1"}),
        (4, "login", ago(days=3), {}),
        (4, "view", ago(days=1), {"item_id": "f1", "color": "blue"}),
        (3, "view", AS_OF + timedelta(hours=1), {"item_id": "f1"}),  # the future: ignored
    ]
    w.tags = [(1, "hnw", "yes"), (2, "tier", "gold"), (2, "tier", "silver"), (77, "hnw", "yes")]
    w.segments = [("life", "retained", 1), ("life", "lost", 5), ("vip", None, 2)]
    return w


@pytest.fixture(scope="module")
def ctx() -> to_ibis.BatchContext:
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    world().to_duckdb(con)
    return to_ibis.BatchContext(con=con, as_of=AS_OF, attr_types=ATTR_TYPES)


@pytest.fixture(scope="module")
def states() -> list:
    return world().states()


def check(cond, ctx, states, expected: set[int]) -> None:
    got = set(to_ibis.persons(cond, ctx, limit=1000))
    assert got == expected
    assert reference.matching(cond, states, AS_OF, attr_types=ATTR_TYPES) == expected
    assert to_ibis.count(cond, ctx) == len(expected)


def test_high_net_worth_seed_example(ctx, states):
    cond = Did(
        event="book_hotel",
        where=[Compare(field="price", op=Op.gt, value=2000)],
        op=Op.ge,
        threshold=30,
        window=Window(last=Duration(amount=30)),
    )
    check(cond, ctx, states, {1})


CASES = [
    ("attr equals", Attr(field="city", op=Op.eq, value="Shanghai"), {1}),
    ("empty text is not set", Attr(field="city", op=Op.not_set), {3, 5}),
    ("uncastable integer is missing", Attr(field="age", op=Op.is_set), {1, 3}),
    ("integer compare", Attr(field="age", op=Op.gt, value=40), {3}),
    ("between", Attr(field="age", op=Op.between, value=[30, 61]), {1, 3}),
    ("not equal skips missing", Attr(field="age", op=Op.ne, value=34), {3}),
    ("boolean words", Attr(field="vip", op=Op.eq, value=False), {2}),
    ("in list", Attr(field="city", op=Op.in_, value=["Beijing", "Shenzhen"]), {2, 4}),
    ("not in skips missing", Attr(field="city", op=Op.not_in, value=["Beijing"]), {1, 4}),
    ("contains is case-sensitive", Attr(field="city", op=Op.contains, value="hai"), {1}),
    ("starts with", Attr(field="city", op=Op.starts_with, value="S"), {1, 4}),
    ("number", Attr(field="score", op=Op.ge, value=2.5), {3}),
    ("unknown column is unset", Attr(field="nickname", op=Op.not_set), {1, 2, 3, 4, 5}),
    (
        "seen in the last 3 days",
        Attr(field="last_seen", op=Op.in_last, value=Duration(amount=3)),
        {3},
    ),
    (
        "birthday within 7 days (this year's Feb 29 has passed)",
        Attr(field="birthday", op=Op.anniversary_in_next, value=Duration(amount=7)),
        {1},
    ),
    ("datetime compare", Attr(field="birthday", op=Op.lt, value="1991-01-01"), {1, 4}),
    ("has tag (only persons of the universe)", HasTag(tag="hnw"), {1}),
    ("tag value", HasTag(tag="tier", values=["silver", "bronze"]), {2}),
    ("audience", InSegment(segment="vip"), {2}),
    ("bucket", InSegment(segment="life", bucket="lost"), {5}),
    ("any bucket", InSegment(segment="life"), {1, 5}),
    ("did at all, ever", Did(event="book_hotel"), {1, 2, 5}),
    ("did not", Not(cond=Did(event="book_hotel")), {3, 4}),
    (
        "count = 0 includes persons without events",
        Did(event="view", op=Op.eq, threshold=0),
        {1, 2, 5},
    ),
    (
        "future events are ignored",
        Did(event="view", op=Op.ge, threshold=2),
        {4},
    ),
    (
        "between dates",
        Did(event="book_hotel", window=Window(start=ago(days=70), end=ago(days=60))),
        {5},
    ),
    ("since an anchor", Did(event="view", window=Window(since_event="login")), {4}),
    ("since an anchor nobody did", Did(event="view", window=Window(since_event="nope")), set()),
    (
        "in the last N hours",
        Did(event="cart", window=Window(last=Duration(amount=5, unit="hours"))),
        {3, 4},
    ),
    (
        "sum",
        Did(event="book_hotel", agg="sum", property="price", op=Op.gt, threshold=100_000),
        {5},
    ),
    (
        "avg ignores persons without events",
        Did(event="book_hotel", agg="avg", property="price", op=Op.lt, threshold=10_000),
        {1, 2, 5},
    ),
    (
        "min",
        Did(event="book_hotel", agg="min", property="price", op=Op.lt, threshold=2000),
        {2},
    ),
    (
        "distinct",
        Did(event="view", agg="distinct", property="color", op=Op.ge, threshold=2),
        {4},
    ),
    (
        "item property",
        Did(event="view", where=[Compare(field="item.category", op=Op.eq, value="fridge")]),
        {3, 4},
    ),
    (
        "numeric item property",
        Did(event="view", where=[Compare(field="item.stars", op=Op.ge, value=4)]),
        {4},
    ),
    (
        "event property not set",
        Did(event="view", where=[Compare(field="color", op=Op.not_set)]),
        {3},
    ),
    (
        "sequence within an hour",
        Sequence(
            steps=[Step(event="view"), Step(event="cart"), Step(event="pay")],
            within=Duration(amount=1, unit="hours"),
        ),
        {3},
    ),
    (
        "sequence too slow",
        Sequence(
            steps=[Step(event="view"), Step(event="cart")],
            within=Duration(amount=10, unit="minutes"),
        ),
        set(),
    ),
    (
        "sequence without support in between",
        Sequence(
            steps=[Step(event="view"), Step(event="cart")],
            within=Duration(amount=1, unit="hours"),
            excluding=Step(event="support"),
        ),
        {3},
    ),
    (
        "view and not pay within 2 hours",
        Sequence(
            steps=[Step(event="view")],
            within=Duration(amount=2, unit="hours"),
            then_not=Step(event="pay"),
        ),
        {4},
    ),
    (
        "and / or / not",
        Or(
            any=[
                And(all=[HasTag(tag="hnw"), Not(cond=Attr(field="city", op=Op.eq, value="x"))]),
                And(all=[Not(cond=Did(event="book_hotel")), Attr(field="age", op=Op.is_set)]),
            ]
        ),
        {1, 3},
    ),
]


@pytest.mark.parametrize("cond,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(cond, expected, ctx, states):
    check(cond, ctx, states, expected)


def test_event_is_is_for_triggers_only(ctx):
    with pytest.raises(ConditionError, match="triggers only") as err:
        to_ibis.compile(And(all=[HasTag(tag="hnw"), EventIs(event="view")]), ctx)
    assert err.value.path == "$.all[1]"


def test_bad_value_names_its_place(ctx):
    with pytest.raises(ConditionError, match="not a integer") as err:
        to_ibis.compile(Or(any=[Attr(field="age", op=Op.eq, value="old")]), ctx)
    assert err.value.path == "$.any[0]"


def test_typed_property_columns_are_used(ctx):
    """With the loader's ``prop_<name>`` columns present the answer is the same."""
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    world().to_duckdb(con, typed_props=True)
    typed = to_ibis.BatchContext(con=con, as_of=AS_OF, attr_types=ATTR_TYPES)
    cond = Did(
        event="book_hotel",
        where=[Compare(field="price", op=Op.gt, value=2000)],
        threshold=30,
        window=Window(last=Duration(amount=30)),
    )
    assert to_ibis.persons(cond, typed) == [1]


def test_as_of_must_be_aware(ctx):
    with pytest.raises(ValueError):
        to_ibis.BatchContext(con=ctx.con, as_of=datetime(2024, 1, 1))


def test_leap_day_birthday_falls_on_feb_28(ctx, states):
    as_of = datetime(2025, 2, 25, 8, 0, tzinfo=UTC)
    later = to_ibis.BatchContext(con=ctx.con, as_of=as_of, attr_types=ATTR_TYPES)
    cond = Attr(field="birthday", op=Op.anniversary_in_next, value=Duration(amount=7))
    assert to_ibis.persons(cond, later) == [2]
    assert reference.matching(cond, states, as_of, attr_types=ATTR_TYPES) == {2}


# -- the edges of windows and sequences, exactly as the common semantics put them ----------
T = AS_OF - timedelta(days=1)
M = timedelta(minutes=1)
EDGES = [
    # last 1 hour is (as_of - 1h, as_of]: person 2 only
    (1, "w", AS_OF - 60 * M),
    (2, "w", AS_OF),
    (3, "w", AS_OF + M),
    # between dates is [start, end)
    (3, "r", T),
    (4, "r", T + 60 * M),
    # since the latest login: strictly after it
    (5, "login", T),
    (5, "s", T),
    (6, "login", T - 60 * M),
    (6, "s", T + 30 * M),
    (6, "login", T),
    # a then b within 1 hour: inclusive span, strictly increasing times
    (7, "a", T),
    (7, "b", T + 60 * M),
    (8, "a", T),
    (8, "b", T + 90 * M),
    (9, "a", T),
    (9, "b", T),
    # c then d without x strictly in between
    (10, "c", T),
    (10, "x", T),
    (10, "d", T + 30 * M),
    (11, "c", T),
    (11, "x", T + 10 * M),
    (11, "d", T + 30 * M),
    (15, "c", T),
    (15, "x", T + 30 * M),
    (15, "d", T + 30 * M),
    # m and not n within 1 hour: judged once the hour has passed, n at the end counts
    (12, "m", AS_OF - 60 * M),
    (12, "n", AS_OF),
    (13, "m", AS_OF - 60 * M),
    (14, "m", AS_OF - 30 * M),
]
HOUR = Duration(amount=1, unit="hours")
EDGE_CASES = [
    ("last window", Did(event="w", window=Window(last=HOUR)), {2}),
    ("between dates", Did(event="r", window=Window(start=T, end=T + 60 * M)), {3}),
    ("since", Did(event="s", window=Window(since_event="login")), {6}),
    (
        "within",
        Sequence(steps=[Step(event="a"), Step(event="b")], within=HOUR),
        {7},
    ),
    (
        "without in between",
        Sequence(steps=[Step(event="c"), Step(event="d")], within=HOUR, excluding=Step(event="x")),
        {10, 15},
    ),
    (
        "then not",
        Sequence(steps=[Step(event="m")], within=HOUR, then_not=Step(event="n")),
        {13},
    ),
]


@pytest.fixture(scope="module")
def edges() -> tuple[to_ibis.BatchContext, list]:
    w = World(events=[(p, name, ts, {}) for p, name, ts in EDGES])
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    w.to_duckdb(con)
    return to_ibis.BatchContext(con=con, as_of=AS_OF, attr_types=ATTR_TYPES), w.states()


@pytest.mark.parametrize(
    "cond,expected", [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_edges(cond, expected, edges):
    ctx, states = edges
    check(cond, ctx, states, expected)


def test_a_kept_universe_table_is_everyone(ctx):
    """A caller that keeps the list of persons spares NOT a scan of every event."""
    ctx.con.create_table("everyone", ibis.memtable({"person_key": [1, 2, 3, 4, 5, 42]}))
    kept = to_ibis.BatchContext(
        con=ctx.con,
        as_of=AS_OF,
        attr_types=ATTR_TYPES,
        tables={**to_ibis.DEFAULT_TABLES, "universe": "everyone"},
    )
    assert to_ibis.persons(Not(cond=HasTag(tag="hnw")), kept) == [2, 3, 4, 5, 42]
    assert to_ibis.count(Not(cond=HasTag(tag="hnw")), kept) == 5
