"""No secret in any log line or API answer: the admin's password at sign-in, a new API token,
a webhook channel's signing secret, a database password in an import's URL.

Once through a real ``rapport serve`` (its stderr: uvicorn's access log, the app's and the
helpers' logs) and once in process with every logger at DEBUG (caplog).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from rapport import accounts

HOOK_SECRET = "whsec_Hook-Secret-Value-4242"
DB_PASSWORD = "Pg-Pa55word-9z"
DB_URL = f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:5432/rpt_no_such_db"
MAPPING = {"target": "profiles", "key": ["member_id"], "identifiers": {"member_id": "member_id"}}


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found
    return found.group(1)


def exercise(client: httpx.Client, username: str, password: str, token: str) -> list[str]:
    """Sign in, create a webhook with a secret and a SQL import with a password, read them
    back; every answer's text."""
    answers = []
    login = client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": _csrf(client.get("/login").text),
        },
        follow_redirects=False,
    )
    assert login.status_code == 303, login.text
    api = {"Authorization": f"Bearer {token}"}
    hook = client.post(
        "/api/delivery/channels",
        json={
            "name": "crm_hook",
            "kind": "webhook",
            "config": {"url": "http://127.0.0.1:9/hook"},
            "allow_private": True,
            "secret": HOOK_SECRET,
        },
        headers=api,
    )
    assert hook.status_code == 201, hook.text
    imported = client.post(
        "/api/imports",
        json={"source": "crm", "uri": DB_URL, "table": "members", "mapping": MAPPING},
        headers=api,
    )
    assert imported.status_code in (409, 422), imported.text  # the database is not there
    answers += [login.text, hook.text, imported.text]
    for url in (
        "/api/delivery/channels",
        "/api/delivery/channels/crm_hook",
        "/api/imports",
        "/api/imports/runs",
    ):
        answer = client.get(url, headers=api)
        assert answer.status_code == 200, (url, answer.text)
        answers.append(answer.text)
    channel = client.get("/api/delivery/channels/crm_hook", headers=api).json()
    assert channel["secret"] == "••••4242"  # masked, recognisable
    assert "rpt_no_such_db" in client.get("/api/imports", headers=api).text
    return answers


def leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s and s in text]


def test_no_secret_in_a_real_servers_log_or_answers(server):
    token = server.cli_json("token", "create", "--role", "admin")["token"]
    secrets = [server.admin_password, token, HOOK_SECRET, DB_PASSWORD]
    assert server.admin_password
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answers = exercise(client, "admin", server.admin_password, token)
    server.stop()
    logs = "".join(p.read_text(errors="replace") for p in Path(server.home).rglob("*.log"))
    assert "Application startup complete" in logs  # the right file (access log is off)
    assert not leaked(logs, secrets), "a secret is in the server's log"
    for text in answers:
        assert not leaked(text, secrets[2:]), text


def test_no_secret_in_any_log_record_in_process(client, workspace, caplog):
    caplog.set_level(logging.DEBUG)
    password = "Admin-Pa55-in-process"
    accounts.create_user(workspace.db, "root", password, "admin")
    token = accounts.create_token(workspace.db, "admin", "secrets-test")
    answers = exercise(client, "root", password, token)
    secrets = [password, token, HOOK_SECRET, DB_PASSWORD]
    records = [f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    assert records, "nothing was logged: the check would prove nothing"
    for line in records:
        assert not leaked(line, secrets), line
    for text in answers:
        assert not leaked(text, secrets[2:]), text


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path):  # type: ignore[no-untyped-def]
    from conftest import copy_home

    return copy_home(migrated_home, tmp_path, loader_in_process=False)
