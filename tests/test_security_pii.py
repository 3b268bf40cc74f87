"""One person with a mobile, an email, an ID card and a bank card, read by every role through
every view that shows personal data: admins see it in clear, viewers and marketers masked.

The person comes in through the real path (a CSV import, identity resolution, profiles); the
lead through ``fire`` with that person's evidence; the call-list message through the outbox.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import copy_home
from rapport import accounts
from rapport.accounts import Role
from rapport.catalog import import_plan
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.delivery.outbox import enqueue
from rapport.identity.resolve import resolve_pending
from rapport.identity.survivorship import build_profiles
from rapport.ingest.importer import ImportSpec, run_import
from rapport.leads import fire, routing, rules
from rapport.leads.seed import SEED_RULE, TAGS
from rapport.tags.definitions import TagIn, create_tag
from rapport.workspace import Workspace

PLAN_FILE = Path(__file__).resolve().parents[1] / "examples" / "tracking-plan.yaml"
MOBILE = "13800138001"
EMAIL = "zhang.wei@example.com"
ID_CARD = "11010519491231002X"
BANK_CARD = "6222021234567890123"
SECRETS = (MOBILE, EMAIL, ID_CARD, BANK_CARD)
CSV = (
    "member_id,name,mobile,email,id_card,bank_card\n"
    f"M1,张伟,{MOBILE},{EMAIL},{ID_CARD},{BANK_CARD}\n"
)
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_home: Path):  # type: ignore[no-untyped-def]
    """The app over a workspace holding the person (0), a lead on them, a waiting call-list
    message and a static audience of them; a signed-in client per role."""
    settings = copy_home(
        migrated_home,
        tmp_path_factory.mktemp("pii"),
        loader_in_process=False,
        dispatcher_in_process=False,
    )
    ws = Workspace(settings)
    members = settings.home.parent / "members.csv"
    members.write_text(CSV, encoding="utf-8")
    identifiers = {"member_id": "member_id", "mobile": "mobile", "email": "email"}
    run_import(
        ws,
        ImportSpec(
            source="crm",
            uri=str(members),
            mapping={
                "target": "profiles",
                "key": ["member_id"],
                "identifiers": {**identifiers, "id_card": "id_card"},
                "properties": {"name": "name", "bank_card": "bank_card"},
            },
        ),
    )
    resolve_pending(ws)
    build_profiles(ws)
    import_plan(ws.db, PLAN_FILE.read_text(encoding="utf-8"))
    for name in TAGS:
        create_tag(
            ws.db,
            TagIn(name=name, kind="rule", definition={"condition": {"kind": "did", "event": "x"}}),
        )
    create_channel(
        ws.db,
        ChannelSpec(
            name="calls",
            kind="call_list",
            config={"columns": ["name", "mobile", "email", "id_card", "bank_card"]},
        ),
    )
    routing.create_route(
        ws.db, routing.RouteIn(name="outbound_call", target_kind="channel", target="calls")
    )
    created = rules.create_rule(ws.db, rules.RuleIn(**{**SEED_RULE, "status": "live"}), None)
    evidence = {
        "event": "view_product",
        "message_id": "m-1",
        "timestamp": "2026-11-23T09:29:00Z",
        "properties": {"item_id": "F-100", "price": 6999},
        "context": {"traits": {"mobile": MOBILE, "email": EMAIL, "id_card": ID_CARD}},
    }
    at = datetime(2026, 11, 23, 10, tzinfo=UTC)
    with ws.db.begin() as conn:
        rule = rules.load(conn, created["id"])
        lead = fire(conn, rule, 0, [evidence], at, "pii-1")
        assert lead is not None
        enqueue(
            conn,
            channel="calls",
            key="call:1",
            person_key=0,
            payload={
                "name": "张伟",
                "mobile": MOBILE,
                "email": EMAIL,
                "id_card": ID_CARD,
                "bank_card": BANK_CARD,
            },
        )

    from rapport.web.app import create_app

    app = create_app(workspace=ws)
    with TestClient(app) as anonymous:
        clients = {}
        for role in (Role.admin, Role.marketer, Role.sales, Role.viewer):
            clients[role] = client = TestClient(app)
            accounts.create_user(ws.db, f"{role.value}_pii", PASSWORD, role)
            token = _csrf(client.get("/login").text)
            client.post(
                "/login",
                data={"username": f"{role.value}_pii", "password": PASSWORD, "csrf_token": token},
            )
            client.headers["X-CSRF-Token"] = _csrf(client.get("/").text)
        admin = clients[Role.admin]
        made = admin.post("/api/segments", json={"name": "vips", "mode": "static"})
        assert made.status_code == 201, made.text
        assert (
            admin.post("/api/segments/vips/upload", content=b"person_key\n0\n").status_code == 200
        )
        yield {"anonymous": anonymous, "lead": lead.id, **clients}
    ws.close()


def _csrf(html: str) -> str:
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'"X-CSRF-Token": "([^"]+)"', html
    )
    assert found
    return found.group(1)


def shows(text: str) -> set[str]:
    """Which of the person's personal values appear in clear in ``text``."""
    return {value for value in SECRETS if value in text}


