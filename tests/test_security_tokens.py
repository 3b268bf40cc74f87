"""API tokens with scopes, rotation, revocation and expiry; the audit log, its API and page.

Everything over real HTTP (in-process app), the real metadata DB and the real CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from conftest import copy_home
from rapport import accounts, catalog
from rapport.accounts import Role
from rapport.settings import Settings
from rapport.workspace import Workspace
from test_console import PASSWORD, as_role, csrf_of, sign_in


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(ws: Workspace, role: Role, scopes: str | None = None, name: str = "t") -> str:
    chosen = None if scopes is None else accounts.parse_scopes(scopes)
    return accounts.create_token(ws.db, role, name, scopes=chosen)


def audited(ws: Workspace, action: str) -> list[dict]:
    from rapport.web.api_audit import query

    return [e.model_dump() for e in query(ws.db, action=action, limit=1000)]


# -- scopes -----------------------------------------------------------------------------------


def test_read_and_write_scopes_bound_safe_and_unsafe_methods(client, workspace):
    reader = bearer(token(workspace, Role.admin, "read"))
    assert client.get("/api/sources", headers=reader).status_code == 200
    refused = client.post("/api/segments/x/refresh", headers=reader)
    assert refused.status_code == 403
    assert "lacks the 'write' scope (it has: read)" in refused.json()["detail"]

    writer = bearer(token(workspace, Role.marketer, "write"))
    refused = client.get("/api/segments", headers=writer)
    assert refused.status_code == 403 and "'read' scope" in refused.json()["detail"]
    made = client.post("/api/tags", headers=writer, json={"name": "vip", "kind": "manual"})
    assert made.status_code in (200, 201), made.text

    # a query sent by POST only reads: the read scope is enough
    sized = client.post("/api/segments/size", headers=reader, json={"condition": "true"})
    assert sized.status_code == 422 and "expected an operator" in sized.text  # past the guard


def test_role_still_bounds_a_token_whatever_its_scopes(client, workspace):
    viewer = bearer(token(workspace, Role.viewer, "read,write"))
    refused = client.post("/api/tags", headers=viewer, json={"name": "vip", "kind": "manual"})
    assert refused.status_code == 403 and "role 'viewer'" in refused.json()["detail"]
    with pytest.raises(ValueError, match="'admin' needs role admin"):
        token(workspace, Role.marketer, "admin")


def test_admin_routes_need_the_admin_scope(client, workspace):
    plain = bearer(token(workspace, Role.admin, "read,write"))
    refused = client.get("/api/users", headers=plain)
    assert refused.status_code == 403 and "'admin' scope" in refused.json()["detail"]
    assert client.get("/api/tokens", headers=plain).status_code == 403
    # admin implies read and write elsewhere; the default for an admin token includes it
    full = bearer(token(workspace, Role.admin, "admin"))
    assert client.get("/api/users", headers=full).status_code == 200
    assert client.get("/api/segments", headers=full).status_code == 200
    default = bearer(accounts.create_token(workspace.db, Role.admin))
    assert client.get("/api/users", headers=default).status_code == 200


def test_console_sessions_are_not_scoped(client, workspace):
    as_role(client, workspace, Role.admin)
    assert client.get("/api/users").status_code == 200


def test_ingest_scope_posts_events_to_the_collector(client, workspace, admin_headers):
    web = {"name": "web", "kind": "client"}
    made = client.post("/api/sources", headers=admin_headers, json=web)
    assert made.status_code == 201, made.text
    ingest = bearer(token(workspace, Role.viewer, "ingest"))
    event = {"userId": "u1", "event": "view_product"}
    sent = client.post("/v1/track", headers={**ingest, "X-Source": "web"}, json=event)
    assert sent.status_code == 200 and sent.json()["success"], sent.text

    no_source = client.post("/v1/track", headers=ingest, json=event)
    assert no_source.status_code == 400 and "X-Source" in no_source.json()["message"]
    unknown = client.post("/v1/track", headers={**ingest, "X-Source": "app"}, json=event)
    assert unknown.status_code == 400 and "'app'" in unknown.json()["message"]
    reader = bearer(token(workspace, Role.admin, "read"))
    refused = client.post("/v1/track", headers={**reader, "X-Source": "web"}, json=event)
    assert refused.status_code == 403 and "'ingest' scope" in refused.json()["message"]
    bad = client.post("/v1/track", headers={**bearer("rpt_nope"), "X-Source": "web"}, json=event)
    assert bad.status_code == 401
    # ingest alone does not read the API
    assert client.get("/api/sources", headers=ingest).status_code == 403


def test_migration_gives_existing_tokens_what_their_role_allowed(tmp_path):
    import sqlalchemy as sa

    from rapport.db import upgrade

    url = f"sqlite:///{tmp_path}/meta.db"
    upgrade(url, "a7d3e5c10009")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for n, role in enumerate(["admin", "viewer"]):
            conn.execute(
                sa.text(
                    "INSERT INTO api_tokens (name, token_hash, role, created_at) "
                    "VALUES (:r, :h, :r, CURRENT_TIMESTAMP)"
                ),
                {"r": role, "h": f"{n:064d}"},
            )
    upgrade(url)
    with engine.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT role, scopes FROM api_tokens")).all())
    assert rows == {"admin": "read,write,admin", "viewer": "read,write"}
    engine.dispose()


# -- lifecycle: create, list, rotate, revoke, expire ------------------------------------------


def test_api_creates_and_lists_tokens_without_secrets(client, workspace, admin_headers):
    made = client.post(
        "/api/tokens",
        headers=admin_headers,
        json={"name": "shop", "role": "marketer", "scopes": ["read"], "expires_in": "30d"},
    )
    assert made.status_code == 201, made.text
    body = made.json()
    secret = body["token"]
    assert secret.startswith("rpt_") and body["scopes"] == ["read"]
    assert body["status"] == "active" and body["expires_at"]
    assert client.get("/api/segments", headers=bearer(secret)).status_code == 200

    listed = client.get("/api/tokens", headers=admin_headers)
    assert listed.status_code == 200
    assert secret not in listed.text and "hash" not in listed.text
    shop = next(t for t in listed.json() if t["name"] == "shop")
    assert shop["role"] == "marketer" and shop["last_used_at"] is not None
    assert {"created_at", "expires_at", "scopes"} <= set(shop)

    bad = client.post(
        "/api/tokens", headers=admin_headers, json={"name": "x", "scopes": ["delete"]}
    )
    assert bad.status_code == 422
    worse = client.post(
        "/api/tokens", headers=admin_headers, json={"name": "x", "expires_in": "soon"}
    )
    assert worse.status_code == 422 and "expires_in" in worse.text


def test_rotation_without_grace_stops_the_old_secret_at_once(client, workspace, admin_headers):
    old = token(workspace, Role.admin, name="etl")
    tid = accounts.find_token(workspace.db, "etl")["id"]
    rotated = client.post(f"/api/tokens/{tid}/rotate", headers=admin_headers)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["token"]
    assert new != old and rotated.json()["rotated_from"] == tid
    failed = client.get("/api/sources", headers=bearer(old))
    assert failed.status_code == 401 and "token was rotated" in failed.json()["detail"]
    assert client.get("/api/sources", headers=bearer(new)).status_code == 200
    again = client.post(f"/api/tokens/{tid}/rotate", headers=admin_headers)
    assert again.status_code == 409


def test_rotation_with_grace_keeps_the_old_secret_until_it_ends(client, workspace, admin_headers):
    old = token(workspace, Role.admin, name="etl")
    tid = accounts.find_token(workspace.db, "etl")["id"]
    rotated = client.post(f"/api/tokens/{tid}/rotate", headers=admin_headers, json={"grace": "1s"})
    new = rotated.json()["token"]
    assert client.get("/api/sources", headers=bearer(old)).status_code == 200
    assert client.get("/api/sources", headers=bearer(new)).status_code == 200
    states = {t["id"]: t["status"] for t in accounts.list_tokens(workspace.db)}
    assert states[tid] == "rotating"
    time.sleep(1.1)
    failed = client.get("/api/sources", headers=bearer(old))
    assert failed.status_code == 401 and "token was rotated" in failed.json()["detail"]
    assert client.get("/api/sources", headers=bearer(new)).status_code == 200


def test_revoke_and_expiry(client, workspace, admin_headers):
    doomed = token(workspace, Role.admin, name="old-ci")
    tid = accounts.find_token(workspace.db, "old-ci")["id"]
    gone = client.delete(f"/api/tokens/{tid}", headers=admin_headers)
    assert gone.status_code == 200 and gone.json()["status"] == "revoked"
    failed = client.get("/api/sources", headers=bearer(doomed))
    assert failed.status_code == 401 and "token was revoked" in failed.json()["detail"]
    assert client.delete("/api/tokens/99999", headers=admin_headers).status_code == 404

    past = accounts.now() - timedelta(seconds=1)
    expired = accounts.create_token(workspace.db, Role.admin, "temp", expires_at=past)
    failed = client.get("/api/sources", headers=bearer(expired))
    assert failed.status_code == 401 and "token expired" in failed.json()["detail"]


@pytest.fixture
def cli(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    from rapport.cli import app
    from rapport.settings import get_settings

    monkeypatch.setenv("RAPPORT_HOME", str(workspace.settings.home))
    get_settings.cache_clear()

    def run(*args: str, code: int = 0) -> str:
        out = CliRunner().invoke(app, ["token", *args])
        assert out.exit_code == code, out.output
        return out.output

    yield run
    get_settings.cache_clear()


def test_cli_create_list_rotate_revoke(cli, client, workspace):
    made = json.loads(cli("create", "--name", "pipeline", "--scopes", "ingest", "--json"))
    assert made["scopes"] == ["ingest"] and made["token"].startswith("rpt_")
    listing = cli("list")
    assert "pipeline" in listing and "ingest" in listing and made["token"] not in listing
    rows = json.loads(cli("list", "--json"))
    assert not any("token_hash" in r or "token" in r for r in rows)

    rotated = json.loads(cli("rotate", "pipeline", "--grace", "1h", "--json"))
    assert rotated["replaces"] == made["id"] and rotated["token"] != made["token"]
    src = client.post(
        "/api/sources", headers=bearer(token(workspace, Role.admin)), json={"name": "web"}
    )
    assert src.status_code == 201
    event = {"userId": "u1", "event": "e"}
    for secret in (made["token"], rotated["token"]):  # both work during the grace period
        sent = client.post("/v1/track", headers={**bearer(secret), "X-Source": "web"}, json=event)
        assert sent.status_code == 200, sent.text

    assert cli("revoke", "pipeline").count("Revoked") == 2  # the new secret and the old one
    for secret in (made["token"], rotated["token"]):
        refused = client.post(
            "/v1/track", headers={**bearer(secret), "X-Source": "web"}, json=event
        )
        assert refused.status_code == 401

    assert "no active token named 'nope'" in cli("rotate", "nope", code=1)


# -- the audit log ----------------------------------------------------------------------------


def test_token_changes_and_sign_ins_are_audited(client, workspace, admin_headers):
    made = client.post("/api/tokens", headers=admin_headers, json={"name": "bi"}).json()
    client.post(f"/api/tokens/{made['id']}/rotate", headers=admin_headers)
    client.delete(f"/api/tokens/{made['id'] + 1}", headers=admin_headers)
    assert [e["target"] for e in audited(workspace, "token.create")] == ["bi"]
    assert audited(workspace, "token.rotate")[0]["detail"]["new_id"] == made["id"] + 1
    assert audited(workspace, "token.revoke")[0]["actor"] == "token:test"

    accounts.create_user(workspace.db, "mei", PASSWORD, Role.marketer)
    assert sign_in(client, "mei", "wrong password").status_code == 401
    assert sign_in(client, "mei").status_code == 303
    assert [e["actor"] for e in audited(workspace, "login.failed")] == ["mei"]
    logins = [e["action"] for e in audited(workspace, "login")]  # the family: login.*
    assert logins == ["login", "login.failed"]


def test_exports_are_audited(client, workspace, admin_headers):
    from rapport.campaigns import CampaignIn, create_campaign
    from rapport.delivery.channels import ChannelSpec, create_channel

    spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/"}}
    create_channel(workspace.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    catalog.create_event_type(workspace.db, catalog.EventTypeBody(name="order_paid"))
    body = {
        "name": "spring",
        "goal_event": "order_paid",
        "person_keys": [1, 2],
        "channel": "sms",
        "content": {"text": "hello"},
    }
    cid = create_campaign(workspace, CampaignIn.model_validate(body), "alice")["id"]
    got = client.get(f"/api/campaigns/{cid}/results.csv", headers=admin_headers)
    assert got.status_code == 200, got.text
    [entry] = audited(workspace, "campaign.export")
    assert entry["target"] == str(cid) and entry["actor"] == "token:test"

    trend = {
        "start": "2024-06-01T00:00:00Z",
        "end": "2024-06-03T00:00:00Z",
        "events": ["order_paid"],
    }
    csv = client.post("/api/analytics/trends.csv", headers=admin_headers, json=trend)
    assert csv.status_code == 200, csv.text
    assert client.post("/api/analytics/trends", headers=admin_headers, json=trend).is_success
    [entry] = audited(workspace, "analytics.export")  # the JSON answer is not an export
    assert entry["target"] == "trends" and entry["detail"] == {"rows": 0}  # no events yet


def test_audit_api_filters_by_actor_action_and_time(client, workspace, admin_headers):
    accounts.audit(workspace.db, "li", "campaign.send", "7")
    accounts.audit(workspace.db, "li", "campaign.approve", "7")
    accounts.audit(workspace.db, "wang", "campaign.sending_fast", "8")
    accounts.audit(workspace.db, "wang", "person.erase", "42")
    got = client.get("/api/audit", headers=admin_headers, params={"action": "campaign"})
    assert [e["action"] for e in got.json()] == [
        "campaign.sending_fast",
        "campaign.approve",
        "campaign.send",
    ]
    mine = client.get("/api/audit", headers=admin_headers, params={"actor": "wang", "limit": 1})
    assert [e["action"] for e in mine.json()] == ["person.erase"]
    later = (accounts.now() + timedelta(minutes=1)).isoformat()
    assert client.get("/api/audit", headers=admin_headers, params={"since": later}).json() == []
    viewer = bearer(token(workspace, Role.viewer))
    assert client.get("/api/audit", headers=viewer).status_code == 403


def test_audit_page_shows_entries_to_admins_only(client, workspace):
    accounts.audit(workspace.db, "li", "person.erase", "42", deleted=3)
    accounts.audit(workspace.db, "wang", "segment.export", "vip")
    as_role(client, workspace, Role.admin)
    page = client.get("/audit")
    assert page.status_code == 200
    assert "person.erase" in page.text and "segment.export" in page.text
    assert 'href="/audit"' in page.text  # the admin's nav link
    only = client.get("/audit", params={"actor": "wang"}).text.split('id="audit-table"')[1]
    assert "segment.export" in only and "person.erase" not in only
    bad = client.get("/audit", params={"since": "yesterday"})
    assert bad.status_code == 422

    client.post("/logout", data={"csrf_token": csrf_of(page.text)})
    as_role(client, workspace, Role.marketer)
    refused = client.get("/audit")
    assert refused.status_code == 403 and "person.erase" not in refused.text
    assert 'href="/audit"' not in client.get("/").text


def test_unauthenticated_audit_page_redirects(client: httpx.Client):
    assert client.get("/audit", follow_redirects=False).status_code == 303
