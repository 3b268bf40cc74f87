"""Sequence patterns for lead rules (docs/conditions.md, "Sequences" and "Trigger matches"):
strict contiguity, counting, step references and trigger matches, each proved on hand-built
histories; the stream trigger fed one event at a time (in order, and out of order inside an
allowed lateness with the watermark held back) gives exactly the reference's matches."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rapport.conditions import reference
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    Compare,
    Condition,
    Duration,
    Op,
    Ref,
    Sequence,
    Step,
    Unit,
    from_json,
    to_json,
)
from rapport.conditions.reference import Match, trigger_matches
from rapport.conditions.text import parse, to_text
from rapport.conditions.to_stream import compile, compile_trigger
from rapport.stream.state import EventRec, PersonState

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
END = T0 + timedelta(days=1)
MICRO = timedelta(microseconds=1)
#: ``rapport.leads.seed.SEED_RULE``'s trigger with the step reference it was waiting for
SEED_RULE = (
    'sequence view_product as a where category = "fridge" and price >= 5000 and duration_s >= 60 '
    "then not order_paid where item_id = a.item_id within 30 minutes"
)


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


class Person:
    """A hand-built history: ``add`` numbers the events (their ids) in the order written."""

    def __init__(self) -> None:
        self.events: list[EventRec] = []

    def add(
        self, minute: float, event: str, item: dict[str, Any] | None = None, **props: Any
    ) -> EventRec:
        rec = EventRec(at(minute), event, props, item, id=f"e{len(self.events):03d}")
        self.events.append(rec)
        return rec


def shown(matches: list[Match]) -> list[tuple[datetime, list[str | None]]]:
    return [(m.fired_at, [e.id for e in m.evidence]) for m in matches]


def stream(cond: Condition, events: list[EventRec], until: datetime = END) -> list[Match]:
    """The stream trigger fed in order, with a timer before each event and at ``until``."""
    trig = compile_trigger(cond)
    state = PersonState(1)
    out: list[Match] = []
    for e in sorted(events, key=reference.order):
        out += trig.on_timer(state, e.ts - MICRO)
        state.add(e)
        out += trig.on_event(state, e)
    out += trig.on_timer(state, until)
    return out


def held_back(
    cond: Condition, arrivals: list[EventRec], lateness: timedelta, until: datetime = END
) -> list[Match]:
    """The engine's reorder buffer: events arrive in any order, no later than ``lateness``
    after a later event; they are fed once the watermark (latest time seen - lateness) passes
    them, in event-time order, and the timers fire at each watermark."""
    trig = compile_trigger(cond)
    state = PersonState(1)
    buffer: list[EventRec] = []
    seen: datetime | None = None
    out: list[Match] = []

    def release(watermark: datetime) -> None:
        nonlocal buffer
        ready = sorted((e for e in buffer if e.ts <= watermark), key=reference.order)
        buffer = [e for e in buffer if e.ts > watermark]
        for e in ready:
            out.extend(trig.on_timer(state, e.ts - MICRO))
            state.add(e)
            out.extend(trig.on_event(state, e))
        out.extend(trig.on_timer(state, watermark))

    for e in arrivals:
        buffer.append(e)
        seen = e.ts if seen is None else max(seen, e.ts)
        release(seen - lateness)
    release(until)
    return out


def both(cond: Condition, events: list[EventRec], until: datetime = END) -> list[Any]:
    """The reference's matches, checked equal to the stream's; shown as (time, ids)."""
    ref = trigger_matches(cond, events, until)
    got = stream(cond, events, until)
    assert sorted(shown(got)) == sorted(shown(ref))
    assert sorted(m.key for m in got) == sorted(m.key for m in ref)
    return shown(ref)


# -- contiguity -----------------------------------------------------------------------------
def test_next_needs_the_very_next_event_then_allows_others_between():
    p = Person()
    p.add(0, "view_product")
    p.add(1, "page_view")
    p.add(2, "add_to_cart")
    relaxed = parse("sequence view_product then add_to_cart within 10 minutes")
    strict = parse("sequence view_product next add_to_cart within 10 minutes")
    assert both(relaxed, p.events) == [(at(2), ["e000", "e002"])]
    assert both(strict, p.events) == []
    p.add(3, "view_product")
    p.add(4, "add_to_cart")
    assert both(strict, p.events) == [(at(4), ["e003", "e004"])]


def test_system_events_and_events_at_the_same_time_do_not_break_next():
    p = Person()
    p.add(0, "view_product")
    p.add(1, "lifecycle_changed")  # Rapport's own: the person did nothing
    p.add(2, "add_to_cart")
    p.add(2, "page_view")  # the same time as the next step: not between
    strict = parse("sequence view_product next add_to_cart within 10 minutes")
    assert both(strict, p.events) == [(at(2), ["e000", "e002"])]
    state = PersonState(1, events=list(p.events))
    assert compile(strict)(state, END) is True
    assert reference.evaluate(strict, state, END, attr_types={}) is True


def test_next_on_the_stream_reads_every_event():
    strict = parse("sequence view_product next add_to_cart within 10 minutes")
    assert compile_trigger(strict).interest is None  # any event can break it
    relaxed = parse("sequence view_product then add_to_cart within 10 minutes")
    assert compile_trigger(relaxed).interest == {"view_product", "add_to_cart"}


# -- counting -------------------------------------------------------------------------------
def test_counting_at_the_window_edge():
    rule = parse("sequence 3 times view_product within 10 minutes")
    p = Person()
    p.add(0, "view_product")
    p.add(5, "view_product")
    p.add(10, "view_product")  # exactly 10 minutes after the first: inside
    assert both(rule, p.events) == [(at(10), ["e000", "e001", "e002"])]
    q = Person()
    q.add(0, "view_product")
    q.add(5, "view_product")
    q.add(10, "view_product").ts += MICRO  # 1 µs too late for the first
    assert both(rule, q.events) == []


def test_counting_needs_strictly_increasing_times_and_does_not_overlap():
    rule = parse("sequence 2 times view_product within 10 minutes")
    p = Person()
    p.add(0, "view_product")
    p.add(0, "view_product")  # the same time: not a second occurrence after the first
    assert both(rule, p.events) == []
    p.add(1, "view_product")
    p.add(2, "view_product")  # starts after the first match's end: no overlap, next match at 3
    p.add(3, "view_product")
    assert both(rule, p.events) == [
        (at(1), ["e000", "e002"]),
        (at(3), ["e003", "e004"]),
    ]


# -- references -----------------------------------------------------------------------------
def test_reference_equality_with_two_interleaved_items():
    rule = parse(
        "sequence add_to_cart as a then order_paid where item_id = a.item_id within 30 minutes"
    )
    p = Person()
    p.add(0, "add_to_cart", item_id="fridge-1")
    p.add(1, "add_to_cart", item_id="tv-7")
    p.add(2, "order_paid", item_id="tv-7")
    p.add(3, "order_paid", item_id="fridge-1")
    p.add(4, "order_paid", item_id="fridge-1")  # the fridge chain already fired: no overlap
    assert both(rule, p.events) == [
        (at(2), ["e001", "e002"]),
        (at(3), ["e000", "e003"]),
    ]


def test_reference_other_comparisons_and_numbers():
    rule = parse("sequence view_product as a then view_product where price < a.price within 1 hour")
    p = Person()
    p.add(0, "view_product", price=5000)
    p.add(1, "view_product", price="4999.5")  # text that reads as a number compares as one
    p.add(2, "view_product")  # no price: never matches
    assert both(rule, p.events) == [(at(1), ["e000", "e001"])]


# -- selection ------------------------------------------------------------------------------
def test_the_latest_start_is_chosen_and_ties_go_to_the_lowest_id():
    rule = parse("sequence view_product then add_to_cart within 10 minutes")
    p = Person()
    p.add(0, "view_product")
    p.add(1, "view_product")
    p.add(1, "view_product")
    p.add(2, "add_to_cart")
    p.add(2, "add_to_cart")
    assert both(rule, p.events) == [(at(2), ["e001", "e003"])]


def test_without_kills_the_chains_it_falls_inside():
    rule = parse(
        "sequence add_to_cart as a then checkout within 30 minutes "
        "without remove_from_cart where item_id = a.item_id"
    )
    p = Person()
    p.add(0, "add_to_cart", item_id="1")
    p.add(1, "remove_from_cart", item_id="2")  # another item: does not break it
    p.add(2, "checkout")
    assert both(rule, p.events) == [(at(2), ["e000", "e002"])]
    q = Person()
    q.add(0, "add_to_cart", item_id="1")
    q.add(1, "remove_from_cart", item_id="1")
    q.add(2, "checkout")
    assert both(rule, q.events) == []


# -- absence --------------------------------------------------------------------------------
def test_absence_fires_exactly_at_a_plus_t():
    rule = parse("sequence add_to_cart then not order_paid within 30 minutes")
    p = Person()
    p.add(0, "add_to_cart")
    assert both(rule, p.events) == [(at(30), ["e000"])]
    trig = compile_trigger(rule)
    state = PersonState(1)
    state.add(p.events[0])
    assert trig.on_event(state, p.events[0]) == []
    assert trig.deadline(state) == at(30)
    assert trig.on_timer(state, at(30) - MICRO) == []
    assert shown(trig.on_timer(state, at(30))) == [(at(30), ["e000"])]
    assert trig.on_timer(state, at(31)) == []  # once
    assert trig.deadline(state) is None


@pytest.mark.parametrize("paid_at", [at(30) - MICRO, at(30)])
def test_absence_is_cancelled_by_b_up_to_and_at_a_plus_t(paid_at: datetime):
    rule = parse("sequence add_to_cart then not order_paid within 30 minutes")
    p = Person()
    p.add(0, "add_to_cart")
    p.add(0, "order_paid").ts = paid_at
    assert both(rule, p.events) == []
    late = Person()
    late.add(0, "add_to_cart")
    late.add(0, "order_paid").ts = at(30) + MICRO
    assert both(rule, late.events) == [(at(30), ["e000"])]


def test_absence_absorbs_repeats_and_restarts_after_b():
    rule = parse("sequence add_to_cart then not order_paid within 30 minutes")
    p = Person()
    p.add(0, "add_to_cart")
    p.add(10, "add_to_cart")  # inside the open wait: absorbed
    p.add(40, "add_to_cart")  # after it fired: a new wait
    p.add(50, "order_paid")
    p.add(50, "add_to_cart")  # at B's time: B does not cancel it (B is not after it)
    assert both(rule, p.events) == [(at(30), ["e000"]), (at(80), ["e004"])]


def test_the_seed_lead_rule():
    rule = parse(SEED_RULE)
    assert to_text(rule) == SEED_RULE
    p = Person()
    view = {"category": "fridge", "price": 6999, "duration_s": 75}
    p.add(0, "view_product", item_id="F1", **view)
    p.add(1, "view_product", item_id="F2", **view | {"price": 5000, "duration_s": 60})
    p.add(2, "view_product", item_id="F3", **view | {"price": 4999})  # too cheap
    p.add(3, "view_product", item_id="T1", **view | {"category": "tv"})
    p.add(4, "view_product", item_id="F4", **view | {"duration_s": 20})  # too short
    p.add(5, "view_product", item_id="F5", **view)
    p.add(12, "order_paid", item_id="F2")  # F2 bought: no lead for it
    p.add(20, "view_product", item_id="F1", **view)  # F1 still waiting: absorbed
    p.add(34, "order_paid", item_id="F5")  # F5 bought 29 minutes later: no lead
    assert both(rule, p.events) == [(at(30), ["e000"])]


# -- late events ------------------------------------------------------------------------------
def test_late_events_inside_the_lateness_are_matched_in_event_time_order():
    rule = parse("sequence view_product then add_to_cart within 10 minutes without remove")
    p = Person()
    view, remove, add = p.add(0, "view_product"), p.add(2, "remove"), p.add(3, "add_to_cart")
    again = p.add(4, "view_product")
    cart = p.add(6, "add_to_cart")
    arrivals = [view, add, again, remove, cart]  # remove arrives 2 minutes late
    ref = shown(trigger_matches(rule, p.events, END))
    assert ref == [(at(6), ["e003", "e004"])]
    assert shown(held_back(rule, arrivals, timedelta(minutes=3))) == ref


def test_an_event_later_than_the_lateness_rereads_the_history_and_keeps_keys():
    """Not held back (beyond the lateness): the trigger reads the history again and reports
    the matches at or after the late event, the ones already reported with the same key."""
    rule = parse("sequence view_product then add_to_cart within 10 minutes")
    p = Person()
    view, cart, early = p.add(5, "view_product"), p.add(6, "add_to_cart"), p.add(1, "view_product")
    late_cart = p.add(3, "add_to_cart")
    trig = compile_trigger(rule)
    state = PersonState(1)
    fired = []
    for e in (view, cart, early, late_cart):
        state.add(e)
        fired.append(shown(trig.on_event(state, e)))
    assert fired == [
        [],
        [(at(6), ["e000", "e001"])],
        [(at(6), ["e000", "e001"])],  # again, the same key: the lead store drops it
        [(at(3), ["e002", "e003"]), (at(6), ["e000", "e001"])],
    ]
    assert sorted(shown(trigger_matches(rule, p.events, END))) == fired[-1]


# -- text, JSON and validation ----------------------------------------------------------------
FORMS = [
    "sequence view_product next add_to_cart within 10 minutes",
    "sequence 3 times view_product within 10 minutes",
    'sequence view_product as a where item.category = "fridge" then not order_paid '
    "where item_id = a.item_id within 30 minutes",
    "sequence search as s then 2 times view_product where keyword = s.query next "
    "add_to_cart where item.brand != s.item.brand within 1 hour",
    "sequence add_to_cart as a then checkout within 30 minutes without remove_from_cart "
    "where item_id = a.item_id",
]


@pytest.mark.parametrize("text", FORMS)
def test_every_new_form_round_trips(text: str):
    cond = parse(text)
    assert to_text(cond) == text
    assert from_json(to_json(cond)) == cond


def test_plain_steps_keep_their_json():
    cond = parse("sequence a then b within 1 minute")
    assert to_json(cond)["steps"] == [{"event": "a", "where": []}, {"event": "b", "where": []}]


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            "sequence view_product then order_paid where item_id = a.item_id within 3 minutes",
            "line 1, column 55",
            "`a.item_id` refers to no earlier step: name a step with `as a` before this one "
            "(named so far: none yet)",
        ),
        (
            "sequence 3 times view_product as v within 1 minute",
            "line 1, column 31",
            "a counted step cannot be named: which occurrence would it be?",
        ),
        (
            "sequence view_product as v then order_paid as v within 1 minute",
            "line 1, column 47",
            "`v` already names a step",
        ),
        (
            "sequence view_product then not 2 times order_paid within 1 minute",
            "line 1, column 32",
            "`not` takes an event and filters, not a count",
        ),
        (
            "sequence a as x then b as y then c within 1 minute without d where k = y.k",
            "line 1, column 72",
            "`without` compares only with the first step (the events between the first and "
            "the last are judged as they come)",
        ),
    ],
)
def test_positioned_errors(text: str, path: str, message: str):
    with pytest.raises(ConditionError) as caught:
        parse(text)
    assert (caught.value.path, caught.value.message) == (path, message)


def test_json_errors_name_the_path():
    bad = {
        "kind": "sequence",
        "steps": [{"event": "a", "next": True}, {"event": "b"}],
        "within": {"amount": 1, "unit": "minutes"},
    }
    with pytest.raises(ValueError, match=r"steps\[0\]\.next: the first step"):
        from_json(bad)
    ref_in_did = {
        "kind": "did",
        "event": "a",
        "where": [{"field": "x", "op": "=", "value": {"ref": "a.x"}}],
    }
    with pytest.raises(ValueError, match="only sequences can"):
        from_json(ref_in_did)
    with pytest.raises(ConditionError, match="takes no window"):
        compile_trigger(parse("sequence a then b within 1 minute in last 3 days"))
    with pytest.raises(ConditionError, match="a trigger is"):
        compile_trigger(parse("age > 3"))


# -- random histories: the stream trigger == the reference --------------------------------------
NAMES = ["a", "b", "a", "b", "c", "lifecycle_changed"]
ITEMS = {"i1": {"c": "fridge", "w": 60}, "i2": {"c": "tv", "w": "60"}}


@st.composite
def histories(draw: st.DrawFn) -> list[EventRec]:
    n = draw(st.integers(2, 12))
    out = []
    for i in range(n):
        props: dict[str, Any] = {}
        if draw(st.integers(0, 3)):
            props["k"] = draw(st.sampled_from(["1", "2", 1, 2.5]))
        if draw(st.integers(0, 3)):
            props["p"] = draw(st.integers(0, 3))
        item = None
        if draw(st.booleans()):
            props["item_id"] = draw(st.sampled_from(sorted(ITEMS)))
            item = ITEMS[props["item_id"]]
        ts = T0 + timedelta(minutes=draw(st.integers(0, 10)))
        out.append(EventRec(ts, draw(st.sampled_from(NAMES)), props, item, id=f"e{i:02d}"))
    return out


@st.composite
def steps_(draw: st.DrawFn, index: int, aliases: list[str]) -> Step:
    where: list[Compare] = []
    if draw(st.booleans()):
        where.append(Compare(field="p", op=Op.le, value=draw(st.integers(1, 3))))
    if aliases and draw(st.booleans()):
        op = draw(st.sampled_from([Op.eq, Op.ne, Op.lt, Op.ge]))
        field = draw(st.sampled_from(["k", "p", "item.c", "item.w"]))
        where.append(Compare(field=field, op=op, value=Ref(ref=f"{aliases[0]}.{field}")))
    times = draw(st.sampled_from([1, 1, 2]))
    alias = "x" if index == 0 and times == 1 and draw(st.booleans()) else None
    return Step(
        event=draw(st.sampled_from(NAMES)),
        where=where,
        alias=alias,
        next=index > 0 and draw(st.booleans()),
        times=times,
    )


@st.composite
def triggers(draw: st.DrawFn) -> Sequence:
    first = draw(steps_(0, []))
    aliases = [first.alias] if first.alias else []
    within = Duration(amount=draw(st.sampled_from([2, 4, 8])), unit=Unit.minutes)
    if draw(st.integers(0, 3)) == 0 and first.times == 1:
        then_not = draw(steps_(1, aliases)).model_copy(update={"next": False, "times": 1})
        return Sequence(steps=[first], within=within, then_not=then_not)
    steps = [first] + [draw(steps_(i, aliases)) for i in range(1, draw(st.integers(2, 3)))]
    excluding = None
    if draw(st.integers(0, 3)) == 0:
        excluding = draw(steps_(1, aliases)).model_copy(update={"next": False, "times": 1})
    return Sequence(steps=steps, within=within, excluding=excluding)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(triggers(), histories(), st.randoms(use_true_random=False))
def test_stream_trigger_equals_the_reference(
    cond: Sequence, events: list[EventRec], rnd: random.Random
):
    until = T0 + timedelta(minutes=20)
    ref = sorted(shown(trigger_matches(cond, events, until)))
    assert sorted(shown(stream(cond, events, until))) == ref
    lateness = timedelta(minutes=rnd.choice([1, 3]))
    jitter = {id(e): rnd.random() * lateness.total_seconds() for e in events}
    arrivals = sorted(events, key=lambda e: e.ts + timedelta(seconds=jitter[id(e)]))
    assert sorted(shown(held_back(cond, arrivals, lateness, until))) == ref
    # the boolean form agrees with "some chain / some absence" as of ``until``
    state = PersonState(1, events=list(events))
    assert compile(cond)(state, until) == reference.evaluate(cond, state, until, attr_types={})


@st.composite
def windows_(draw: st.DrawFn) -> Any:
    from rapport.conditions.model import Window

    kind = draw(st.sampled_from(["none", "last", "since", "between"]))
    if kind == "last":
        return Window(last=Duration(amount=draw(st.integers(1, 12)), unit=Unit.minutes))
    if kind == "since":
        return Window(since_event="c")
    if kind == "between":
        return Window(start=at(draw(st.integers(0, 5))), end=at(draw(st.integers(5, 12))))
    return Window()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(triggers(), windows_(), histories(), st.integers(0, 20))
def test_boolean_patterns_on_the_stream_equal_the_reference(
    cond: Sequence, window: Any, events: list[EventRec], minute: int
):
    cond = cond.model_copy(update={"window": window})
    state = PersonState(1, events=list(events))
    as_of = at(minute)
    want = reference.evaluate(cond, state, as_of, attr_types={})
    assert compile(cond)(state, as_of) == want
    assert reference.evaluate(cond, state, as_of, attr_types={}) == want


# -- the batch backtest == the reference ---------------------------------------------------------
@pytest.fixture(scope="module")
def duck() -> Any:
    import ibis

    return ibis.duckdb.connect()


def load(con: Any, persons: list[list[EventRec]]) -> None:
    """The persons' events (and the items) as warehouse tables: ``properties`` as JSON."""
    import json

    import pyarrow as pa

    rows = [(k, e) for k, events in enumerate(persons) for e in events]
    events = pa.table(
        {
            "person_key": pa.array([k for k, _ in rows], pa.int64()),
            "event": pa.array([e.event for _, e in rows], pa.string()),
            "ts": pa.array([e.ts for _, e in rows], pa.timestamp("us", tz="UTC")),
            "event_id": pa.array([e.id for _, e in rows], pa.string()),
            "properties": pa.array([json.dumps(e.props) for _, e in rows], pa.string()),
        }
    )
    items = pa.table(
        {
            "item_type": pa.array(["product"] * len(ITEMS)),
            "item_id": pa.array(sorted(ITEMS)),
            "source": pa.array(["shop"] * len(ITEMS)),
            "properties": pa.array([json.dumps(ITEMS[i]) for i in sorted(ITEMS)]),
        }
    )
    raw = con.con
    for name, table in (("events", events), ("items", items)):
        raw.register("__t", table)
        raw.execute(
            f"CREATE OR REPLACE TABLE {name} AS SELECT * REPLACE (properties::JSON AS "
            "properties) FROM __t"
        )
        raw.unregister("__t")


