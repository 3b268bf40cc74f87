"""Journeys on the real stream engine: events go through the collector, ``follow.one_pass``
runs stage 1 and the engine, exactly as ``rapport serve``'s follower does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import copy_home
from rapport.db.tables import journey_log, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.ingest.sources import create_source
from rapport.journeys import store
from rapport.journeys.live import bucket
from rapport.journeys.model import JourneyError
from rapport.settings import Settings
from rapport.stream import engine
from rapport.workspace import Workspace
from test_stream_engine import person, run, send

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def settings(migrated_home: Path, tmp_path: Path) -> Settings:
    # no idle advance: these tests send events from 2025 and must not see the wall clock
    return copy_home(migrated_home, tmp_path, stream_idle_seconds=0)


@pytest.fixture
def ws(workspace: Workspace) -> Iterator[Workspace]:
    w = workspace
    create_source(w.db, "web", kind="server")
    spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/"}}
    create_channel(w.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    yield w
    engine.forget(w)


def journey(ws: Workspace, nodes: list[dict[str, Any]], **extra: Any) -> int:
    definition = {"entry": {"event": "register"}, "nodes": nodes} | extra
    return int(store.create(ws, "j", definition, status="live")["id"])


def sms(nid: str, nxt: str | None = None) -> dict[str, Any]:
    node = {"id": nid, "kind": "send", "params": {"channel": "sms", "content": {"text": nid}}}
    return {**node, "next": nxt} if nxt else node


def sent(ws: Workspace) -> list[tuple[int, str]]:
    with ws.db.connect() as conn:
        rows = conn.execute(select(outbox.c.person_key, outbox.c.payload).order_by(outbox.c.id))
        return [(r.person_key, r.payload["text"]) for r in rows]


def where(ws: Workspace, jid: int, anon: str) -> dict[str, Any]:
    p = person(ws, anon)
    return next(x for x in store.positions(ws, jid)["positions"] if x["person_key"] == p)


def test_entry_once_and_a_wait_that_ends_on_event_time(ws):
    jid = journey(ws, [{"id": "w", "kind": "wait", "params": {"duration": "1 days"}, "next": "s"},
                       sms("s")])  # fmt: skip
    send(ws, ("a", "register", T0), ("a", "register", T0 + HOUR))
    run(ws)
    assert where(ws, jid, "a")["node"] == "w" and where(ws, jid, "a")["seq"] == 1
    assert sent(ws) == []
    send(ws, ("b", "page_view", T0 + DAY - HOUR))  # event time not yet past the deadline
    run(ws)
    assert sent(ws) == []
    send(ws, ("b", "page_view", T0 + DAY + HOUR))
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "s")]
    assert where(ws, jid, "a")["status"] == "done"
    send(ws, ("a", "register", T0 + 3 * DAY))  # entry rule "once"
    run(ws)
    assert where(ws, jid, "a")["seq"] == 1 and len(sent(ws)) == 1


def test_late_batched_events_run_the_wait_at_its_own_time(ws):
    """All events arrive in one pass, long after: the wait still ends at since + 1 day, and
    the goal that came later than that does not stop the send."""
    journey(
        ws,
        [{"id": "w", "kind": "wait", "params": {"duration": "1 days"}, "next": "s"}, sms("s")],
        goal={"event": "order_paid"},
    )
    send(
        ws,
        ("a", "register", T0),
        ("c", "register", T0),
        ("c", "order_paid", T0 + HOUR),  # goal within the wait: c leaves
        ("a", "order_paid", T0 + 2 * DAY),  # after a's send
    )
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "s")]


def test_wait_until_event_or_timeout(ws):
    jid = journey(ws, [
        {"id": "w", "kind": "wait", "params": {"until": {"event": "order_paid"},
         "timeout": "2 days"}, "next": {"event": "thanks", "timeout": "nudge"}},
        sms("thanks"), sms("nudge"),
    ])  # fmt: skip
    send(ws, ("a", "register", T0), ("b", "register", T0), ("a", "order_paid", T0 + DAY))
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "thanks")]
    send(ws, ("x", "page_view", T0 + 2 * DAY))
    run(ws)
    assert sent(ws)[1:] == [(person(ws, "b"), "nudge")]
    steps = [s["action"] for s in store.of_person(ws, person(ws, "b"))[0]["steps"]]
    assert steps == ["entered", "wait", "waited", "send", "done"]
    assert store.positions(ws, jid)["statuses"] == {"done": 2}


def test_branch_and_a_deterministic_split(ws):
    journey(ws, [
        {"id": "b", "kind": "branch", "params": {"condition": "did order_paid"},
         "next": {"yes": "buyer", "no": "split"}},
        {"id": "split", "kind": "split", "params": {"shares": {"x": 50, "y": 50}},
         "next": {"x": "x", "y": "y"}},
        sms("buyer"), sms("x"), sms("y"),
    ])  # fmt: skip
    anons = [f"p{i}" for i in range(12)]
    send(ws, ("buyer", "order_paid", T0), ("buyer", "register", T0 + HOUR))
    send(ws, *[(a, "register", T0 + HOUR) for a in anons])
    run(ws)
    got = dict(sent(ws))
    jid = store.get(ws, "j")["id"]
    assert got[person(ws, "buyer")] == "buyer"
    for a in anons:
        p = person(ws, a)
        assert got[p] == ("x" if bucket(jid, p) < 50 else "y")
    assert {"x", "y"} <= set(got.values())


def test_sends_are_enqueued_once_across_passes_and_a_restart(ws):
    journey(ws, [{"id": "w", "kind": "wait", "params": {"duration": "1 hours"}, "next": "s"},
                 sms("s")], entry_rule="every_time")  # fmt: skip
    send(ws, ("a", "register", T0))
    run(ws)
    engine.forget(ws)  # a restart: positions come back from the table
    run(ws)
    send(ws, ("z", "page_view", T0 + 2 * HOUR))
    run(ws)
    engine.forget(ws)
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "s")]
    with ws.db.connect() as conn:
        keys = conn.execute(select(outbox.c.key)).scalars().all()
        assert keys == [f"journey:{store.get(ws, 'j')['id']}:{person(ws, 'a')}:s:1"]
        assert conn.execute(select(journey_log.c.action)).scalars().all().count("send") == 1
    send(ws, ("a", "register", T0 + 3 * HOUR))  # every time: a second entry, a second send
    send(ws, ("z", "page_view", T0 + 5 * HOUR))
    run(ws)
    assert len(sent(ws)) == 2


def test_validation_names_the_node(ws):
    bad = {"entry": {"event": "register"}, "nodes": [
        {"id": "a", "kind": "branch", "params": {"condition": "did order_paid"},
         "next": {"yes": "b", "no": "nowhere"}},
        {"id": "b", "kind": "send", "params": {"channel": "fax", "content": {"t": "x"}},
         "next": "a"},
    ]}  # fmt: skip
    with pytest.raises(JourneyError) as e:
        store.create(ws, "bad", bad)
    messages = {(x["node"], x["message"]) for x in e.value.errors}
    assert ("a", "next.no: no node 'nowhere'") in messages
    assert ("b", "unknown delivery channel 'fax'") in messages
    assert any(n == "a" and "cycle without a wait" in m for n, m in messages)


def test_positions_through_the_api(ws, client, admin_headers):
    jid = journey(ws, [{"id": "w", "kind": "wait", "params": {"duration": "1 days"}}])
    send(ws, ("a", "register", T0))
    run(ws)
    body = client.get(f"/api/journeys/{jid}/positions", headers=admin_headers).json()
    assert body["nodes"] == {"w": 1}
    mine = client.get(f"/api/persons/{person(ws, 'a')}/journeys", headers=admin_headers).json()
    assert mine[0]["node"] == "w"


def test_seed_journeys_install(ws):
    from rapport.catalog import import_plan
    from rapport.journeys import seed

    plan = "events:\n  register:\n    properties: {}\n  order_paid:\n    properties: {}\n"
    import_plan(ws.db, plan, actor="test")  # the demo's plan declares them
    assert [j["name"] for j in seed.install(ws)] == ["welcome", "winback", "repurchase"]
    assert seed.install(ws) == []


def test_goal_leaves_and_every_time_starts_again(ws):
    """Repurchase: each order starts a 30-day wait; the next order (the goal) leaves the old
    run and starts a new one, so only the last order's reminder is sent."""
    jid = journey(
        ws,
        [{"id": "w", "kind": "wait", "params": {"duration": "30 days"}, "next": "s"}, sms("s")],
        entry_rule="every_time",
        goal={"event": "order_paid"},
        entry={"event": "order_paid"},
    )
    send(ws, ("a", "order_paid", T0), ("a", "order_paid", T0 + 10 * DAY))
    send(ws, ("z", "page_view", T0 + 35 * DAY))
    run(ws)
    assert sent(ws) == []
    assert where(ws, jid, "a")["seq"] == 2
    send(ws, ("z", "page_view", T0 + 41 * DAY))
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "s")]
    actions = [s["action"] for s in store.of_person(ws, person(ws, "a"))[0]["steps"]]
    assert actions == ["entered", "wait", "goal", "entered", "wait", "waited", "send", "done"]