MASKED = (Role.marketer, Role.viewer)


def test_person_api_and_console_page(world):
    assert shows(world[Role.admin].get("/api/persons/0").text) == {
        MOBILE,
        EMAIL,
        ID_CARD,
        BANK_CARD,
    }
    assert shows(world[Role.admin].get("/persons/0").text) >= {MOBILE, EMAIL, ID_CARD}
    for role in MASKED:
        api = world[role].get("/api/persons/0")
        assert api.status_code == 200 and shows(api.text) == set(), role
        page = world[role].get("/persons/0")
        assert page.status_code == 200 and shows(page.text) == set(), role
        assert "+861****8001" in api.text  # masked, still recognisable


def test_person_export_is_for_admins_only(world):
    export = world[Role.admin].get("/api/persons/0/export")
    assert export.status_code == 200 and shows(export.text) >= {MOBILE, EMAIL, ID_CARD}
    for role in MASKED:
        assert world[role].get("/api/persons/0/export").status_code == 403


def test_segment_export_masks_personal_columns(world):
    url = "/api/segments/vips/export.csv?attributes=name,bank_card"
    clear = world[Role.admin].get(url).text
    assert shows(clear) == {BANK_CARD} and "张伟" in clear
    masked = world[Role.marketer].get(url)
    assert masked.status_code == 200
    assert masked.text.splitlines()[:2] == ["person_key,name,bank_card", "0,***,6222****0123"]
    assert world[Role.viewer].get(url).status_code == 403


def test_call_list_is_masked_for_marketers_and_left_waiting(world):
    url = "/api/delivery/channels/calls/call-list.csv?mark=false"
    assert shows(world[Role.admin].get(url).text) == set(SECRETS)
    assert shows(world[Role.sales].get(url).text) == set(SECRETS)  # the call team calls them
    preview = world[Role.marketer].get("/api/delivery/channels/calls/call-list.csv")
    assert preview.status_code == 200 and shows(preview.text) == set()
    assert "138****8001" in preview.text
    # a masked export is a preview: the list still waits for the call team
    assert shows(world[Role.sales].get(url).text) == set(SECRETS)
    assert world[Role.viewer].get(url).status_code == 403


def test_lead_api_and_console(world):
    lead = world["lead"]
    assert shows(world[Role.admin].get(f"/api/leads/{lead}").text) >= {MOBILE, EMAIL, ID_CARD}
    for role in MASKED:
        for url in (f"/api/leads/{lead}", "/api/leads", f"/leads/{lead}", "/leads"):
            answer = world[role].get(url)
            assert answer.status_code == 200, (role, url)
            assert shows(answer.text) == set(), (role, url)
