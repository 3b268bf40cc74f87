"""Leads: rules checked before they are saved, versions, ``fire`` (dedupe, cooldown, routing,
the outbox in the same transaction), statuses, team assignment, outcomes and roles.

Against the real metadata DB and the whole app in process; the tracking plan is the example
one (examples/tracking-plan.yaml), so names are checked as a marketer's would be.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import copy_home
from rapport import accounts
from rapport.accounts import Role
from rapport.catalog import import_plan
from rapport.db.tables import lead_history, lead_rules, leads, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.leads import fire, routing, rules
from rapport.leads.records import LeadError, change_status, claim
from rapport.leads.seed import SEED_RULE, TAGS
from rapport.settings import Settings
from rapport.tags.definitions import TagIn, create_tag
from rapport.workspace import Workspace

PLAN_FILE = Path(__file__).resolve().parents[1] / "examples" / "tracking-plan.yaml"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory, migrated_home: Path) -> Path:
    """The example plan, the seed's two tags and an outbound-call channel."""
    ws = Workspace(copy_home(migrated_home, tmp_path_factory.mktemp("leads")))
    import_plan(ws.db, PLAN_FILE.read_text(encoding="utf-8"))
    for name in TAGS:
        create_tag(
            ws.db,
            TagIn(
                name=name,
                kind="rule",
                definition={"condition": {"kind": "did", "event": "order_paid"}},
            ),
        )
    create_channel(ws.db, ChannelSpec(name="outbound_call", kind="call_list"))
    ws.close()
    return ws.settings.home


@pytest.fixture
def settings(tmp_path: Path, template_home: Path) -> Settings:
    return copy_home(template_home, tmp_path)


