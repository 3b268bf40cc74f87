"""Every route of the app, walked signed out and as every role.

- signed out, every route answers 401 (API) or a redirect to /login (console pages), except
  the short ``PUBLIC`` list below: a new route without a guard fails here until it is either
  guarded or added to that list on purpose;
- a viewer gets 403 on every unsafe method, except the few POSTs that only read (a query in
  the body: ``READ_ONLY_POSTS``);
- admin-only routes deny marketers, sales and viewers (``admin_only``);
- no route answers 5xx, whoever asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from conftest import copy_home
from rapport import accounts
from rapport.accounts import Role
from rapport.workspace import Workspace

PASSWORD = "correct horse battery"
ROLES = (Role.admin, Role.marketer, Role.sales, Role.viewer)

#: (method, path template) reachable without a console session or API token; each has its own
#: credential or none on purpose
PUBLIC = {
    ("GET", "/healthz"),  # load balancers
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/static/vendor/{name}"),  # the console's CSS/JS before sign-in
    ("GET", "/static/{name:path}"),
    # the collector: authenticated by the source's write key (or an ingest token)
    *(("POST", f"/v1/{kind}") for kind in ("track", "identify", "page", "screen", "group")),
    ("POST", "/v1/alias"),
    ("POST", "/v1/batch"),
    ("POST", "/v1/import"),
    # a person's links: the signed token in the URL is the credential
    ("GET", "/u/{token}"),  # unsubscribe
    ("POST", "/u/{token}"),
    ("GET", "/r/{token}"),  # tracked link
    ("GET", "/q/{token}.png"),  # its QR code
    ("POST", "/api/track/register"),  # a landing page reports a registration (token in body)
}

#: unsafe methods that change nothing (the request body is a query): viewers may call them
READ_ONLY_POSTS = {
    "/api/segments/size",
    "/api/conditions/parse",
    "/api/conditions/print",
    "/api/conditions/validate",
    "/api/leads/rules/validate",
    "/api/analytics/{kind}",
    "/api/analytics/{kind}.csv",
}

#: (method or "*", path prefix or regex) only an admin may use: users, tokens, audit, sources,
#: the tracking plan, imports, identity configuration, scheduled jobs, quarantine, erasure,
#: exports of a whole person, lead teams and routes
ADMIN_ONLY = [
    ("*", r"/api/users"),
    ("*", r"/users"),
    ("*", r"/api/tokens"),
    ("*", r"/tokens"),
    ("*", r"/api/audit"),
    ("*", r"/audit"),
    ("*", r"/api/jobs"),
    ("*", r"/jobs"),
    ("UNSAFE", r"/api/sources"),
    ("UNSAFE", r"/sources"),
    ("UNSAFE", r"/api/plan"),
    ("UNSAFE", r"/plan"),
    ("UNSAFE", r"/api/imports"),
    ("UNSAFE", r"/api/quarantine"),
    ("UNSAFE", r"/quarantine"),
    ("UNSAFE", r"/api/identity/(types|blocklist|survivorship|profiles|match)"),
    ("UNSAFE", r"/identity/(types|blocklist|survivorship|profiles|match)"),
    ("UNSAFE", r"/api/leads/(teams|routes|assign-waiting)"),
    ("UNSAFE", r"/leads/(teams|routes)"),
    ("UNSAFE", r"/lifecycle/settings"),
    ("*", r"/api/persons/\{person_id\}/export"),
    ("DELETE", r"/api/persons/"),
    ("POST", r"/persons/\{person_id\}/(erase|identifiers)"),
]

#: delivery channels hold secrets: marketers configure them (for campaigns), never sales/viewers
CHANNEL_CONFIG = [("*", r"/api/delivery/channels/?(\{name\})?$"), ("*", r"/delivery/channels")]

SAFE = {"GET", "HEAD", "OPTIONS"}


def admin_only(method: str, template: str) -> bool:
    return _matches(ADMIN_ONLY, method, template)


def _matches(rules: list[tuple[str, str]], method: str, template: str) -> bool:
    for how, pattern in rules:
        applies = how in ("*", method) or (how == "UNSAFE" and method not in SAFE)
        if applies and re.match(pattern, template):
            return True
    return False


def expand(template: str) -> str:
    """A harmless concrete path: every parameter is 1."""
    return re.sub(r"\{[^}]+\}", "1", template)


def every_route(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path template) of every route the app answers."""
    found = set()
    for ctx in iter_route_contexts(app.routes):
        for method in ctx.methods or ():
            if method != "HEAD" and ctx.path:
                found.add((method, ctx.path))
    return sorted(found, key=lambda mp: (mp[1], mp[0]))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'"X-CSRF-Token": "([^"]+)"', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: httpx.Client, ws: Workspace, role: Role) -> None:
    """A session for a fresh user of ``role``; its CSRF token sent with every request."""
    name = f"{role.value}_walker"
    accounts.create_user(ws.db, name, PASSWORD, role)
    token = csrf_of(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"username": name, "password": PASSWORD, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    client.headers["X-CSRF-Token"] = csrf_of(client.get("/").text)


@pytest.fixture(scope="module")
def clients(
    tmp_path_factory: pytest.TempPathFactory, migrated_home: Path
) -> Iterator[dict[str | None, TestClient]]:
    """One client signed out (None) and one signed in per role, on one app (made once: the
    walks only read, or are refused, or send empty bodies that fail validation)."""
    from rapport.web.app import create_app

    settings = copy_home(
        migrated_home,
        tmp_path_factory.mktemp("walk"),
        loader_in_process=False,
        dispatcher_in_process=False,
    )
    ws = Workspace(settings)
    app = create_app(workspace=ws)
    with TestClient(app) as anonymous:
        walkers: dict[str | None, TestClient] = {None: anonymous}
        for role in ROLES:
            walkers[role.value] = TestClient(app)
            sign_in(walkers[role.value], ws, role)
        yield walkers
    ws.close()


def call(client: TestClient, method: str, template: str) -> httpx.Response:
    return client.request(method, expand(template), follow_redirects=False)


def test_the_walk_sees_every_kind_of_route(clients):
    routes = every_route(clients[None].app)
    assert len(routes) > 200
    paths = {path for _, path in routes}
    for expected in ("/api/users", "/persons/{person_id}", "/v1/track", "/openapi.json", "/docs"):
        assert expected in paths
    stale = PUBLIC - set(routes)
    assert not stale, f"PUBLIC names routes that no longer exist: {sorted(stale)}"


def test_signed_out_every_route_but_the_public_ones_is_refused(clients):
    anonymous = clients[None]
    unguarded = []
    for method, template in every_route(anonymous.app):
        answer = call(anonymous, method, template)
        assert answer.status_code < 500, (method, template, answer.status_code, answer.text)
        if (method, template) in PUBLIC:
            continue
        to_login = answer.status_code == 303 and answer.headers["location"].startswith("/login")
        api = template.startswith("/api/") or template == "/openapi.json"
        if not (answer.status_code == 401 or (to_login and not api)):
            unguarded.append(f"{method} {template} -> {answer.status_code}")
    assert not unguarded, (
        "routes answer without a sign-in (guard them with require()/page(), or add them to "
        "PUBLIC on purpose):\n" + "\n".join(unguarded)
    )


def test_a_viewer_may_not_change_anything(clients):
    viewer = clients[Role.viewer.value]
    allowed = []
    for method, template in every_route(viewer.app):
        if method in SAFE or (method, template) in PUBLIC or template in READ_ONLY_POSTS:
            continue
        answer = call(viewer, method, template)
        if answer.status_code != 403:
            allowed.append(f"{method} {template} -> {answer.status_code}: {answer.text[:120]}")
    assert not allowed, "a viewer got past these unsafe routes:\n" + "\n".join(allowed)


@pytest.mark.parametrize("role", [Role.marketer, Role.sales, Role.viewer])
def test_admin_only_routes_deny_every_other_role(clients, role):
    client = clients[role.value]
    routes = [r for r in every_route(client.app) if admin_only(*r)]
    assert len(routes) > 40  # the matrix still matches the app
    let_in = []
    for method, template in routes:
        answer = call(client, method, template)
        if answer.status_code != 403:
            let_in.append(f"{method} {template} -> {answer.status_code}")
    assert not let_in, f"{role.value} got into admin-only routes:\n" + "\n".join(let_in)


@pytest.mark.parametrize("role", [Role.sales, Role.viewer])
def test_channels_with_their_secrets_are_for_marketers_and_admins(clients, role):
    client = clients[role.value]
    routes = [r for r in every_route(client.app) if _matches(CHANNEL_CONFIG, *r)]
    assert len(routes) >= 7
    for method, template in routes:
        assert call(client, method, template).status_code == 403, (method, template)


@pytest.mark.parametrize(
    "role",
    [
        None,
        "admin",  # past every guard: each handler runs
        "viewer",  # the masked branches
        pytest.param("marketer", marks=pytest.mark.long),
        pytest.param("sales", marks=pytest.mark.long),
    ],
)
def test_no_route_answers_5xx_whoever_asks(clients, role):
    client = clients[role]
    broken = []
    for method, template in every_route(client.app):
        if template in ("/logout", "/login"):
            continue  # the walk keeps its session
        answer = call(client, method, template)
        if answer.status_code >= 500:
            broken.append(f"{method} {template} -> {answer.status_code}: {answer.text[:200]}")
    assert not broken, f"5xx as {role or 'nobody'}:\n" + "\n".join(broken)


def test_api_docs_need_a_sign_in(clients):
    anonymous, viewer = clients[None], clients[Role.viewer.value]
    assert anonymous.get("/openapi.json").status_code == 401
    docs = anonymous.get("/docs", follow_redirects=False)
    assert docs.status_code == 303 and docs.headers["location"] == "/login?next=/docs"
    assert "/api/plan" in viewer.get("/openapi.json").json()["paths"]
    assert "swagger-ui" in viewer.get("/docs").text
