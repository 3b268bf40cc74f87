"""Lead rules in motion: realtime firing in the stream engine, offline runs, backtest, dry-run.

Events go through the collector into the log and ``follow.one_pass`` loads them, resolves
their persons and runs the stream engine (with the lead provider), as ``rapport serve``'s
follower does; leads land in the real metadata DB. The plan is the demo's (the example plan
plus the demo's events), with ``order_paid.item_id`` added for the step-reference rule.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import select

from conftest import copy_home
from rapport.conditions.reference import Match, match_key
from rapport.db.tables import lead_rules, leads, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.demo.load import load_plan
from rapport.ingest.sources import create_source
from rapport.jobs.runner import run_now
from rapport.leads import backtest, live, offline, routing, rules
from rapport.leads.seed import ITEM_TRIGGER, LEAD_TYPE, SEED_RULE, TAGS
from rapport.settings import Settings
from rapport.stream import engine
from rapport.stream.state import EventRec
from rapport.tags import store as tag_store
from rapport.tags.definitions import TagIn, create_tag
from rapport.workspace import Workspace
from test_stream_engine import person, run, send

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory, migrated_home: Path) -> Path:
    """The demo's plan, the seed's two tags, the outbound-call channel and its route."""
    ws = Workspace(copy_home(migrated_home, tmp_path_factory.mktemp("leads_live")))
    load_plan(ws)
    for name in TAGS:
        create_tag(
            ws.db,
            TagIn(name=name, kind="rule", definition={"condition": {"kind": "did", "event": "x"}}),
        )
    create_channel(ws.db, ChannelSpec(name="outbound_call", kind="call_list"))
    routing.create_route(
        ws.db, routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call")
    )
    create_source(ws.db, "web", kind="server")
    ws.close()
    return ws.settings.home


@pytest.fixture
def settings(tmp_path: Path, template_home: Path) -> Settings:
    # no idle advance: the events are from 2025 and must not see the wall clock
    # the tests run the passes themselves (`run`): no loader task in the app
    return copy_home(template_home, tmp_path, stream_idle_seconds=0, loader_in_process=False)


@pytest.fixture
def ws(workspace: Workspace) -> Iterator[Workspace]:
    yield workspace
    engine.forget(workspace)


# -- helpers --------------------------------------------------------------------------------------
def track(anon: str, event: str, ts: datetime, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "anonymousId": anon,
        "timestamp": ts.isoformat(),
        "properties": props,
    }


def view(anon: str, ts: datetime, item: str = "F-1", price: float = 5999, seconds: int = 75):
    return track(
        anon,
        "view_product",
        ts,
        item_id=item,
        category="fridge",
        price=price,
        duration_s=seconds,
    )


def tag(ws: Workspace, persons: list[int], *names: str) -> None:
    """Give ``persons`` the tags (as a tag run would)."""
    for name in names or TAGS:
        run_id = tag_store.start_run(ws.db, name)
        values = pa.table(
            {"person_key": pa.array(persons, pa.int64()), "value": ["yes"] * len(persons)}
        )
        tag_store.write_values(ws, name, run_id, values)


def make_rule(ws: Workspace, **overrides: Any) -> rules.LeadRule:
    body = {**SEED_RULE, "status": "live", **overrides}
    created = rules.create_rule(ws.db, rules.RuleIn(**body), None)
    with ws.db.connect() as conn:
        return rules.load(conn, created["id"])


def all_leads(ws: Workspace, rule_id: int | None = None) -> list[Any]:
    query = select(leads).order_by(leads.c.created_at, leads.c.id)
    if rule_id is not None:
        query = query.where(leads.c.rule_id == rule_id)
    with ws.db.connect() as conn:
        return list(conn.execute(query))


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def people(ws: Workspace, *anons: str) -> list[int]:
    """Make the persons exist (a login each), resolved; their keys."""
    send(ws, *(track(a, "login", T0 - DAY) for a in anons))
    run(ws)
    return [person(ws, a) for a in anons]


# -- the seed rule verbatim -----------------------------------------------------------------------
def test_the_seed_rule_fires_once_after_30_minutes_without_an_order(ws):
    rule = make_rule(ws)
    p1, p2, _, p4 = people(ws, "a1", "a2", "a3", "a4")
    tag(ws, [p1, p2, p4])  # a3 is not tagged
    send(
        ws,
        view("a1", T0),  # the seed's case
        view("a2", T0),
        track("a2", "order_paid", T0 + 10 * MIN, order_id="o1", amount=5999, item_id="F-1"),
        view("a3", T0),  # not high-value
        view("a4", T0, price=4999),  # too cheap
        view("a4", T0 + MIN, seconds=59),  # too short
    )
    run(ws)
    assert all_leads(ws) == []  # 30 minutes have not passed in event time
    send(ws, track("a9", "login", T0 + 29 * MIN))
    run(ws)
    assert all_leads(ws) == []
    send(ws, track("a9", "login", T0 + 31 * MIN))
    run(ws)
    got = all_leads(ws)
    assert len(got) == 1
    lead = got[0]
    assert (lead.person_key, lead.lead_type, lead.rule_id) == (p1, LEAD_TYPE, rule.id)
    assert (lead.channel, lead.route) == ("outbound_call", "outbound_call")
    assert _utc(lead.created_at) == T0 + 30 * MIN
    [evidence] = lead.evidence
    assert evidence["event"] == "view_product" and evidence["id"]
    assert evidence["properties"]["price"] == 5999 and evidence["ts"] == T0.isoformat()
    assert lead.dedupe_key.startswith(f"{rule.id}:")
    with ws.db.connect() as conn:  # on its way to the call list, in the same transaction
        sent = conn.execute(select(outbox.c.channel, outbox.c.origin)).all()
    assert sent == [("outbound_call", f"lead:{lead.id}")]
    # an engine that hands over events without their ids: apply looks them up, same key
    bare = [EventRec(T0, "view_product", evidence["properties"])]
    hit = live.Hit(rule, p1, Match(T0 + 30 * MIN, tuple(bare), match_key(bare)))
    [found] = live.with_ids(ws, [hit])
    assert found.match.evidence[0].id == evidence["id"]
    assert live.dedupe_key(rule, found.match) == lead.dedupe_key
    run(ws)  # nothing new: nothing twice
    send(ws, track("a9", "login", T0 + 2 * DAY))
    run(ws)
    assert len(all_leads(ws)) == 1


def test_an_order_of_another_item_does_not_cancel_the_seed_rule(ws):
    """The seed says "no order *for that item*": a step reference (``v.item_id``), so an order
    of another item does not stop the lead."""
    assert SEED_RULE["trigger"] == ITEM_TRIGGER
    make_rule(ws, name="fridge_item")
    p1, p2 = people(ws, "a1", "a2")
    tag(ws, [p1, p2])
    send(
        ws,
        view("a1", T0, item="F-1"),
        track("a1", "order_paid", T0 + 5 * MIN, order_id="o1", amount=99, item_id="K-7"),
        view("a2", T0, item="F-2"),
        track("a2", "order_paid", T0 + 5 * MIN, order_id="o2", amount=5999, item_id="F-2"),
        track("a9", "login", T0 + HOUR),
    )
    run(ws)
    assert [lead.person_key for lead in all_leads(ws)] == [p1]


def test_paused_and_draft_rules_do_not_fire_and_edits_reach_the_engine(ws):
    rule = make_rule(ws, status="draft", trigger='event view_product where category = "fridge"')
    (p1,) = people(ws, "a1")
    tag(ws, [p1])
    send(ws, view("a1", T0))
    run(ws)
    assert all_leads(ws) == []  # a draft does not fire
    rules.set_status(ws.db, rule.id, "live")
    send(ws, view("a1", T0 + 10 * DAY))
    run(ws)
    assert len(all_leads(ws)) == 1  # the engine saw the change without a restart
    rules.set_status(ws.db, rule.id, "paused")
    send(ws, view("a1", T0 + 20 * DAY))
    run(ws)
    assert len(all_leads(ws)) == 1


# -- stream == batch ----------------------------------------------------------------------------
def random_rules(ws: Workspace) -> list[rules.LeadRule]:
    """An event trigger, a sequence and two absences, with conditions and cooldowns."""
    specs = [
        {
            "name": "big_view",
            "lead_type": "big view",
            "trigger": "event view_product where price >= 3000 and duration_s >= 30",
            "conditions": "did add_to_cart in last 2 hours",
            "cooldown": {"amount": 1, "unit": "hours"},
        },
        {
            "name": "view_then_cart",
            "lead_type": "view then cart",
            "trigger": "sequence view_product then add_to_cart within 20 minutes",
            "suppression": "did order_paid in last 1 days",
            "cooldown": {"amount": 90, "unit": "minutes"},
        },
        {
            "name": "cart_abandoned",
            "lead_type": "cart abandoned",
            "trigger": "sequence add_to_cart then not order_paid within 30 minutes",
            "conditions": f"has tag {TAGS[0]}",
            "cooldown": {"amount": 2, "unit": "hours"},
        },
        {
            "name": "item_not_bought",
            "lead_type": "item not bought",
            "trigger": "sequence view_product as v where price >= 1000 then not order_paid "
            "where item_id = v.item_id within 15 minutes",
            "cooldown": {"amount": 1, "unit": "days"},
        },
    ]
    out = []
    for spec in specs:
        out.append(make_rule(ws, **{"conditions": None, "score": 50, **spec}))
    return out


NAMES = ["view_product", "add_to_cart", "view_product", "add_to_cart", "order_paid"]


def random_stream(ws: Workspace, seed: int, restarts: bool) -> tuple[datetime, datetime]:
    """Batches of seeded random events, each run by the engine; the period they span."""
    anons = [f"r{i}" for i in range(20)]
    keys = people(ws, *anons)
    tag(ws, keys[::2], TAGS[0])
    rng = random.Random(seed)
    items = ["F-1", "F-2", "K-7"]
    clock = T0
    for batch_no in range(6):
        batch = []
        for n in range(50):
            clock += timedelta(seconds=rng.choice([0, 20, 60, 90, 240, 600]))
            anon, name = rng.choice(anons), rng.choice(NAMES)
            item = rng.choice(items)
            if name == "view_product":
                price = rng.choice([500, 1500, 3500, 6000])
                batch.append(view(anon, clock, item, price, rng.choice([10, 45, 90])))
            elif name == "add_to_cart":
                batch.append(track(anon, name, clock, item_id=item, quantity=1))
            else:
                order = f"o{batch_no}-{n}"
                batch.append(track(anon, name, clock, order_id=order, amount=9, item_id=item))
        send(ws, *batch)
        run(ws)
        if restarts and batch_no in (1, 3, 4):
            engine.forget(ws)  # a restart: states, memos and timers rebuilt from the warehouse
    end = clock + DAY  # let every absence mature
    send(ws, track("r0", "login", end))
    run(ws)
    return T0 - DAY, end + timedelta(microseconds=1)


@pytest.mark.parametrize("restarts", [False, True], ids=["steady", "restarted"])
def test_the_stream_and_a_batch_backtest_make_the_same_leads(ws, restarts):
    made = random_rules(ws)
    start, end = random_stream(ws, seed=11, restarts=restarts)
    total = 0
    for rule in made:
        live = {
            (lead.person_key, _utc(lead.created_at), lead.dedupe_key)
            for lead in all_leads(ws, rule.id)
        }
        assert len(live) == len(all_leads(ws, rule.id))  # no lead twice
        for how in ("reference", "stream"):  # the batch backtest; the dry-run's stream logic
            hits, counts = backtest.simulate(ws, rule, start, end, how)
            batch = {(h.person, h.match.fired_at, backtest.dedupe_key(rule, h.match)) for h in hits}
            assert live == batch, (rule.name, how, sorted(live ^ batch))
            assert counts["leads"] == len(live)
        total += len(live)
    assert all(all_leads(ws, r.id) for r in made)  # every rule made some leads
    with ws.db.connect() as conn:
        fired = dict(conn.execute(select(lead_rules.c.name, lead_rules.c.fired)).all())
    assert sum(fired.values()) == total


# -- offline --------------------------------------------------------------------------------------
def test_an_offline_rule_makes_its_leads_once_per_period(ws):
    rule = make_rule(
        ws,
        name="silent_buyers",
        lead_type="silent buyer",
        trigger="sequence order_paid then not order_paid within 2 days",
        conditions=f"has tag {TAGS[0]}",
        mode="offline",
        schedule="daily",
        route="auto",
    )
    p1, p2, p3 = people(ws, "a1", "a2", "a3")
    tag(ws, [p1, p2], TAGS[0])
    send(
        ws,
        track("a1", "order_paid", T0, order_id="o1", amount=10),  # silent since: a lead
        track("a2", "order_paid", T0, order_id="o2", amount=10),
        track("a2", "order_paid", T0 + DAY, order_id="o3", amount=10),  # bought again
        track("a3", "order_paid", T0, order_id="o4", amount=10),  # not tagged
    )
    run(ws)
    assert all_leads(ws) == []  # offline: the stream engine leaves it alone
    key = offline.job_key(rule)
    first = run_now(ws, key, now=T0 + 2 * DAY + 12 * HOUR)
    assert first["status"] == "ok", first
    # the first run covers one interval of the schedule: a1's silence ended in it
    assert [(lead.person_key, _utc(lead.created_at)) for lead in all_leads(ws)] == [
        (p1, T0 + 2 * DAY)
    ]
    assert first["result"]["leads"] == 1
    assert first["result"]["start"] == (T0 + DAY + 12 * HOUR).isoformat()
    # the next run starts where it ended; a2's second order's wait ran out at T0 + 3 days
    second = run_now(ws, key, now=T0 + 3 * DAY + 12 * HOUR)
    assert second["result"]["start"] == (T0 + 2 * DAY + 12 * HOUR).isoformat()
    assert [(lead.person_key, _utc(lead.created_at)) for lead in all_leads(ws)] == [
        (p1, T0 + 2 * DAY),
        (p2, T0 + 3 * DAY),
    ]
    # the whole period again (a rerun): the same two leads are found, none is made twice
    again = offline.run(ws, rule, T0 + 3 * DAY + 12 * HOUR, start=T0)
    assert (again["passed"], again["leads"]) == (2, 0)
    assert len(all_leads(ws)) == 2


# -- backtest and dry-run -------------------------------------------------------------------------
def test_backtest_numbers_and_the_api(ws, client, admin_headers):
    make_rule(
        ws,
        name="fridge_views",
        lead_type="fridge view",
        trigger='event view_product where category = "fridge"',
        conditions=None,
        cooldown={"amount": 1, "unit": "hours"},
        status="paused",  # a backtest needs no live rule, and writes nothing
    )
    people(ws, "a1", "a2", "a3")
    send(
        ws,
        view("a1", T0),
        view("a1", T0 + 30 * MIN),  # within the cooldown of the first
        view("a2", T0),
        view("a3", T0),
        view("a1", T0 + DAY),
        track("a1", "order_paid", T0 + 2 * DAY, order_id="o1", amount=5999),  # converts both
        track("a2", "order_paid", T0 + 10 * DAY, order_id="o2", amount=5999),  # too late
    )
    run(ws)
    day0 = T0.replace(hour=0)
    period = {"start": day0.isoformat(), "end": (day0 + 3 * DAY).isoformat()}
    res = client.post("/api/leads/rules/fridge_views/backtest", json=period, headers=admin_headers)
    assert res.status_code == 200, res.text
    got = res.json()
    assert (got["matches"], got["passed"], got["leads"]) == (5, 5, 4)
    assert (got["suppressed_by_cooldown"], got["persons"]) == (1, 3)
    assert got["goal"] == {**got["goal"], "event": "order_paid", "days": 7, "converted": 2}
    assert got["goal"]["never"] == 2 and got["goal"]["never_share"] == 50
    assert got["summary"] == (
        "would have produced 4 leads, 50% of them never did order_paid within 7 days"
    )
    assert got["daily"] == [
        {"day": "2025-03-01", "leads": 3},
        {"day": "2025-03-02", "leads": 1},
        {"day": "2025-03-03", "leads": 0},
    ]
    assert len(got["sample"]) == 4
    first = got["sample"][0]
    assert first["fired_at"] == T0.isoformat() and first["evidence"][0]["event"] == "view_product"
    assert all_leads(ws) == []  # nothing written

    # the dry-run: the live stream logic over the same period gives the same numbers
    dry = {"hours": 72, "end": period["end"]}
    res = client.post("/api/leads/rules/fridge_views/dry-run", json=dry, headers=admin_headers)
    assert res.status_code == 200, res.text
    assert res.json()["matcher"] == "stream"
    keys = ("matches", "passed", "leads", "goal", "daily", "sample", "summary")
    assert {k: res.json()[k] for k in keys} == {k: got[k] for k in keys}

    # a 30-day goal window counts a2's late order too
    res = client.post(
        "/api/leads/rules/fridge_views/backtest", json={**period, "days": 30}, headers=admin_headers
    )
    assert res.json()["goal"]["converted"] == 3

    wrong = {"start": period["end"], "end": period["start"]}
    res = client.post("/api/leads/rules/fridge_views/backtest", json=wrong, headers=admin_headers)
    assert res.status_code == 422 and res.json()["field"] == "start"
    res = client.post("/api/leads/rules/nope/backtest", json=period, headers=admin_headers)
    assert res.status_code == 404 and res.json()["field"] == "name"

    # the console's backtest card: the same numbers, a chart per day, the sample's 360° links
    from rapport.accounts import Role
    from test_console import as_role

    csrf = as_role(client, ws, Role.marketer)
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    page = client.get("/leads/rules/fridge_views").text
    assert 'id="backtest-form"' in page and "BACKTEST PLACEHOLDER" not in page
    form = {"start": "2025-03-01T00:00", "end": "2025-03-04T00:00"}
    card = client.post("/leads/rules/fridge_views/backtest", data=form, headers=hx)
    assert card.status_code == 200, card.text
    assert "would have produced 4 leads, 50% of them never did order_paid" in card.text
    assert 'id="backtest-chart"' in card.text and f'href="/persons/{person(ws, "a1")}"' in card.text
    dry = client.post(
        "/leads/rules/fridge_views/backtest", data={"end": form["end"], "hours": "72"}, headers=hx
    )
    assert 'data-matcher="stream"' in dry.text and "4 leads" in dry.text
