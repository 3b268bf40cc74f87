"""Security headers on every answer, HSTS and secure cookies only over https, and the
collector's per-write-key rate limit (429 + Retry-After; nothing of a refused request kept)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import copy_home
from rapport import accounts
from rapport.ingest.sources import create_source
from rapport.web.ratelimit import TokenBuckets
from rapport.web.security import CSP
from rapport.workspace import Workspace


def app_client(tmp_path: Path, migrated_home: Path, **settings: object) -> Iterator[TestClient]:
    from rapport.web.app import create_app

    ws = Workspace(copy_home(migrated_home, tmp_path, loader_in_process=False, **settings))
    with TestClient(create_app(workspace=ws)) as client:
        client.ws = ws  # type: ignore[attr-defined]
        yield client
    ws.close()


@pytest.fixture
def plain(tmp_path: Path, migrated_home: Path) -> Iterator[TestClient]:
    yield from app_client(tmp_path, migrated_home, collector_rate_limit=10, collector_rate_burst=5)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def batch(n: int) -> dict[str, object]:
    return {"batch": [{"type": "track", "event": "e", "userId": f"u{i}"} for i in range(n)]}


def test_every_kind_of_answer_carries_the_headers(plain):
    key = create_source(plain.ws.db, "web")["write_key"]
    answers = [
        plain.get("/login"),  # console page
        plain.get("/healthz"),
        plain.get("/api/plan"),  # 401
        plain.get("/static/console.css"),
        plain.post("/v1/track", json={"event": "e", "userId": "u1"}, headers=basic(key)),
    ]
    for answer in answers:
        h = answer.headers
        assert h["x-content-type-options"] == "nosniff", answer.url
        assert h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "same-origin"
        assert "camera=()" in h["permissions-policy"]
        csp = h["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "form-action 'self'" in csp and "object-src 'none'" in csp
        assert "strict-transport-security" not in h  # plain http: never pin https


def test_hsts_behind_an_https_proxy(plain):
    answer = plain.get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert answer.headers["strict-transport-security"].startswith("max-age=31536000")


def test_https_public_url_pins_https_and_secures_the_session_cookie(tmp_path, migrated_home):
    for client in app_client(tmp_path, migrated_home, public_url="https://crm.example.com"):
        accounts.create_user(client.ws.db, "ana", "correct horse battery", "viewer")
        login = client.get("/login")
        assert "max-age" in login.headers["strict-transport-security"]
        cookie = login.headers["set-cookie"]
        assert "rapport_session=" in cookie and "secure" in cookie.lower()
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()


def test_collector_over_the_rate_is_told_to_retry_and_nothing_is_kept(plain):
    key = create_source(plain.ws.db, "web")["write_key"]
    other = create_source(plain.ws.db, "app")["write_key"]
    assert plain.post("/v1/batch", json=batch(4), headers=basic(key)).status_code == 200
    refused = plain.post("/v1/batch", json=batch(4), headers=basic(key))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    body = refused.json()
    assert body["success"] is False and body["code"] == "rate_limited"
    assert "'web'" in body["message"] and "10 events/s" in body["message"]
    assert plain.ws.log.count() == 4  # the refused batch was not stored: the client resends it
    # another write key has its own bucket
    assert plain.post("/v1/batch", json=batch(4), headers=basic(other)).status_code == 200


def test_token_bucket_refills_at_the_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=100, burst=50, clock=lambda: now[0])
    assert buckets.take("k", 50) == 0.0
    assert buckets.take("k", 10) == pytest.approx(0.1)  # 10 tokens at 100/s
    now[0] = 0.1
    assert buckets.take("k", 10) == 0.0
    assert buckets.take("k", 500) == pytest.approx(0.5)  # a huge batch waits for a full bucket
    now[0] = 0.6
    assert buckets.take("k", 500) == 0.0
    assert TokenBuckets.retry_after(0.01) == "1" and TokenBuckets.retry_after(2.2) == "3"
    off = TokenBuckets(rate=0, burst=0)
    assert all(off.take("k", 10_000) == 0.0 for _ in range(3))


def test_default_limit_is_generous(tmp_path, migrated_home):
    for client in app_client(tmp_path, migrated_home):
        key = create_source(client.ws.db, "web")["write_key"]
        for _ in range(3):  # 1,500 events at once: under the default burst
            answer = client.post("/v1/batch", json=batch(500), headers=basic(key))
            assert answer.status_code == 200, answer.text


def test_docs_csp_allows_the_swagger_cdn_only_there(plain):
    token = accounts.create_token(plain.ws.db, "viewer", "docs")
    docs = plain.get("/docs", headers={"Authorization": f"Bearer {token}"})
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    assert "cdn.jsdelivr.net" not in plain.get("/login").headers["content-security-policy"]


def directives(csp: str) -> dict[str, list[str]]:
    parts = (d.split() for d in csp.split(";") if d.strip())
    return {p[0]: p[1:] for p in parts}


def test_console_csp_forbids_inline_script_and_eval(plain):
    for answer in (plain.get("/login"), plain.get("/static/console.js")):
        script = directives(answer.headers["content-security-policy"])["script-src"]
        assert script == ["'self'"], answer.url
    assert directives(CSP)["style-src"] == ["'self'", "'unsafe-inline'"]


TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "rapport" / "web" / "templates"
STATIC = TEMPLATES.parent / "static"
#: what the console's CSP (or HTMX with allowEval off) would refuse to run
FORBIDDEN_IN_TEMPLATES = {
    "inline event handler": re.compile(r"<[^>]*\son[a-z]+\s*=", re.I),
    "hx-on attribute": re.compile(r"\bhx-on", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
    "js: value (HTMX eval)": re.compile(r"hx-(?:vals|headers)\s*=\s*[\"']\s*js:", re.I),
    "hx-vars (HTMX eval)": re.compile(r"\bhx-vars\b", re.I),
    "hx-trigger filter (HTMX eval)": re.compile(r"hx-trigger\s*=\s*[\"'][^\"']*\[", re.I),
    "inline executable <script>": re.compile(
        r"<script(?![^>]*\bsrc=)(?![^>]*type=[\"']application/json[\"'])[^>]*>", re.I
    ),
    # deferred scripts run in document order once the page is parsed: HTMX, then console.js,
    # then the page's own; a script without defer would run before HTMX, or mid-page
    "<script src> without defer": re.compile(
        r"<script(?=[^>]*\bsrc=)(?![^>]*\bdefer\b)[^>]*>", re.I
    ),
}


def test_no_template_carries_inline_script_or_eval():
    found = []
    for path in sorted(TEMPLATES.rglob("*.html")):
        text = path.read_text()
        for what, pattern in FORBIDDEN_IN_TEMPLATES.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(TEMPLATES)}:{line}: {what}: {m.group(0)[:80]}")
    assert not found, "\n".join(found)
    # the checks do catch what they are for
    for sample in (
        '<tr class="x" onclick="go()">',
        '<button hx-on::click="x">',
        "<script>alert(1)</script>",
        '<td hx-vals="js:{a: b()}">',
        '<script src="/static/a.js"></script>',
    ):
        assert any(p.search(sample) for p in FORBIDDEN_IN_TEMPLATES.values()), sample
    assert not any(
        p.search('<script type="application/json" id="d">{}</script><script src="/a.js" defer>')
        for p in FORBIDDEN_IN_TEMPLATES.values()
    )
    base = (TEMPLATES / "base.html").read_text()
    assert """<meta name="htmx-config" content='{"allowEval": false""" in base


def test_console_scripts_do_not_eval():
    pattern = re.compile(r"\beval\s*\(|new\s+Function\b|set(?:Timeout|Interval)\s*\(\s*[\"'`]")
    found = [
        f"{path.name}: {m.group(0)}"
        for path in sorted(STATIC.glob("*.js"))
        for m in pattern.finditer(path.read_text())
    ]
    assert not found, found