def token(ws: Workspace, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {accounts.create_token(ws.db, role, role.value)}"}


def user_token(ws: Workspace, name: str, role: Role) -> dict[str, str]:
    uid = accounts.create_user(ws.db, name, "password-" + name, role)
    return {"Authorization": f"Bearer {accounts.create_token(ws.db, role, name, user_id=uid)}"}


def make_rule(ws: Workspace, **overrides: Any) -> rules.LeadRule:
    """The seed rule, live; routed to the outbound-call channel unless ``route`` says else."""
    body = {**SEED_RULE, "status": "live", **overrides}
    if body["route"] == "outbound_call" and not routing.list_routes(ws.db):
        routing.create_route(
            ws.db,
            routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call"),
        )
    created = rules.create_rule(ws.db, rules.RuleIn(**body), None)
    with ws.db.connect() as conn:
        return rules.load(conn, created["id"])


VIEW = {
    "event": "view_product",
    "message_id": "m-1",
    "timestamp": "2026-11-23T09:29:00Z",
    "properties": {"item_id": "F-100", "category": "fridge", "price": 6999, "duration_s": 75},
    "context": {"traits": {"mobile": "+8613800138000"}},
}


def fire_now(ws: Workspace, rule: rules.LeadRule, person: int, key: str, at: datetime = T0):
    with ws.db.begin() as conn:
        return fire(conn, rule, person, [VIEW], at, key)


# -- rules ----------------------------------------------------------------------------------------
def test_unknown_property_is_named_with_field_position_and_suggestion(client, workspace):
    headers = token(workspace, Role.marketer)
    body = {**SEED_RULE, "trigger": 'event view_product where category = "fridge" and prise > 1'}
    res = client.post("/api/leads/rules", json=body, headers=headers)
    assert res.status_code == 422
    out = res.json()
    assert out["field"] == "trigger"
    assert out["errors"] == [
        {
            "field": "trigger",
            "path": "$.where[1].field",
            "message": "unknown property `prise` on event view_product; did you mean `price`?",
        }
    ]
    # a syntax error in the text form names the line and column
    res = client.post(
        "/api/leads/rules/validate",
        json={"trigger": "event view_product where price >= ", "conditions": "has tag nope"},
        headers=headers,
    )
    errors = res.json()["errors"]
    assert errors[0]["field"] == "trigger" and errors[0]["path"].startswith("line 1, column")
    assert errors[1] == {
        "field": "conditions",
        "path": "$.tag",
        "message": "unknown tag `nope`",
    }


def test_trigger_must_be_an_event_or_a_sequence_and_windows_must_be_possible(workspace):
    with pytest.raises(rules.RuleError) as caught:
        rules.checked_definition(
            {
                "trigger": "has tag strong_purchasing_power",
                "conditions": "event view_product",
                "suppression": "sequence view_product then order_paid within 2 days in last 1 day",
                "cooldown": {"amount": 0, "unit": "days"},
                "mode": "offline",
            },
            None,
        )
    by_field = {e["field"]: e for e in caught.value.errors}
    assert "a trigger is an event" in by_field["trigger"]["message"]
    assert "belongs in the trigger" in by_field["conditions"]["message"]
    assert by_field["suppression"]["path"] == "$.within"
    assert "longer than the window" in by_field["suppression"]["message"]
    assert "longer than 0" in by_field["cooldown"]["message"]
    assert "needs a schedule" in by_field["schedule"]["message"]
    with pytest.raises(rules.RuleError, match="not daily, hourly or cron"):
        rules.checked_definition({"trigger": "event login", "schedule": "every tuesday"}, None)
    ok = rules.checked_definition(
        {"trigger": "event login", "mode": "offline", "schedule": "0 8 * * *"}, None
    )
    assert ok["cooldown"] == {"amount": 7, "unit": "days"}


def test_seed_rule_is_stored_verbatim_and_reads_back_as_text(client, workspace):
    headers = token(workspace, Role.marketer)
    res = client.post("/api/leads/rules", json=SEED_RULE, headers=headers)
    assert res.status_code == 422 and res.json()["field"] == "route"
    assert (
        res.json()["detail"]
        == "route: no route named 'outbound_call' (routes: none yet); or `auto`"
    )
    routing.create_route(
        workspace.db,
        routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call"),
    )
    res = client.post("/api/leads/rules", json=SEED_RULE, headers=headers)
    assert res.status_code == 201, res.text
    saved = client.get(
        f"/api/leads/rules/{SEED_RULE['name']}", headers=token(workspace, Role.sales)
    ).json()
    assert saved["text"] == {
        "trigger": SEED_RULE["trigger"],
        "conditions": SEED_RULE["conditions"],
        "suppression": None,
    }
    trigger = saved["definition"]["trigger"]
    assert trigger["kind"] == "sequence" and trigger["then_not"] == {
        "event": "order_paid",  # for that item: a reference to the view's item
        "where": [{"field": "item_id", "op": "=", "value": {"ref": "v.item_id"}}],
    }
    assert trigger["steps"][0]["where"] == [
        {"field": "category", "op": "=", "value": "fridge"},
        {"field": "price", "op": ">=", "value": 5000},
        {"field": "duration_s", "op": ">=", "value": 60},
    ]
    assert saved["lead_type"] == "high-value user viewing fridges in detail"
    assert (saved["status"], saved["version"], saved["route"]) == ("draft", 1, "outbound_call")


def test_editing_a_live_rule_makes_a_version_a_draft_is_edited_in_place(client, workspace):
    headers = token(workspace, Role.marketer)
    name = SEED_RULE["name"]
    res = client.post("/api/leads/rules", json={**SEED_RULE, "route": "auto"}, headers=headers)
    assert res.status_code == 201, res.text
    res = client.patch(f"/api/leads/rules/{name}", json={"score": 90}, headers=headers)
    assert res.json()["version"] == 1
    res = client.patch(f"/api/leads/rules/{name}", json={"cooldown": "3 days"}, headers=headers)
    assert res.json()["version"] == 1  # a draft: no lead can point at it yet
    assert client.post(f"/api/leads/rules/{name}/activate", headers=headers).json()["status"] == (
        "live"
    )
    res = client.patch(f"/api/leads/rules/{name}", json={"priority": 2}, headers=headers)
    assert res.json()["version"] == 1  # not logic
    new = {"suppression": "did order_paid in last 1 days"}
    res = client.patch(f"/api/leads/rules/{name}", json=new, headers=headers)
    assert res.status_code == 200, res.text
    assert res.json()["version"] == 2
    versions = client.get(f"/api/leads/rules/{name}", headers=headers).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert "suppression" in versions[0]["definition"]
    assert "suppression" not in versions[1]["definition"]
    assert versions[1]["definition"]["cooldown"] == {"amount": 3, "unit": "days"}
    res = client.patch(
        f"/api/leads/rules/{name}",
        json={"conditions": "has tag strong_purchasing_powr"},
        headers=headers,
    )
    assert res.status_code == 422
    assert "did you mean `strong_purchasing_power`" in res.json()["detail"]
    assert client.post(f"/api/leads/rules/{name}/pause", headers=headers).json()["status"] == (
        "paused"
    )


# -- fire ---------------------------------------------------------------------------------------
def test_fire_writes_lead_history_and_outbox_together_once_per_key_and_cooldown(workspace):
    routing.create_route(
        workspace.db,
        routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call"),
    )
    rule = make_rule(workspace)
    lead = fire_now(workspace, rule, 7, f"{rule.id}:m-1")
    assert lead is not None
    assert (lead.status, lead.channel, lead.rule_version, lead.score) == (
        "new",
        "outbound_call",
        1,
        80,
    )
    with workspace.db.connect() as conn:
        history = (
            conn.execute(select(lead_history.c.action).where(lead_history.c.lead_id == lead.id))
            .scalars()
            .all()
        )
        sent = conn.execute(select(outbox).where(outbox.c.origin == f"lead:{lead.id}")).all()
    assert history == ["created", "routed"]
    assert len(sent) == 1 and sent[0].key == f"lead:{lead.id}" and sent[0].person_key == 7
    assert sent[0].payload["evidence"][0]["properties"]["price"] == 6999
    assert sent[0].payload["rule"] == {"id": rule.id, "name": rule.name, "version": 1}

    # the same trigger replayed after a crash: nothing new
    assert fire_now(workspace, rule, 7, f"{rule.id}:m-1") is None
    # another trigger within the cooldown (7 days): suppressed and counted
    assert fire_now(workspace, rule, 7, f"{rule.id}:m-2", T0 + timedelta(days=6)) is None
    # another person, and the same person after the cooldown: leads
    assert fire_now(workspace, rule, 8, f"{rule.id}:m-3", T0 + timedelta(days=1)) is not None
    assert fire_now(workspace, rule, 7, f"{rule.id}:m-4", T0 + timedelta(days=8)) is not None
    with workspace.db.connect() as conn:
        counts = conn.execute(
            select(lead_rules.c.fired, lead_rules.c.suppressed).where(lead_rules.c.id == rule.id)
        ).one()
        assert tuple(counts) == (3, 1)
        assert conn.execute(select(outbox.c.id)).all().__len__() == 3


def test_fire_rolls_back_with_the_callers_transaction(workspace):
    routing.create_route(
        workspace.db,
        routing.RouteIn(name="calls", target_kind="channel", target="outbound_call"),
    )
    rule = make_rule(workspace, route="calls")
    with pytest.raises(RuntimeError), workspace.db.begin() as conn:
        assert fire(conn, rule, 5, [VIEW], T0, "k-1") is not None
        raise RuntimeError("the stream worker dies before its checkpoint")
    with workspace.db.connect() as conn:
        assert conn.execute(select(leads.c.id)).all() == []
        assert conn.execute(select(outbox.c.id)).all() == []
    assert fire_now(workspace, rule, 5, "k-1") is not None  # the retry creates it, once


def test_status_transitions_are_enforced_with_what_is_allowed(workspace):
    rule = make_rule(workspace, route="auto")  # no route: the inbox
    lead = fire_now(workspace, rule, 1, "t-1")
    assert lead is not None and lead.channel is None and lead.team is None
    with pytest.raises(LeadError) as caught:
        change_status(workspace.db, lead.id, "converted", "amy")
    assert caught.value.message == (
        "a lead cannot go from new to converted (from new: assigned, contacted, closed_lost, "
        "invalid)"
    )
    claim(workspace.db, lead.id, "amy")
    with pytest.raises(LeadError, match="amy's already"):
        claim(workspace.db, lead.id, "bob")
    for step in ("contacted", "converted"):
        changed, ok = change_status(workspace.db, lead.id, step, "amy", note=f"now {step}")
        assert ok and changed.status == step
    with pytest.raises(LeadError, match="converted is final"):
        change_status(workspace.db, lead.id, "invalid", "amy")


# -- routing ------------------------------------------------------------------------------------
def _team(ws: Workspace, name: str, strategy: str, agents: list[str], **kw: Any) -> None:
    for agent in agents:
        accounts.create_user(ws.db, agent, "password-" + agent, Role.sales)
    routing.create_team(ws.db, routing.TeamIn(name=name, strategy=strategy, agents=agents, **kw))
    routing.create_route(ws.db, routing.RouteIn(name=f"to-{name}", target_kind="team", target=name))


def test_round_robin_takes_turns(workspace):
    _team(workspace, "north", "round_robin", ["ann", "ben", "cai"])
    rule = make_rule(workspace, route="to-north")
    owners = [fire_now(workspace, rule, p, f"rr-{p}").owner for p in range(5)]
    assert owners == ["ann", "ben", "cai", "ann", "ben"]


def test_least_load_picks_the_agent_with_fewest_open_leads(workspace):
    _team(workspace, "south", "least_load", ["dan", "eve"])
    rule = make_rule(workspace, route="to-south")
    first = fire_now(workspace, rule, 1, "ll-1")
    second = fire_now(workspace, rule, 2, "ll-2")
    assert (first.owner, second.owner) == ("dan", "eve")
    change_status(workspace.db, first.id, "invalid", "dan")  # dan's lead is closed
    third = fire_now(workspace, rule, 3, "ll-3")
    fourth = fire_now(workspace, rule, 4, "ll-4")
    assert (third.owner, fourth.owner) == ("dan", "dan")  # 0 open, then 1 against eve's 1
    assert fire_now(workspace, rule, 5, "ll-5").owner == "eve"


def test_outside_working_hours_a_lead_waits_then_is_assigned_at_opening(workspace):
    # Shanghai, Monday to Friday 09:00-18:00: Monday 10:00 UTC is 18:00 there, closed
    _team(workspace, "east", "round_robin", ["fay"], timezone="Asia/Shanghai")
    rule = make_rule(workspace, route="to-east")
    lead = fire_now(workspace, rule, 9, "wh-1")
    assert (lead.status, lead.team, lead.owner) == ("new", "east", None)
    assert routing.assign_waiting(workspace, T0 + timedelta(hours=12)) == 0  # 06:00 Tuesday
    assert routing.assign_waiting(workspace, T0 + timedelta(hours=15)) == 1  # 09:00
    assert routing.assign_waiting(workspace, T0 + timedelta(hours=16)) == 0  # idempotent
    with workspace.db.connect() as conn:
        row = conn.execute(select(leads).where(leads.c.id == lead.id)).one()
    assert (row.status, row.owner) == ("assigned", "fay")
    # a night shift runs past midnight; Saturday is not in the days
    night = {"timezone": "UTC", "days": [5], "opens": "22:00", "closes": "06:00"}
    assert routing.is_open(night, datetime(2026, 11, 28, 3, 0, tzinfo=UTC))  # Saturday 03:00
    assert not routing.is_open(night, datetime(2026, 11, 28, 23, 0, tzinfo=UTC))


def test_teams_take_only_sales_users_and_routes_known_targets(client, workspace, admin_headers):
    accounts.create_user(workspace.db, "mia", "password-mia", Role.marketer)
    res = client.post(
        "/api/leads/teams", json={"name": "west", "agents": ["mia"]}, headers=admin_headers
    )
    assert res.status_code == 422
    assert res.json() == {
        "detail": "'mia' has role 'marketer'; agents are `sales` users",
        "field": "agents",
    }
    res = client.post(
        "/api/leads/routes",
        json={"name": "r", "target_kind": "channel", "target": "fax"},
        headers=admin_headers,
    )
    assert res.status_code == 422 and res.json()["field"] == "target"
    assert "configured: outbound_call" in res.json()["detail"]


# -- the API: outcomes, roles, masking --------------------------------------------------------
def test_outcome_api_with_a_token_is_idempotent_by_external_id(client, workspace):
    rule = make_rule(workspace)
    lead = fire_now(workspace, rule, 3, "o-1")
    headers = token(workspace, Role.sales)  # the call centre's token
    url = f"/api/leads/{lead.id}/outcome"
    body = {"status": "contacted", "note": "answered", "external_id": "call-981"}
    first = client.post(url, json=body, headers=headers)
    assert first.json() == {"lead_id": lead.id, "status": "contacted", "duplicate": False}
    again = client.post(url, json=body, headers=headers)
    assert again.json() == {"lead_id": lead.id, "status": "contacted", "duplicate": True}
    bad = client.post(url, json={"status": "assigned", "external_id": "call-982"}, headers=headers)
    assert bad.status_code == 409 and bad.json()["field"] == "status"
    done = client.post(
        url, json={"status": "converted", "external_id": "call-983"}, headers=headers
    )
    assert done.json()["status"] == "converted"
    history = client.get(f"/api/leads/{lead.id}", headers=headers).json()["history"]
    outcomes = [(h["to_status"], h["external_id"]) for h in history if h["action"] == "outcome"]
    assert outcomes == [("contacted", "call-981"), ("converted", "call-983")]
    assert client.post(url, json=body).status_code == 401


def test_roles_sales_cannot_edit_rules_and_pii_is_masked_unless_owned(client, workspace):
    sales = user_token(workspace, "sam", Role.sales)
    assert client.post("/api/leads/rules", json=SEED_RULE, headers=sales).status_code == 403
    viewer = token(workspace, Role.viewer)
    assert client.post("/api/leads/1/claim", headers=viewer).status_code == 403
    lead = fire_now(workspace, make_rule(workspace), 4, "p-1")
    url = f"/api/leads/{lead.id}"

    def mobile(headers: dict[str, str]) -> str:
        return client.get(url, headers=headers).json()["evidence"][0]["context"]["traits"]["mobile"]

    assert mobile(viewer) == "+861****8000"
    assert mobile(sales) == "+861****8000"  # not sam's lead yet
    claimed = client.post(f"{url}/claim", headers=sales)
    # a user's token acts as the user (rapport.accounts.token_principal)
    assert claimed.json()["owner"] == "sam"
    assert mobile(sales) == "+8613800138000"
    assert mobile(token(workspace, Role.marketer)) == "+861****8000"
    res = client.post(
        f"{url}/status", json={"status": "contacted", "note": "called"}, headers=sales
    )
    assert res.json()["status"] == "contacted"
    listed = client.get("/api/leads?owner=me&status=contacted", headers=sales).json()
    assert listed["total"] == 1 and listed["leads"][0]["id"] == lead.id
    # another agent may not move sam's lead
    other = user_token(workspace, "tia", Role.sales)
    res = client.post(f"{url}/status", json={"status": "converted"}, headers=other)
    assert res.status_code == 403 and res.json() == {
        "detail": f"lead {lead.id} is sam's",
        "field": "owner",
    }


# -- the console ------------------------------------------------------------------------------
def test_console_inbox_claim_status_note_and_rule_editor(client, workspace):
    from test_console import as_role

    routing.create_route(
        workspace.db, routing.RouteIn(name="calls", target_kind="channel", target="outbound_call")
    )
    rule = make_rule(workspace, route="auto")
    lead = fire_now(workspace, rule, 42, "c-1")
    csrf = as_role(client, workspace, Role.sales)  # signs in as "sales_user"
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    inbox = client.get("/leads?owner=")
    assert inbox.status_code == 200 and f"#{lead.id}" in inbox.text and "Claim" in inbox.text
    assert "+861****8000" not in inbox.text  # the inbox lists no evidence
    later = client.get("/leads/rows?owner=&since=2026-11-24T00:00")
    assert later.status_code == 200 and f"#{lead.id}" not in later.text
    assert f"#{lead.id}" in client.get("/leads/rows?owner=&until=2026-11-24T00:00").text
    row = client.post(f"/leads/{lead.id}/claim", headers=hx)
    assert row.status_code == 200 and "sales_user" in row.text and "Claim" not in row.text
    page = client.get(f"/leads/{lead.id}")
    assert "+8613800138000" in page.text  # the owner sees the number to call
    assert 'href="/persons/42"' in page.text and "BACKTEST" not in page.text
    work = client.post(
        f"/leads/{lead.id}/status", data={"status": "contacted", "note": "rang twice"}, headers=hx
    )
    assert work.status_code == 200 and "rang twice" in work.text and "status-contacted" in work.text
    work = client.post(f"/leads/{lead.id}/notes", data={"body": "wants a 2-door"}, headers=hx)
    assert "wants a 2-door" in work.text
    bad = client.post(f"/leads/{lead.id}/status", data={"status": "new"}, headers=hx)
    assert bad.status_code == 409 and "cannot go from contacted to new" in bad.json()["detail"]
    # sales reads rules but cannot save them
    assert client.get(f"/leads/rules/{rule.name}").status_code == 200
    denied = client.post(f"/leads/rules/{rule.name}", data={"score": "10"}, headers=hx)
    assert denied.status_code == 403
    page = client.get(f"/leads/rules/{rule.name}").text
    assert 'id="backtest"' in page and 'id="backtest-form"' not in page  # sales: no backtest
    assert client.get("/leads/teams").status_code == 200


def test_fire_dedupes_and_cools_down_on_postgresql(pg_url):
    from rapport.db import make_engine, upgrade

    upgrade(pg_url)
    engine = make_engine(pg_url)
    try:
        create_channel(engine, ChannelSpec(name="outbound_call", kind="call_list"))
        routing.create_route(
            engine,
            routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call"),
        )
        created = rules.create_rule(engine, rules.RuleIn(**{**SEED_RULE, "status": "live"}), None)
        with engine.begin() as conn:
            rule = rules.load(conn, created["id"])
            first = fire(conn, rule, 7, [VIEW], T0, "pg-1")
            assert fire(conn, rule, 7, [VIEW], T0, "pg-1") is None
            assert fire(conn, rule, 7, [VIEW], T0 + timedelta(hours=1), "pg-2") is None
        assert first is not None and first.created_at == T0
        with engine.connect() as conn:
            assert conn.execute(select(outbox.c.key)).scalars().all() == [f"lead:{first.id}"]
            counts = conn.execute(select(lead_rules.c.fired, lead_rules.c.suppressed)).one()
            assert tuple(counts) == (1, 1)
    finally:
        engine.dispose()