def batch(con: Any, cond: Condition, start: datetime, end: datetime) -> list[Any]:
    from rapport.conditions.to_ibis import trigger_matches as batch_matches

    table = batch_matches(cond, con, start, end).to_pyarrow().to_pylist()
    return sorted((r["person_key"], r["fired_at"], r["evidence"], r["key"]) for r in table)


def expected(cond: Condition, persons: list[list[EventRec]], start: datetime, end: datetime):
    return sorted(
        (k, m.fired_at, [e.id for e in m.evidence], m.key)
        for k, events in enumerate(persons)
        for m in trigger_matches(cond, events, end)
        if start <= m.fired_at < end
    )


def test_the_seed_rule_backtests_like_the_stream(duck: Any):
    view = {"category": "fridge", "price": 6999, "duration_s": 75}
    p = Person()
    p.add(0, "view_product", item_id="F1", **view)
    p.add(1, "view_product", item_id="F2", **view)
    p.add(12, "order_paid", item_id="F2")
    q = Person()
    q.add(5, "view_product", item_id="F9", **view)
    load(duck, [p.events, q.events])
    rule = parse(SEED_RULE)
    got = batch(duck, rule, T0, END)
    assert [(k, t, ids) for k, t, ids, _ in got] == [(0, at(30), ["e000"]), (1, at(35), ["e000"])]
    assert got[0][3] == trigger_matches(rule, p.events, END)[0].key


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(triggers(), st.lists(histories(), min_size=1, max_size=3), st.integers(0, 12))
def test_batch_trigger_matches_equal_the_reference(
    duck: Any, cond: Sequence, persons: list[list[EventRec]], begin: int
):
    load(duck, persons)
    start, end = at(begin), at(begin + 8)
    assert batch(duck, cond, start, end) == expected(cond, persons, start, end)
    event = parse("event a where p <= 2")
    assert batch(duck, event, start, end) == expected(event, persons, start, end)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(triggers(), st.lists(histories(), min_size=1, max_size=3), st.integers(0, 20))
def test_batch_boolean_patterns_equal_the_reference(
    duck: Any, cond: Sequence, persons: list[list[EventRec]], minute: int
):
    from rapport.conditions import to_ibis

    load(duck, persons)
    as_of = at(minute)
    ctx = to_ibis.BatchContext(duck, as_of)
    got = set(to_ibis.compile(cond, ctx).to_pyarrow().column("person_key").to_pylist())
    states = [PersonState(k, events=list(events)) for k, events in enumerate(persons)]
    assert got == reference.matching(cond, states, as_of, attr_types={})
