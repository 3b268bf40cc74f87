"""The console over real HTTP (in-process): sign-in, CSRF, roles, and every page rendering."""

from __future__ import annotations

import re

import httpx
import pytest

from rapport import accounts
from rapport.accounts import Role
from rapport.workspace import Workspace

PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'"X-CSRF-Token": "([^"]+)"', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def as_role(client: httpx.Client, workspace: Workspace, role: Role) -> str:
    """Sign in as a fresh user of ``role``; the CSRF token for HTMX requests."""
    name = f"{role.value}_user"
    accounts.create_user(workspace.db, name, PASSWORD, role)
    assert sign_in(client, name).status_code == 303
    return csrf_of(client.get("/").text)


def test_signed_out_pages_redirect_to_login_with_next(client):
    response = client.get("/events?source=web", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/events%3Fsource%3Dweb"
    assert client.get("/api/users").status_code == 401


def test_login_flow_and_logout(client, workspace):
    accounts.create_user(workspace.db, "李伟", PASSWORD, Role.marketer)
    token = csrf_of(client.get("/login?next=/plan").text)
    response = client.post(
        "/login",
        data={"username": "李伟", "password": PASSWORD, "csrf_token": token, "next": "/plan"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/plan"
    page = client.get("/plan")
    assert page.status_code == 200
    assert "李伟" in page.text and "marketer" in page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    logout = client.post("/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=True)
    assert "You are signed out." in logout.text
    assert client.get("/plan", follow_redirects=False).status_code == 303


def test_wrong_password_and_unknown_user_read_the_same(client, workspace):
    accounts.create_user(workspace.db, "ana", PASSWORD, Role.viewer)
    wrong = sign_in(client, "ana", "nope")
    unknown = sign_in(client, "nobody", "nope")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong username or password." in wrong.text
    assert "Wrong username or password." in unknown.text
    assert client.get("/", follow_redirects=False).status_code == 303


def test_lockout_after_ten_failures(client, workspace):
    accounts.create_user(workspace.db, "ana", PASSWORD, Role.viewer)
    for _ in range(10):
        assert sign_in(client, "ana", "bad").status_code == 401
    locked = sign_in(client, "ana", PASSWORD)  # even the right password waits now
    assert locked.status_code == 429
    assert "Too many failed attempts" in locked.text
    accounts.create_user(workspace.db, "bob", PASSWORD, Role.viewer)
    assert sign_in(client, "bob").status_code == 303  # other usernames are not locked


def test_login_is_not_an_open_redirect(client, workspace):
    accounts.create_user(workspace.db, "ana", PASSWORD, Role.viewer)
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={
            "username": "ana",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


def test_post_without_csrf_token_is_rejected(client, workspace):
    token = as_role(client, workspace, Role.admin)
    form = {"name": "view_product", "kind": "user", "description": ""}
    refused = client.post("/plan/events", data=form, headers={"HX-Request": "true"})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    wrong = client.post("/plan/events", data=form, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    ok = client.post("/plan/events", data=form, headers={"X-CSRF-Token": token})
    assert ok.status_code == 200 and "view_product" in ok.text


def test_admin_edits_the_plan_through_the_console(client, workspace):
    token = as_role(client, workspace, Role.admin)
    hx = {"X-CSRF-Token": token, "HX-Request": "true"}
    assert client.post("/plan/events", data={"name": "view_product"}, headers=hx).is_success
    added = client.post(
        "/plan/properties",
        data={
            "scope": "event",
            "event": "view_product",
            "name": "price",
            "type": "number",
            "min": "0",
            "required": "on",
        },
        headers=hx,
    )
    assert added.status_code == 200 and "price" in added.text
    assert "Property price added to view_product." in added.headers["HX-Trigger"]
    bad = client.post(
        "/plan/properties",
        data={"scope": "event", "event": "view_product", "name": "Bad Name", "type": "number"},
        headers=hx,
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("name:")
    item = client.post(
        "/plan/properties",
        data={
            "scope": "item",
            "item_type": "product",
            "name": "category",
            "type": "string",
            "allowed_values": "fridge, tv",
        },
        headers=hx,
    )
    assert item.status_code == 200
    exported = client.get("/plan/export")
    assert exported.headers["content-disposition"].startswith("attachment")
    assert "view_product" in exported.text and "fridge" in exported.text
    changed = exported.text.replace("view_product", "search")
    imported = client.post(
        "/plan/import",
        files={"file": ("plan.yaml", changed.encode(), "application/yaml")},
        data={"replace": "on"},
        headers=hx,
    )
    assert imported.status_code == 200, imported.text
    assert 'id="event-search"' in imported.text
    assert 'id="event-view_product"' not in imported.text
    broken = client.post(
        "/plan/import", files={"file": ("p.yaml", b"events: [1", "application/yaml")}, headers=hx
    )
    assert broken.status_code in (400, 422) and "p.yaml" in broken.json()["detail"]


def test_viewer_cannot_edit_the_plan_or_manage_users(client, workspace):
    token = as_role(client, workspace, Role.viewer)
    hx = {"X-CSRF-Token": token}
    assert client.get("/plan").status_code == 200
    assert "+ New event type" not in client.get("/plan").text
    refused = client.post("/plan/events", data={"name": "view_product"}, headers=hx)
    assert refused.status_code == 403
    users_page = client.get("/users")
    assert users_page.status_code == 403 and "Not allowed" in users_page.text
    assert client.get("/api/users").status_code == 403
    made = client.post("/users", data={"username": "x", "password": "12345678"}, headers=hx)
    assert made.status_code == 403


def test_admin_manages_users_page_and_api(client, workspace, admin_headers):
    token = as_role(client, workspace, Role.admin)
    hx = {"X-CSRF-Token": token}
    made = client.post(
        "/users", data={"username": "王芳", "password": "pass-word-1", "role": "sales"}, headers=hx
    )
    assert made.status_code == 200 and "王芳" in made.text
    short = client.post("/users", data={"username": "z", "password": "short"}, headers=hx)
    assert short.status_code == 422 and "password" in short.json()["detail"]
    listed = client.get("/api/users", headers=admin_headers).json()
    assert {"username": "王芳", "role": "sales"}.items() <= next(
        u for u in listed if u["username"] == "王芳"
    ).items()
    patched = client.patch("/api/users/王芳", json={"disabled": True}, headers=admin_headers)
    assert patched.json()["disabled"] is True
    assert sign_in(client, "王芳", "pass-word-1").status_code == 401
    assert (
        client.post(
            "/api/users", json={"username": "admin", "password": "12345678"}, headers=admin_headers
        ).status_code
        == 409
    )
    # nobody can remove the last enabled admin
    for name in ("admin", "admin_user"):
        client.patch(f"/api/users/{name}", json={"role": "viewer"}, headers=admin_headers)
    last = client.patch("/api/users/admin_user", json={"role": "viewer"}, headers=admin_headers)
    assert last.status_code == 409


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/plan",
        "/sources",
        "/events",
        "/quarantine",
        "/users",
        "/events?event=x&from=2024-01-01T00:00",
        "/quarantine?status=all",
    ],
)
def test_every_page_renders(client, workspace, path):
    as_role(client, workspace, Role.admin)
    response = client.get(path)
    assert response.status_code == 200, response.text[:2000]
    assert "<nav" in response.text and "Sign out" in response.text


def test_source_pages(client, workspace):
    token = as_role(client, workspace, Role.admin)
    created = client.post(
        "/sources",
        data={"name": "web", "kind": "client", "validation_mode": "strict"},
        headers={"X-CSRF-Token": token},
    )
    assert created.status_code == 200
    key = re.search(r'id="write-key">([^<]+)<', created.text).group(1)
    assert f"-u '{key}:'" in created.text and "analytics.write_key" in created.text
    assert key not in client.get("/sources").text  # shown once
    detail = client.get("/sources/web")
    assert detail.status_code == 200 and "strict" in detail.text
    assert client.get("/sources/nope").status_code == 404
    dup = client.post("/sources", data={"name": "web"}, headers={"X-CSRF-Token": token})
    assert dup.status_code == 422 and "already exists" in dup.json()["detail"]


def test_vendor_assets_are_served_from_node_modules(client):
    htmx = client.get("/static/vendor/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:2000]
    assert client.get("/static/vendor/echarts.min.js").status_code == 200
    assert client.get("/static/console.css").status_code == 200
    assert client.get("/static/vendor/tslib.js").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_source_detail_draws_the_quality_report(client, workspace, tmp_path):
    from rapport.ingest.importer import ImportSpec, run_import
    from rapport.ingest.sources import create_source

    create_source(workspace.db, "crm")
    members = tmp_path / "members.csv"
    members.write_text(
        "member_id,mobile,city\nm1,13800138000,上海\nm2,not-a-phone,北京\nm3,13900139000,\n",
        encoding="utf-8",
    )
    spec = ImportSpec.model_validate(
        {
            "source": "crm",
            "uri": str(members),
            "mapping": {
                "target": "profiles",
                "identifiers": {"member_id": "member_id", "mobile": "mobile"},
                "properties": {"city": "city"},
            },
        }
    )
    run_import(workspace, spec)
    as_role(client, workspace, Role.viewer)
    page = client.get("/sources/crm")
    assert page.status_code == 200
    assert 'id="fill-rate"' in page.text and 'id="problems"' in page.text
    # the invalid mobile is quarantined; of the 2 members kept, 1 has a city
    assert "city" in page.text and "50.0%" in page.text
    assert "#1" in page.text  # the import run is listed
    overview = client.get("/")
    assert "crm" in overview.text  # last import runs
