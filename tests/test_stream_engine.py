"""Stage 2 of the stream path: audiences kept current per event, on a real workspace.

Events go through the collector into the log; ``follow.one_pass`` loads them, resolves their
persons and runs the engine, exactly as ``rapport serve``'s follower does.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyroaring import BitMap

from conftest import copy_home
from rapport.conditions.model import (
    And,
    Compare,
    Condition,
    Did,
    Duration,
    Not,
    Op,
    Sequence,
    Step,
    Window,
)
from rapport.identity.resolve import lookup
from rapport.ingest.collector import Collector
from rapport.ingest.sources import create_source, source_by_name
from rapport.segments import audiences, bitmaps, live
from rapport.segments.store import get_segment, members
from rapport.stream import engine, follow
from rapport.workspace import Workspace

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
DAY = timedelta(days=1)


@pytest.fixture
def ws(migrated_home: Path, tmp_path: Path) -> Iterator[Workspace]:
    # no idle advance: these tests send events from 2025 and must not see the wall clock
    w = Workspace(copy_home(migrated_home, tmp_path, stream_idle_seconds=0))
    create_source(w.db, "web", kind="server")
    yield w
    engine.forget(w)
    w.close()


def send(ws: Workspace, *events: tuple[str, str, datetime] | dict[str, Any]) -> None:
    """Track events ``(anonymous id, event, time)`` (or whole messages) through the collector."""
    source = source_by_name(ws.db, "web")
    assert source is not None
    collector = Collector(ws)
    collector.max_skew = timedelta(days=3650)  # keep the events' own times
    messages = []
    for e in events:
        if isinstance(e, dict):
            messages.append({"messageId": uuid.uuid4().hex, **e})
            continue
        anon, name, ts = e
        messages.append(
            {
                "type": "track",
                "event": name,
                "anonymousId": anon,
                "timestamp": ts.isoformat(),
                "messageId": uuid.uuid4().hex,
            }
        )
    checked = collector.check(source, messages, received=datetime.now(UTC), path="$.batch")
    assert all(r["status"] == "accepted" for r in collector.submit_sync(checked)), checked.results


def run(ws: Workspace) -> None:
    follow.one_pass(ws)


def person(ws: Workspace, anon: str) -> int:
    key = lookup(ws, "anonymous_id", anon)
    assert key is not None, anon
    return key


def logged(ws: Workspace) -> list[tuple[str, str, int, datetime]]:
    """(event, audience, person, time) of the audience events on the log, in log order."""
    out = []
    for _, rec in ws.log.read(0, 100_000):
        if rec.event in live.EVENTS:
            msg = msgspec.json.decode(rec.payload)
            props = msg["properties"]
            ts = datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))
            out.append((rec.event, props["audience"], props["person"], ts))
    return out


def in_warehouse(ws: Workspace, name: str) -> BitMap:
    with ws.warehouse.connect() as con:
        sm = con.table("segment_members")
        return bitmaps.keys_of(sm.filter(sm.segment == name))


def last(event: str, amount: int, unit: str = "days") -> Did:
    return Did(event=event, window=Window(last=Duration(amount=amount, unit=unit)))


def audience(ws: Workspace, name: str, cond: Condition) -> None:
    audiences.create_audience(ws, name, cond)


# -- windows and timers -------------------------------------------------------------------------
def test_an_audience_gains_a_person_on_the_event_and_loses_them_on_the_timer(ws):
    audience(ws, "cart_1d", last("add_to_cart", 1))
    send(ws, ("a1", "add_to_cart", T0), ("a2", "page_view", T0 + MIN))
    run(ws)
    p1 = person(ws, "a1")
    assert members(ws, "cart_1d") == BitMap([p1])
    assert in_warehouse(ws, "cart_1d") == BitMap([p1])
    assert bitmaps.get(ws, bitmaps.segment_name("cart_1d")) == BitMap([p1])
    assert get_segment(ws, "cart_1d")["size"] == 1
    assert logged(ws) == [("audience_entered", "cart_1d", p1, T0)]

    # someone else's event a day later moves event time past the window: the timer fires
    send(ws, ("a2", "page_view", T0 + DAY + MIN))
    run(ws)
    assert members(ws, "cart_1d") == BitMap()
    assert in_warehouse(ws, "cart_1d") == BitMap()
    assert get_segment(ws, "cart_1d")["size"] == 0
    assert logged(ws)[1:] == [("audience_exited", "cart_1d", p1, T0 + DAY)]

    run(ws)  # the system events come back through the log: no reaction, nothing twice
    assert len(logged(ws)) == 2


def test_sequence_and_absence_audiences_per_event(ws):
    within = Duration(amount=30, unit="minutes")
    audience(
        ws,
        "viewed_then_cart",
        Sequence(steps=[Step(event="view"), Step(event="add_to_cart")], within=within),
    )
    audience(
        ws,
        "cart_abandoned",
        Sequence(steps=[Step(event="add_to_cart")], then_not=Step(event="pay"), within=within),
    )
    send(
        ws,
        ("a1", "view", T0),
        ("a1", "add_to_cart", T0 + 10 * MIN),  # a1: sequence matched; cart pending
        ("a2", "view", T0),
        ("a2", "add_to_cart", T0 + 40 * MIN),  # too late for the sequence; cart pending
        ("a3", "add_to_cart", T0 + 5 * MIN),
        ("a3", "pay", T0 + 20 * MIN),  # paid in time: never abandoned
    )
    run(ws)
    p1, p2, p3 = person(ws, "a1"), person(ws, "a2"), person(ws, "a3")
    assert members(ws, "viewed_then_cart") == BitMap([p1])
    # event time has reached T0+40m: a1's cart at T0+10m has gone 30 minutes without a pay
    assert members(ws, "cart_abandoned") == BitMap([p1])
    send(ws, ("a4", "page_view", T0 + 80 * MIN))  # a2's cart at T0+40m matures at T0+70m
    run(ws)
    assert members(ws, "cart_abandoned") == BitMap([p1, p2])
    entered = {(a, p, t) for e, a, p, t in logged(ws) if e == "audience_entered"}
    assert ("cart_abandoned", p1, T0 + 40 * MIN) in entered
    assert ("cart_abandoned", p2, T0 + 70 * MIN) in entered
    assert p3 not in members(ws, "cart_abandoned")


# -- out of order -------------------------------------------------------------------------------
def test_out_of_order_events_inside_a_batch_and_across_batches(ws):
    within = Duration(amount=30, unit="minutes")
    audience(
        ws,
        "viewed_then_cart",
        Sequence(steps=[Step(event="view"), Step(event="add_to_cart")], within=within),
    )
    audience(ws, "cart_2", Did(event="add_to_cart", threshold=2))
    # inside one batch: the cart arrives before the view it follows in event time
    send(ws, ("a1", "add_to_cart", T0 + 10 * MIN), ("a1", "view", T0))
    run(ws)
    p1 = person(ws, "a1")
    assert members(ws, "viewed_then_cart") == BitMap([p1])
    # across batches: a2's view arrives in a later batch than the cart it precedes
    send(ws, ("a2", "add_to_cart", T0 + 15 * MIN))
    run(ws)
    p2 = person(ws, "a2")
    assert p2 not in members(ws, "viewed_then_cart")
    send(ws, ("a2", "view", T0 + 5 * MIN), ("a2", "add_to_cart", T0 - DAY))
    run(ws)
    assert members(ws, "viewed_then_cart") == BitMap([p1, p2])
    assert members(ws, "cart_2") == BitMap([p2])


# -- identity -----------------------------------------------------------------------------------
def test_a_merged_away_person_leaves_the_audience(ws):
    audience(ws, "cart_1d", last("add_to_cart", 1))
    send(ws, ("a1", "add_to_cart", T0), ("a2", "add_to_cart", T0 + MIN))
    run(ws)
    p1, p2 = person(ws, "a1"), person(ws, "a2")
    assert members(ws, "cart_1d") == BitMap([p1, p2])
    identify = {"type": "identify", "userId": "u1", "timestamp": (T0 + 2 * MIN).isoformat()}
    send(ws, {**identify, "anonymousId": "a1"}, {**identify, "anonymousId": "a2"})
    run(ws)
    survivor = person(ws, "a1")
    assert person(ws, "a2") == survivor
    away = ({p1, p2} - {survivor}).pop()
    assert members(ws, "cart_1d") == BitMap([survivor])
    assert ("audience_exited", "cart_1d", away) in {(e, a, p) for e, a, p, _ in logged(ws)}
    # the survivor carries both carts: it leaves when the later one leaves the window
    send(ws, ("a9", "page_view", T0 + DAY + timedelta(seconds=30)))
    run(ws)
    assert members(ws, "cart_1d") == BitMap([survivor])
    send(ws, ("a9", "page_view", T0 + DAY + 2 * MIN))
    run(ws)
    assert members(ws, "cart_1d") == BitMap()


# -- restart ------------------------------------------------------------------------------------
def test_a_restarted_engine_gives_the_same_members_and_emits_nothing_twice(ws):
    audience(ws, "cart_1d", last("add_to_cart", 1))
    within = Duration(amount=30, unit="minutes")
    audience(
        ws,
        "cart_abandoned",
        Sequence(steps=[Step(event="add_to_cart")], then_not=Step(event="pay"), within=within),
    )
    send(ws, ("a1", "add_to_cart", T0), ("a2", "add_to_cart", T0 + 10 * MIN))
    run(ws)
    p1, p2 = person(ws, "a1"), person(ws, "a2")
    assert members(ws, "cart_1d") == BitMap([p1, p2])
    assert members(ws, "cart_abandoned") == BitMap()
    before = logged(ws)

    engine.forget(ws)  # a restart: timers and states are rebuilt from the warehouse
    run(ws)
    assert members(ws, "cart_1d") == BitMap([p1, p2]) and logged(ws) == before
    # the rebuilt timers still fire: the absences mature, then the window lets go
    send(ws, ("a3", "page_view", T0 + 45 * MIN))
    run(ws)
    assert members(ws, "cart_abandoned") == BitMap([p1, p2])
    engine.forget(ws)
    send(ws, ("a3", "page_view", T0 + DAY + 5 * MIN))
    run(ws)
    assert members(ws, "cart_1d") == BitMap([p2])
    assert ("audience_exited", "cart_1d", p1, T0 + DAY) in logged(ws)
    events = logged(ws)
    assert len(events) == len(set(events))  # every change once


# -- agreement with the batch path --------------------------------------------------------------
def test_live_membership_agrees_with_a_batch_refresh(ws):
    within = Duration(amount=20, unit="minutes")
    conditions: dict[str, Condition] = {
        "cart_2h": last("add_to_cart", 2, "hours"),
        "cart_twice_1d": Did(
            event="add_to_cart", threshold=2, window=Window(last=Duration(amount=1, unit="days"))
        ),
        "view_no_cart_3h": And(
            all=[last("view", 3, "hours"), Not(cond=last("add_to_cart", 3, "hours"))]
        ),
        "view_then_pay": Sequence(steps=[Step(event="view"), Step(event="pay")], within=within),
        "cart_no_pay": Sequence(
            steps=[Step(event="add_to_cart")],
            then_not=Step(event="pay"),
            within=within,
            window=Window(last=Duration(amount=6, unit="hours")),
        ),
    }
    for name, cond in conditions.items():
        audience(ws, name, cond)
    rng = random.Random(7)
    anons = [f"r{i}" for i in range(25)]
    names = ["view", "add_to_cart", "pay", "page_view"]
    clock = T0
    for _ in range(6):  # batches, each somewhat out of order
        batch = []
        for _ in range(40):
            clock += timedelta(minutes=rng.randint(0, 12))
            jitter = timedelta(minutes=rng.choice([0, 0, 0, -3, -25]))
            batch.append((rng.choice(anons), rng.choice(names), clock + jitter))
        send(ws, *batch)
        run(ws)
    with ws.warehouse.connect() as con:
        watermark = datetime.fromisoformat(ws.warehouse.get_state(con, engine.WATERMARK_KEY))
    live_members = {name: BitMap(members(ws, name)) for name in conditions}
    assert any(live_members.values())
    for name in conditions:
        audiences.refresh_audience(ws, name, as_of=watermark)
        assert members(ws, name) == live_members[name], name


# -- status -------------------------------------------------------------------------------------
def test_live_status_says_why_an_audience_is_batch_only(workspace, client, admin_headers):
    from rapport.conditions.model import Attr, Op

    audience(workspace, "cart_1d", last("add_to_cart", 1))
    audience(workspace, "adults", Attr(field="age", op=Op.ge, value=18))
    got = client.get("/api/segments/cart_1d", headers=admin_headers).json()
    assert got["live"] is True and got["live_reason"] is None
    got = client.get("/api/segments/adults", headers=admin_headers).json()
    assert got["live"] is False and "attributes" in got["live_reason"]
    # the segment page says the same
    from rapport.accounts import Role
    from test_console import as_role

    as_role(client, workspace, Role.admin)
    assert "Updated per event" in client.get("/segments/cart_1d").text
    page = client.get("/segments/adults").text
    assert "Updated at each refresh only" in page and "attributes" in page


def test_the_watermark_follows_the_clock_when_the_log_is_idle(ws):
    audience(ws, "cart_1d", last("add_to_cart", 1))
    send(ws, ("a1", "add_to_cart", T0))
    now = [T0.timestamp() + 60]
    e = engine.Engine(ws, clock=lambda: now[0])
    e.idle = 30
    follow.one_pass(ws)  # loads, resolves (its own engine is forgotten below)
    engine.forget(ws)
    e.run_pass()
    assert members(ws, "cart_1d") == BitMap([person(ws, "a1")])
    now[0] += DAY.total_seconds()
    e.run_pass()  # nothing new in the log, but a day passed on the clock
    assert members(ws, "cart_1d") == BitMap()


def test_the_system_source_grows_to_send_audience_events(ws):
    from rapport.segments import lifecycle, system_events

    # the lifecycle made the source first, allowed to send its own event only
    first = system_events.system_source(ws, [lifecycle.EVENT], lifecycle.PLAN)
    assert first.allowed_events == frozenset({lifecycle.EVENT})
    change = live.Change("cart_1d", 7, T0, True)
    assert live.emit(ws, [change])["accepted"] == 1
    assert live.emit(ws, [change])["duplicate"] == 1  # a replayed chunk: deduplicated
    assert logged(ws) == [("audience_entered", "cart_1d", 7, T0)]
    source = source_by_name(ws.db, system_events.SOURCE)
    assert source is not None and {lifecycle.EVENT, *live.EVENTS} <= source.allowed_events


# -- profile data changing under states in memory -----------------------------------------------
def test_a_person_in_memory_sees_a_later_tag_and_attribute_without_a_restart(ws):
    """Lead rules of a tag and of an attribute: the person is in the engine's memory when the
    tag run and the profiles rebuild change their data; the next event reads the new data."""
    import pyarrow as pa
    from sqlalchemy import select

    from rapport.db.tables import leads
    from rapport.demo.load import load_plan
    from rapport.identity.survivorship import build_profiles
    from rapport.leads import rules
    from rapport.tags import store as tag_store
    from rapport.tags.definitions import TagIn, create_tag

    load_plan(ws)  # the demo's plan: the user property ``city``
    definition = {"condition": {"kind": "did", "event": "x"}}
    create_tag(ws.db, TagIn(name="vip", kind="rule", definition=definition))
    for name, conditions in (("tagged", "has tag vip"), ("shanghai", 'city = "Shanghai"')):
        spec = {
            "name": name,
            "lead_type": name,
            "trigger": "event add_to_cart",
            "cooldown": "1 minutes",
        }
        rules.create_rule(ws.db, rules.RuleIn(**spec, conditions=conditions, status="live"), None)

    def tag_vip(*persons: int) -> None:
        """A tag run: ``persons`` (only them) are vip."""
        values = {"person_key": pa.array(persons, pa.int64()), "value": ["yes"] * len(persons)}
        tag_store.write_values(ws, "vip", tag_store.start_run(ws.db, "vip"), pa.table(values))

    def live_in(city: str, at: datetime) -> None:
        traits = {"type": "identify", "anonymousId": "a1", "traits": {"city": city}}
        send(ws, {**traits, "timestamp": at.isoformat()})
        run(ws)
        build_profiles(ws)

    seen: set[int] = set()

    def cart(at: datetime) -> list[str]:
        """a1 and a2 add to cart at ``at``: the leads a1 gets."""
        send(ws, ("a1", "add_to_cart", at), ("a2", "add_to_cart", at))
        run(ws)
        with ws.db.connect() as conn:
            rows = list(conn.execute(select(leads).where(leads.c.person_key == p1)))
        new = sorted(r.lead_type for r in rows if r.id not in seen)
        seen.update(r.id for r in rows)
        return new

    send(ws, ("a1", "login", T0), ("a2", "login", T0))
    run(ws)
    p1, p2 = person(ws, "a1"), person(ws, "a2")
    live_in("Beijing", T0)
    assert cart(T0 + MIN) == []
    kept = engine.engine_for(ws)
    state = kept.states[p1]

    tag_vip(p1)
    live_in("Shanghai", T0 + 2 * MIN)
    assert cart(T0 + 3 * MIN) == ["shanghai", "tagged"]
    assert engine.engine_for(ws) is kept and kept.states[p1] is state  # no restart, no reload

    tag_vip(p2)  # a1 loses the tag, then leaves Shanghai
    assert cart(T0 + 5 * MIN) == ["shanghai"]
    live_in("Beijing", T0 + 6 * MIN)
    assert cart(T0 + 8 * MIN) == []


# -- per-event retention: a year of orders beside an hour of views ------------------------------
class _Probe:
    """A condition rule that reports its answer at every judgement (``stream.core.Rule``)."""

    horizon = timedelta(0)

    def __init__(self, key: str, cond: Condition, retention: Any = None) -> None:
        from dataclasses import replace

        from rapport.conditions.to_stream import compile_rule
        from rapport.stream.core import reads_of

        self.key, self.compiled, self.reads = key, compile_rule(cond), reads_of(cond)
        if retention is not None:  # what only some events need
            self.compiled = replace(self.compiled, retention=retention)

    def on_event(self, state: Any, at: datetime, event: Any) -> tuple[int, datetime, bool]:
        return state.person, at, self.compiled.predicate(state, at, event)

    def on_timer(self, state: Any, at: datetime) -> tuple[int, datetime, bool]:
        return state.person, at, self.compiled.predicate(state, at, None)

    def on_merge(self, survivor: int, merged_away: int, at: datetime) -> None:
        return None

    def watched(self) -> list[int]:
        return []


class _Collect:
    """A provider whose outputs are kept in memory (compared between two cores)."""

    def __init__(self, name: str, rules: list[Any]) -> None:
        self.name, self._rules, self.out = name, rules, list[Any]()

    def version(self, ws: Any) -> int:
        return 1

    def rules(self, ws: Any) -> list[Any]:
        return self._rules

    def begin(self, ws: Any) -> None:
        return None

    def apply(self, ws: Any, outputs: list[Any]) -> None:
        self.out.extend(outputs)


def _year_core(everything: bool) -> tuple[Any, list[_Collect]]:
    """A core with a 1-hour lead rule (3 views), a repurchase journey waiting on the person's
    own order cycle (a year of orders), 1-hour probes (a filtered count, a sequence) and
    probes over a year of orders only, whose memos see views come and go unread."""
    from rapport.journeys.live import JourneyRule
    from rapport.journeys.model import parse as parse_journey
    from rapport.leads.live import LeadStreamRule
    from rapport.leads.rules import LeadRule, parse_condition
    from rapport.stream.core import Core
    from rapport.stream.state import Retention

    trigger = "sequence view_product where price >= 3000 then view_product then view_product"
    lead = LeadRule(
        id=1, name="hot", lead_type="hot", version=1,
        trigger=parse_condition("trigger", f"{trigger} within 1 hours"),
        conditions=None, suppression=None, cooldown=Duration(amount=1, unit="hours"),
        score=50, priority=3, route="auto", mode="realtime", schedule=None, status="live",
    )  # fmt: skip
    cycle = {"cycle": "order_paid", "fallback_days": 30, "min_orders": 2}
    definition = {
        "entry": {"event": "order_paid"},
        "entry_rule": "every_time",
        "goal": {"event": "order_paid"},
        "nodes": [
            {"id": "w", "kind": "wait", "params": cycle, "next": "s"},
            {"id": "s", "kind": "send", "params": {"channel": "sms", "content": {"text": "hi"}}},
        ],
    }
    journey = JourneyRule(parse_journey(1, "repurchase", "live", definition), {}, {})
    hour = Window(last=Duration(amount=1, unit="hours"))
    dear = Compare(field="price", op=Op.ge, value=5000)  # a filter: the memo keeps matches
    probes = [
        _Probe("probe:count", Did(event="view_product", where=[dear], threshold=2, window=hour)),
        _Probe(
            "probe:seq",
            Sequence(
                steps=[Step(event="view_product"), Step(event="order_paid")],
                within=Duration(amount=30, unit="minutes"),
                window=hour,
            ),
        ),
    ]
    year = Window(last=Duration(amount=365, unit="days"))
    orders = Retention(events=frozenset({("order_paid", timedelta(days=365))}))
    paid = Compare(field="price", op=Op.ge, value=50)
    probes += [
        _Probe(
            "probe:orders", Did(event="order_paid", where=[paid], threshold=8, window=year), orders
        ),
        _Probe(
            "probe:repeat",
            Sequence(
                steps=[Step(event="order_paid"), Step(event="order_paid")],
                within=Duration(amount=12, unit="days"),
                window=year,
            ),
            orders,
        ),
    ]
    providers = [
        _Collect("lead", [LeadStreamRule(lead, {})]),
        _Collect("journey", [journey]),
        _Collect("probe", probes),
    ]
    core = Core(None, providers, lambda persons, ref: {})  # type: ignore[arg-type]
    core.refresh_rules()
    if everything:
        core.retention = Retention.everything()
    return core, providers


def test_a_year_of_orders_does_not_keep_a_year_of_views() -> None:
    """The merged retention is 1 hour for every event and a year for orders: after a year the
    states hold the last hour's views and the year's orders, and every rule answers exactly as
    with the whole history kept."""
    from rapport.stream.state import EventRec, Retention

    rng = random.Random(7)
    events: list[tuple[int, EventRec]] = []
    for p in range(3):
        day = T0
        next_order = T0 + rng.randint(0, 40) * DAY
        while day < T0 + 380 * DAY:
            t = day + rng.randint(0, 600) * MIN
            if rng.random() < 0.7:  # a session of views, sometimes ending in an order
                for _ in range(rng.randint(1, 6)):
                    t += rng.randint(1, 25) * MIN
                    price = rng.choice([100, 3000, 6000])
                    events.append((p, EventRec(t, "view_product", {"price": price})))
            if day >= next_order:
                events.append((p, EventRec(t + MIN, "order_paid", {"price": 99})))
                next_order = day + rng.randint(10, 40) * DAY
            day += DAY
    events.sort(key=lambda pe: pe[1].ts)
    end = events[-1][1].ts + MIN
    events += [(p, EventRec(end, "view_product", {"price": 100})) for p in range(3)]

    cores = {everything: _year_core(everything) for everything in (False, True)}
    assert cores[False][0].retention == Retention(
        lookback=timedelta(hours=1), events=frozenset({("order_paid", timedelta(days=365))})
    )
    for core, _ in cores.values():
        running = events[0][1].ts
        for p, rec in events:
            running = max(running, rec.ts)
            core.feed(p, msgspec.structs.replace(rec), running)
        core.advance(end + 60 * DAY)  # the waits still open end
        core.apply_outputs()

    def seen(providers: list[_Collect]) -> dict[str, list[Any]]:
        leads, journeys, probes = (p.out for p in providers)
        hits = [(h.person, h.match.fired_at, h.match.key) for out in leads for h in out]
        return {"lead": hits, "journey": journeys, "probe": probes}

    kept, full = seen(cores[False][1]), seen(cores[True][1])
    assert kept == full
    assert len(kept["lead"]) > 20 and len(kept["probe"]) > 1000
    assert sum(1 for m in kept["journey"] for s in m.steps if s.action == "send") > 10

    core = cores[False][0]
    for p in range(3):
        state, whole = core.states[p], cores[True][0].states[p]
        orders = [r.ts for r in whole.of("order_paid") if r.ts >= end - 365 * DAY]
        assert [r.ts for r in state.of("order_paid")] == orders and len(orders) >= 5
        views = [r.ts for r in state.of("view_product")]
        assert views and min(views) >= end - timedelta(hours=1)
        assert len(whole.of("view_product")) > 100 * len(views)
        assert state.events == sorted(state.events, key=lambda r: r.ts)
        assert {id(r) for r in state.events} == {
            id(r) for recs in state.by_event.values() for r in recs
        }


def test_per_event_retention_merges_per_name_and_filters_a_loader() -> None:
    """Merging keeps the longest look-back per name (dropping what the base already keeps);
    a loader's filter keeps each event's own span."""
    import ibis

    from rapport.stream.state import EventRec, PersonState, Retention

    hour, year = timedelta(hours=1), timedelta(days=365)
    journey = Retention(events=frozenset({("order", year), ("order", DAY)}))
    assert journey.longer == {"order": year} and journey.lookback == timedelta(0)
    merged = (
        Retention(lookback=hour).merge(journey).merge(Retention(events=frozenset({("x", MIN)})))
    )
    assert merged == Retention(lookback=hour, events=frozenset({("order", year)}))
    assert merged.longest == year and merged.merge(Retention.everything()).longer == {}
    forever = merged.merge(Retention(events=frozenset({("order", None)})))
    assert forever.longer == {"order": None} and forever.longest is None

    evs = [
        EventRec(T0 - d, name)
        for d, name in [(300 * DAY, "order"), (2 * DAY, "view"), (30 * MIN, "view")]
    ]
    state = PersonState(1, events=list(evs))
    assert merged.keep_since(state, T0) == T0 - year  # a prefix cut stays safe
    assert merged.prune(state, T0) == 1 and [e.event for e in state.events] == ["order", "view"]
    assert state.of("view") == [evs[2]] and state.of("order") == [evs[0]]

    rows = [{"ts": e.ts, "event": e.event} for e in evs]
    t = ibis.memtable(rows + [{"ts": T0 - 400 * DAY, "event": "order"}])
    keep = merged.where(t.ts, t.event, T0)
    got = ibis.duckdb.connect().execute(t.filter(keep).order_by("ts"))
    assert list(got["event"]) == ["order", "view"]
    assert Retention(lookback=hour, anchors=frozenset({"login"})).where(t.ts, t.event, T0) is None
