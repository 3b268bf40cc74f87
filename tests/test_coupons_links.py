"""Coupons, trackable links and QR codes on the real stores: codes in the metadata DB, order
events in the warehouse, the public /r and /q routes through the whole app."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest
import sqlalchemy as sa

from conftest import copy_home
from rapport.campaigns import CampaignError, CampaignIn, create_campaign, plan, render_for, send
from rapport.campaigns.content import ContentFunctions
from rapport.campaigns.coupons import CouponError, CouponIn, create_coupon, get_coupon, issue
from rapport.campaigns.coupons import redeem as redeem_orders
from rapport.campaigns.store import set_state
from rapport.db.tables import coupon_codes, link_clicks, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace

SHOP = "https://shop.example.com/spring?utm=sms"


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path, public_url="https://crm.example.com/")


@pytest.fixture
def client(workspace: Workspace) -> Iterator[Any]:
    """Over https, as ``public_url`` says: the session cookie is ``Secure`` then."""
    from fastapi.testclient import TestClient

    from rapport.web.app import create_app

    with TestClient(create_app(workspace=workspace), base_url="https://testserver") as c:
        yield c


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    spec = {"name": "sms", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/"}}
    create_channel(workspace.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    return workspace


def campaign(ws: Workspace, text: str, persons: list[int], name: str = "spring") -> int:
    body = {
        "name": name,
        "person_keys": persons,
        "channel": "sms",
        "content": {"text": text},
        "holdout_share": 0,
    }
    return int(create_campaign(ws, CampaignIn.model_validate(body), "alice")["id"])


def coupon(ws: Workspace, name: str = "spring10", **fields: Any) -> dict[str, Any]:
    return create_coupon(ws, CouponIn.model_validate({"name": name, "kind": "pool", **fields}))


def sent_texts(ws: Workspace) -> dict[int, str]:
    with ws.db.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.person_key, outbox.c.payload)).all()
    return {p: (json.loads(m) if isinstance(m, str) else m)["text"] for p, m in rows}


def test_pool_codes_go_once_each_and_an_empty_pool_names_the_coupon(ws):
    coupon(ws, codes=["A1", "A2", "A3"])
    cid = campaign(ws, "{{ coupon('spring10') }}", [1, 2])
    given = {issue(ws, "spring10", cid, p) for p in (1, 2, 3)}
    assert given == {"A1", "A2", "A3"}
    assert issue(ws, "spring10", cid, 2) in given  # the same person: the same code again
    with pytest.raises(CouponError, match="pool of coupon 'spring10' is exhausted"):
        issue(ws, "spring10", cid, 4)
    assert get_coupon(ws, "spring10") | {"issued": 3, "free": 0} == get_coupon(ws, "spring10")


def test_generated_codes_are_unique_and_a_resend_gives_the_same_codes(ws):
    coupon(ws, "welcome", kind="generated", prefix="HELLO-", value="10% off")
    persons = list(range(1, 301))
    cid = campaign(ws, "Your code: {{ coupon('welcome') }}", persons)
    plan(ws, cid, "alice")
    send(ws, cid)
    first = sent_texts(ws)
    codes = {text.removeprefix("Your code: ") for text in first.values()}
    assert len(first) == 300 and len(codes) == 300
    assert all(c.startswith("HELLO-") and len(c) == 14 for c in codes)
    with ws.db.begin() as conn:  # a send that stopped half-way is resumed
        conn.execute(sa.delete(outbox))
        set_state(conn, cid, status="sending")
    send(ws, cid)
    assert sent_texts(ws) == first
    assert get_coupon(ws, "welcome")["issued"] == 300


def test_preview_shows_a_stand_in_and_issues_nothing(ws):
    coupon(ws, codes=["A1"])
    cid = campaign(ws, "{{ coupon('spring10') }} {{ link('" + SHOP + "') }}", [1])
    sample = plan(ws, cid, "alice")["samples"][0]["message"]["text"]
    assert sample.startswith("SPRING10-PREVIEW https://crm.example.com/r/preview?to=https")
    assert get_coupon(ws, "spring10")["issued"] == 0
    bad = campaign(ws, "{{ coupon('nope') }}", [1], name="bad")
    with pytest.raises(CampaignError, match="no coupon 'nope'"):
        plan(ws, bad, "alice")


def test_the_editors_live_preview_knows_the_content_functions(ws, client, admin_headers):
    coupon(ws, codes=["A1"])
    content = {"text": "{{ coupon('spring10') }} {{ qr('" + SHOP + "') }}"}
    got = client.post(
        "/api/campaigns/render", params={"person": 1}, json={"content": content},
        headers=admin_headers,
    )  # fmt: skip
    assert got.status_code == 200, got.text
    assert got.json()["message"]["text"].startswith("SPRING10-PREVIEW https://crm.example.com/")
    assert get_coupon(ws, "spring10")["issued"] == 0


def _orders(ws: Workspace, rows: list[tuple[str, str, datetime]]) -> None:
    t = ibis.memtable(
        pa.table(
            {
                "event_id": [r[0] for r in rows],
                "type": ["track"] * len(rows),
                "event": ["order_paid"] * len(rows),
                "ts": [r[2] for r in rows],
                "properties": [json.dumps({"coupon": r[1], "amount": 30}) for r in rows],
            }
        )
    )
    cols = {c: (t[c] if c in t.columns else ibis.null()).cast(d) for c, d in layout.EVENTS.items()}
    with ws.warehouse.connect() as con:
        con.insert("events", t.select(**cols))


def test_an_order_carrying_an_issued_code_redeems_it(ws):
    coupon(ws, codes=["A1", "A2", "A3"])
    cid = campaign(ws, "x", [1, 2])
    a, b = issue(ws, "spring10", cid, 1), issue(ws, "spring10", cid, 2)
    later = datetime.now(UTC) + timedelta(minutes=1)
    free = ({"A1", "A2", "A3"} - {a, b}).pop()
    _orders(ws, [("o1", a, later), ("o2", a, later + timedelta(hours=1)), ("o3", free, later)])
    assert redeem_orders(ws) == {"open": 2, "redeemed": 1}  # a free code is not redeemed
    with ws.db.connect() as conn:
        rows = conn.execute(sa.select(coupon_codes).where(coupon_codes.c.person_key.is_not(None)))
        by_code = {r.code: r for r in rows}
    assert by_code[a].order_event_id == "o1" and by_code[a].redeemed_at is not None
    assert by_code[b].redeemed_at is None
    assert redeem_orders(ws) == {"open": 1, "redeemed": 0}
    assert get_coupon(ws, "spring10")["redeemed"] == 1


def _sent_link(ws: Workspace, client: Any, text: str, person: int) -> str:
    cid = campaign(ws, text, [person])
    plan(ws, cid, "alice")
    send(ws, cid)
    url = sent_texts(ws)[person]
    assert url.startswith("https://crm.example.com/")
    return url.removeprefix("https://crm.example.com")


def test_a_link_redirects_only_to_its_signed_target_and_records_the_click(ws, client):
    path = _sent_link(ws, client, "{{ link('" + SHOP + "') }}", 7)
    token = path.removeprefix("/r/")
    answer = client.get(path, headers={"User-Agent": "phone"}, follow_redirects=False)
    assert answer.status_code == 302 and answer.headers["location"] == f"{SHOP}&rt={token}"
    assert client.get(path + "?via=qr", follow_redirects=False).status_code == 302
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    forged = client.get(f"/r/{tampered}", follow_redirects=False)
    assert forged.status_code == 404 and "not valid" in forged.text
    assert client.get("/r/aHR0cHM6Ly9ldmlsLmV4YW1wbGU", follow_redirects=False).status_code == 404
    assert client.post("/api/track/register", json={"token": token}).status_code == 204
    assert client.post("/api/track/register", json={"token": token}).status_code == 204
    assert client.post("/api/track/register", json={"token": tampered}).status_code == 404
    with ws.db.connect() as conn:
        clicks = conn.execute(
            sa.select(link_clicks.c.person_key, link_clicks.c.kind, link_clicks.c.user_agent)
        ).all()
    assert sorted(clicks, key=str) == sorted(
        [(7, "click", "phone"), (7, "scan", "testclient"), (7, "register", "testclient")], key=str
    )


def test_a_qr_code_is_a_png_of_the_scan_link(ws, client):
    path = _sent_link(ws, client, "{{ qr('" + SHOP + "') }}", 3)
    assert path.startswith("/q/") and path.endswith(".png")
    image = client.get(path)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    png = image.content
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height and 100 <= width <= 600
    assert client.get("/q/nottoken.png").status_code == 404


def test_the_sandbox_still_refuses_internals_through_the_functions(ws):
    cid = campaign(ws, "x", [1])
    functions = ContentFunctions(ws, cid, issuing=True)
    for source in ("{{ coupon.__globals__ }}", "{{ link.__closure__ }}", "{{ qr.__code__ }}"):
        with pytest.raises(CampaignError, match="SecurityError.*is unsafe"):
            render_for({"text": source}, 1, {}, functions)
    with pytest.raises(CampaignError, match="not an http"):
        render_for({"text": "{{ link('javascript:alert(1)') }}"}, 1, {}, functions)


def test_the_coupons_api(ws, client, admin_headers):
    made = client.post(
        "/api/coupons",
        json={"name": "vip", "kind": "pool", "campaign": None, "codes": ["V1", "V2"]},
        headers=admin_headers,
    )
    assert made.status_code == 201 and made.json()["free"] == 2
    up = client.post("/api/coupons/vip/codes", json={"codes": ["V3", "V1"]}, headers=admin_headers)
    assert up.status_code == 409 and "V1" in up.text
    up = client.post("/api/coupons/vip/codes", json={"codes": ["V3"]}, headers=admin_headers)
    assert up.json()["added"] == 1 and up.json()["free"] == 3
    listed = client.get("/api/coupons", headers=admin_headers).json()
    assert [(c["name"], c["issued"], c["redeemed"]) for c in listed] == [("vip", 0, 0)]
    assert client.post("/api/coupons/redeem", headers=admin_headers).json()["redeemed"] == 0


def test_the_coupons_page_creates_a_pool_and_lists_it(ws, client):
    from rapport.accounts import Role
    from test_console import as_role

    csrf = as_role(client, ws, Role.marketer)
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    form = {"name": "spring10", "kind": "pool", "value": "10% off", "codes": "S1\nS2\n\nS3"}
    made = client.post("/coupons", data=form, headers=headers)
    assert made.status_code == 200 and made.headers["HX-Redirect"] == "/coupons"
    bad = client.post("/coupons", data={**form, "name": "x y"}, headers=headers)
    assert bad.status_code == 422 and "name" in bad.json()["detail"]
    page = client.get("/coupons").text
    assert 'id="coupon-spring10"' in page and "10% off" in page
    assert get_coupon(ws, "spring10")["free"] == 3
    assert "coupon(" in client.get("/campaigns/new").text


def test_a_send_hands_out_a_pool_and_stops_when_it_runs_dry(ws):
    coupon(ws, codes=["A1", "A2", "A3"])
    cid = campaign(ws, "{{ coupon('spring10') }}", [1, 2, 3])
    plan(ws, cid, "alice")
    send(ws, cid)
    assert sorted(sent_texts(ws).values()) == ["A1", "A2", "A3"]
    more = campaign(ws, "{{ coupon('spring10') }}", [4], name="more")
    plan(ws, more, "alice")
    with pytest.raises(CouponError, match="pool of coupon 'spring10' is exhausted"):
        send(ws, more)