def test_console_pages_show_counts_per_node(ws, client):
    from rapport.accounts import Role
    from test_console import as_role

    as_role(client, ws, Role.marketer)
    jid = journey(ws, [{"id": "w", "kind": "wait", "params": {"duration": "1 days"}}])
    send(ws, ("a", "register", T0))
    run(ws)
    listing = client.get("/journeys")
    assert listing.status_code == 200 and f"/journeys/{jid}" in listing.text
    page = client.get(f"/journeys/{jid}")
    assert page.status_code == 200
    assert '<td class="num node-count">1</td>' in page.text  # one person waiting at node w


def test_positions_and_log_are_upserted_on_postgresql(pg_url, migrated_home, tmp_path):
    w = Workspace(copy_home(migrated_home, tmp_path, stream_idle_seconds=0, database_url=pg_url))
    w.init()
    try:
        create_source(w.db, "web", kind="server")
        spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/"}}
        create_channel(w.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
        jid = journey(w, [sms("s")], entry_rule="every_time")
        send(w, ("a", "register", T0))
        run(w)
        send(w, ("a", "register", T0 + HOUR))  # a second run: the position row is updated
        run(w)
        engine.forget(w)
        run(w)
        assert sent(w) == [(person(w, "a"), "s")] * 2
        assert where(w, jid, "a")["seq"] == 2 and where(w, jid, "a")["status"] == "done"
    finally:
        engine.forget(w)
        w.close()


def test_repurchase_waits_for_the_persons_own_cycle(ws):
    """a orders every 10 days: the reminder comes 10 days after the last order; b ordered
    once: the 30-day fallback."""
    cycle = {"cycle": "order_paid", "fallback_days": 30, "min_orders": 2}
    jid = journey(
        ws,
        [{"id": "w", "kind": "wait", "params": cycle, "next": "s"}, sms("s")],
        entry_rule="every_time",
        goal={"event": "order_paid"},
        entry={"event": "order_paid"},
    )
    orders = [("a", "order_paid", T0 + i * 10 * DAY) for i in range(3)]
    send(ws, *orders, ("b", "order_paid", T0 + 5 * DAY))
    send(ws, ("z", "page_view", T0 + 29 * DAY))
    run(ws)
    assert sent(ws) == []
    assert where(ws, jid, "a")["deadline"].replace(tzinfo=UTC) == T0 + 30 * DAY
    send(ws, ("z", "page_view", T0 + 31 * DAY))
    run(ws)
    assert sent(ws) == [(person(ws, "a"), "s")]
    send(ws, ("z", "page_view", T0 + 36 * DAY))
    run(ws)
    assert sent(ws)[1:] == [(person(ws, "b"), "s")]
    waited = [s["at"] for s in store.of_person(ws, person(ws, "b"))[0]["steps"]
              if s["action"] == "waited"]  # fmt: skip
    assert [t.replace(tzinfo=UTC) for t in waited] == [T0 + 35 * DAY]


def test_a_scheduled_entry_lets_the_audience_in_at_each_run(ws):
    from pyroaring import BitMap

    from rapport.journeys.jobs import journey_jobs
    from rapport.segments.bitmaps import put_segment
    from rapport.segments.store import insert_segment

    send(ws, ("a", "page_view", T0), ("b", "page_view", T0), ("c", "page_view", T0))
    run(ws)
    entry = {"schedule": "daily at 09:00", "audience": "fans"}
    with pytest.raises(JourneyError, match="no audience 'fans'"):
        journey(ws, [sms("s")], entry=entry)
    insert_segment(ws, "fans", "audience", {"condition": None}, mode="static")
    put_segment(ws, "fans", {None: BitMap([person(ws, "a"), person(ws, "b")])})
    jid = journey(ws, [sms("s")], entry=entry, entry_rule="every_time")
    (job,) = [j for j in journey_jobs(ws) if j.key == "journey:j"]
    assert job.schedule == "daily at 09:00"
    assert job.run(ws, T0 + DAY)["accepted"] == 2
    assert job.run(ws, T0 + DAY)["duplicate"] == 2  # the same run again: nobody twice
    run(ws)
    assert sorted(sent(ws)) == sorted([(person(ws, "a"), "s"), (person(ws, "b"), "s")])
    job.run(ws, T0 + 2 * DAY)  # the next day's run: every time, so again
    run(ws)
    assert len(sent(ws)) == 4 and where(ws, jid, "a")["seq"] == 2


def test_the_tag_step_sets_a_manual_value_once_across_passes(ws):
    from rapport.db.tables import manual_tag_values
    from rapport.tags.definitions import TagIn, create_tag
    from rapport.tags.manual import values

    tag = {"name": "nurtured", "kind": "manual", "definition": {"values": ["yes"]}}
    create_tag(ws.db, TagIn.model_validate(tag))
    journey(ws, [{"id": "t", "kind": "tag", "params": {"tag": "nurtured", "value": "yes"},
                  "next": "w"},
                 {"id": "w", "kind": "wait", "params": {"duration": "1 hours"}}])  # fmt: skip
    send(ws, ("a", "register", T0))
    run(ws)
    first = values(ws.db, "nurtured")
    assert [(v["person_key"], v["value"], v["set_by"]) for v in first] == [
        (person(ws, "a"), "yes", "journey:j")
    ]
    engine.forget(ws)  # a restart re-reads nothing twice; another pass changes nothing
    send(ws, ("z", "page_view", T0 + 2 * HOUR))
    run(ws)
    assert values(ws.db, "nurtured") == first  # set_at unchanged: written once
    with ws.db.connect() as conn:
        assert len(conn.execute(select(manual_tag_values)).all()) == 1
        steps = conn.execute(select(journey_log.c.action)).scalars().all()
    assert steps.count("tag") == 1


def test_a_tag_node_needs_an_existing_manual_tag_and_an_allowed_value(ws):
    from rapport.tags.definitions import TagIn, create_tag

    create_tag(ws.db, TagIn.model_validate({"name": "tier", "kind": "manual",
                                            "definition": {"values": ["gold"]}}))  # fmt: skip
    rule = {"condition": {"kind": "did", "event": "order_paid"}}
    create_tag(ws.db, TagIn.model_validate({"name": "buyer", "kind": "rule", "definition": rule}))
    bad = {"entry": {"event": "register"}, "nodes": [
        {"id": "t1", "kind": "tag", "params": {"tag": "nope", "value": "x"}, "next": "t2"},
        {"id": "t2", "kind": "tag", "params": {"tag": "buyer", "value": "yes"}, "next": "t3"},
        {"id": "t3", "kind": "tag", "params": {"tag": "tier", "value": "silver"}},
    ]}  # fmt: skip
    with pytest.raises(JourneyError) as e:
        store.create(ws, "bad", bad)
    assert e.value.errors == [
        {"node": "t1", "message": "tag: no tag 'nope' (create it as a manual tag first)"},
        {"node": "t2", "message": "tag: 'buyer' is a rule tag; a journey sets manual tags"},
        {"node": "t3", "message": "value: 'silver' is not one of gold (tag tier)"},
    ]
