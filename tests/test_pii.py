"""Personal data is masked for roles that may not see it, in the API and in the console."""

from __future__ import annotations

from rapport import accounts
from rapport.catalog.pii import DEFAULT_PII_FIELDS, mask
from rapport.ingest.sources import create_source


def test_mask_keeps_shape_and_hides_values():
    masked = mask(
        {"traits": {"mobile": "13800138000", "email": "zhang@qq.com", "age": 30}},
        DEFAULT_PII_FIELDS,
    )
    assert masked == {"traits": {"mobile": "138****8000", "email": "z***@qq.com", "age": 30}}


def test_viewer_sees_masked_payloads_admin_sees_them_whole(client, workspace, admin_headers):
    key = create_source(workspace.db, "web")["write_key"]
    sent = client.post(
        "/v1/identify",
        auth=(key, ""),
        json={"userId": "u1", "traits": {"mobile": "13800138000", "email": "li@163.com"}},
    )
    assert sent.status_code == 200, sent.text
    viewer = {"Authorization": "Bearer " + accounts.create_token(workspace.db, "viewer")}

    def traits(headers):
        events = client.get("/api/events/tail", headers=headers).json()["events"]
        return events[-1]["payload"]["traits"]

    assert traits(admin_headers) == {"mobile": "13800138000", "email": "li@163.com"}
    assert traits(viewer) == {"mobile": "138****8000", "email": "l***@163.com"}

    accounts.create_user(workspace.db, "vera", "a-long-password", "viewer")
    login = client.get("/login")
    assert login.status_code == 200
    token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
    client.post(
        "/login", data={"username": "vera", "password": "a-long-password", "csrf_token": token}
    )
    page = client.get("/events")
    assert page.status_code == 200
    assert "13800138000" not in page.text
    assert "138****8000" in page.text
