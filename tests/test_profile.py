"""The 360° profile: API, console, lookup, export and erasure over a small hand-built world.

The world is written straight into the warehouse tables (not through the resolver, which the
background loader is switched off for), so these tests pin the profile's contract with
``identity_nodes`` / ``identity_links`` / ``identity_history``. Node ids are dense from 0:

- person LI (0): a CRM row (mobile 0, member id 1), a shop row (email 2) that was person OLD
  (2) until an app event carrying the member id and the email merged it, a device (3), a
  blocked value only its own events carried (6) and a blocked value it shares with person
  WANG (7); 14 events, one of them collected through the event log;
- person WANG (4): a shop row and two events; a match candidate pairs it with LI.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import insert, select

from rapport import accounts
from rapport.accounts import Role
from rapport.db.tables import audit_log, match_candidates
from rapport.identity.keys import Keyer, identity_secret
from rapport.log import LogRecord
from rapport.settings import Settings, load_settings
from rapport.workspace import Workspace

LI, OLD, WANG, BLOCKED, SHARED = 0, 2, 4, 6, 7
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MOBILE = "+8613912345678"
MASKED_MOBILE = "+861****5678"
EMAIL = "li.wei@example.com"
PASSWORD = "correct horse battery"


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


def _insert(con: Any, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        names = ", ".join(f'"{c}"' for c in row)  # quoted: "at" is a keyword
        marks = ", ".join("?" * len(row))
        values = [
            json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v for v in row.values()
        ]
        con.raw_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", parameters=values)


def _event(
    event_id: str, source: str, event: str | None, ts: datetime, person: int, **props: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source": source,
        "type": "track" if event else "identify",
        "event": event,
        "user_id": "M1001" if person == LI else "M2002",
        "anonymous_id": None,
        "ts": ts,
        "day": ts.date(),
        "received_at": ts,
        "person_key": person,
        "properties": props,
        "context": {"ip": "10.0.0.1"},
    }


def build_world(ws: Workspace, *, with_log: bool = True) -> None:
    keyer = Keyer(identity_secret(ws.settings))  # so that lookup finds the values
    nodes = [  # node, type, value, person, first seq, first source, first seen
        (0, "mobile", MOBILE, LI, 1, "crm", hours(0)),
        (1, "member_id", "M1001", LI, 1, "crm", hours(0)),
        (2, "email", EMAIL, LI, 2, "shop", hours(1)),
        (3, "device_id", "dev-aaa", LI, 3, "app", hours(2)),
        (4, "mobile", "+8613700001111", WANG, 4, "shop", hours(3)),
        (5, "email", "wang@example.com", WANG, 4, "shop", hours(3)),
        (6, "mobile", "+8618800000000", None, 5, "app", hours(4)),
        (7, "device_id", "shared-tablet", None, 5, "app", hours(4)),
    ]
    links = [  # seq, source, record, kind, nodes
        (1, "crm", "C1", "slice", (0, 1)),
        (2, "shop", "S1", "slice", (2,)),
        (3, "app", "e-merge", "event", (3, 1, 2)),
        (4, "shop", "S2", "slice", (4, 5)),
        (5, "app", "e-blocked", "event", (3, BLOCKED, SHARED)),
        (6, "shop", "w1", "event", (4, SHARED)),
    ]
    history = [  # action, person, other, node, seq, source, record, reason
        ("merge", LI, OLD, 2, 3, "app", "e-merge", "linked by member_id"),
        ("block", LI, None, BLOCKED, 5, "app", "e-blocked", "blocked: test number"),
        ("reject", WANG, None, SHARED, 6, "shop", "w1", "limit:device_id"),
    ]
    slices = [  # source, record, identifiers, properties, person, updated
        ("crm", "C1", {"mobile": MOBILE, "member_id": "M1001"},
         {"name": "李伟", "city": "上海", "vip": True}, LI, T0 + timedelta(days=1)),
        ("shop", "S1", {"email": EMAIL}, {"city": "北京", "orders": 3}, LI, T0 + timedelta(days=2)),
        ("shop", "S2", {"mobile": "+8613700001111"}, {"name": "王芳"}, WANG,
         T0 + timedelta(days=1)),
    ]  # fmt: skip
    events = [
        _event("e-merge", "app", "view_product", hours(2), LI, sku="A1"),
        _event("e-blocked", "app", "view_product", hours(4), LI, sku="A2"),
        _event("id-1", "crm", None, hours(5), LI, mobile=MOBILE, name="李伟"),
        _event("w1", "shop", "order_paid", hours(8), WANG, amount=99),
        _event("w2", "shop", "view_product", hours(9), WANG),
    ]
    events += [
        _event(f"v{i}", "app", "view_product", T0 + timedelta(days=i, hours=6), LI, sku=f"B{i}")
        for i in range(6)
    ]
    events += [
        _event(f"o{i}", "shop", "order_paid", T0 + timedelta(days=i, hours=7), LI, amount=10 * i)
        for i in range(4)
    ]
    with ws.warehouse.connect() as con:
        _insert(
            con,
            "identity_nodes",
            [
                {"node_id": n, "key": keyer.key(t, v), "id_type": t, "value": v, "person_id": p}
                | {"first_seq": seq, "first_source": src, "first_seen": seen}
                for n, t, v, p, seq, src, seen in nodes
            ],
        )
        _insert(
            con,
            "identity_links",
            [
                {"seq": seq, "source": src, "record_key": key, "kind": kind, "node_id": n}
                | {"ts": hours(seq), "removed": False}
                for seq, src, key, kind, ns in links
                for n in ns
            ],
        )
        _insert(
            con,
            "identity_history",
            [
                {"at": hours(seq), "action": a, "person_id": p, "other_id": o, "node_id": n}
                | {"seq": seq, "source": src, "record_key": key, "reason": why}
                for a, p, o, n, seq, src, key, why in history
            ],
        )
        _insert(
            con,
            "profile_slices",
            [
                {"slice_key": f"{src}:{key}", "source": src, "record_key": key}
                | {"identifiers": ids, "properties": props, "fingerprint": key}
                | {"updated_at": at, "person_key": p}
                for src, key, ids, props, p, at in slices
            ],
        )
        _insert(con, "events", events)
    with ws.db.begin() as conn:
        for a, b in ((LI, WANG), (WANG, 9)):
            conn.execute(
                insert(match_candidates).values(
                    person_a=a,
                    person_b=b,
                    probability=0.7,
                    evidence={"name": "agree"},
                    status="pending",
                    created_at=T0,
                )
            )
    if with_log:
        _log_event(ws)


def _log_event(ws: Workspace) -> None:
    """A real collected event: appended to the log, loaded, then resolved to person LI."""
    at = (T0 + timedelta(days=10)).isoformat()
    message = {"type": "track", "event": "app_open", "userId": "M1001", "messageId": "log-1"}
    record = LogRecord(
        source="app",
        message_id="log-1",
        type="track",
        event="app_open",
        user_id="M1001",
        anonymous_id=None,
        timestamp=at,
        received_at=at,
        payload=orjson.dumps({**message, "properties": {"screen": "home"}}),
    )
    assert ws.log.append_many([record])[0] is not None
    assert ws.warehouse.load_from_log(ws.log) == 1
    with ws.warehouse.connect() as con:
        con.raw_sql("UPDATE events SET person_key = ? WHERE event_id = 'log-1'", parameters=[LI])
        link = {"seq": 7, "source": "app", "record_key": "log-1", "kind": "event", "node_id": 1}
        _insert(con, "identity_links", [link | {"ts": T0, "removed": False}])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """No background loader: nothing but these tests writes the identity tables."""
    return load_settings(home=tmp_path / "home", loader_in_process=False)


@pytest.fixture
def world(workspace: Workspace) -> Workspace:
    build_world(workspace)
    return workspace


@pytest.fixture
def viewer_headers(workspace: Workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {accounts.create_token(workspace.db, Role.viewer, 'v')}"}


def _sql(ws: Workspace, query: str) -> list[dict[str, Any]]:
    with ws.warehouse.connect() as con:
        return con.raw_sql(query).to_arrow_table().to_pylist()  # type: ignore[no-any-return]


# -- API: the view ----------------------------------------------------------------------------
def test_person_view(world, client, admin_headers):
    got = client.get(f"/api/persons/{LI}", headers=admin_headers)
    assert got.status_code == 200, got.text
    view = got.json()
    assert view["person_id"] == LI and view["identity_count"] == 4
    ids = view["identities"]
    assert set(ids) == {"mobile", "member_id", "email", "device_id"}
    assert ids["mobile"][0]["value"] == MOBILE and ids["mobile"][0]["first_source"] == "crm"
    assert ids["member_id"][0]["sources"] == ["app", "crm"]
    assert ids["member_id"][0]["records"] == 3  # C1, e-merge, log-1
    assert [h["action"] for h in view["history"]] == ["block", "merge"]
    merge = view["history"][1]
    assert merge["other_id"] == OLD and merge["id_type"] == "email" and merge["value"] == EMAIL
    edges = {(e["a"], e["b"]): e for e in view["graph"]["edges"]}
    assert set(edges) == {(0, 1), (1, 2), (1, 3), (2, 3)}
    assert edges[(0, 1)]["records"] == 1 and not edges[(0, 1)]["merge"]
    assert edges[(1, 2)]["merge"] and edges[(1, 2)]["sources"] == ["app"]
    assert {s["record_key"] for s in view["slices"]} == {"C1", "S1"}
    assert view["events"]["total"] == 14
    by_event = {e["event"]: e["n"] for e in view["events"]["by_event"]}
    assert by_event == {"view_product": 8, "order_paid": 4, "identify": 1, "app_open": 1}
    by_source = {s["source"]: s["n"] for s in view["events"]["by_source"]}
    assert by_source == {"app": 9, "shop": 4, "crm": 1}
    assert view["first_seen"].startswith("2026-03-01T09:00")
    assert view["last_seen"].startswith("2026-03-11T09:00")
    assert view["tags"] == {} and view["segments"] == {} and view["lifecycle"] is None


def test_merged_attributes_come_from_survivorship(world, client, admin_headers):
    view = client.get(f"/api/persons/{LI}", headers=admin_headers).json()
    attributes = view["attributes"]
    assert attributes["name"]["value"] == "李伟" and attributes["name"]["source"] == "crm"
    assert attributes["orders"]["source"] == "shop"
    assert "city" in view["conflicts"]  # 上海 (crm) against 北京 (shop)


def test_merged_away_id_redirects_to_the_survivor(world, client, admin_headers):
    got = client.get(f"/api/persons/{OLD}", headers=admin_headers, follow_redirects=False)
    assert got.status_code == 308
    assert got.headers["location"] == f"/api/persons/{LI}"
    assert got.json()["merged_into"] == LI
    assert f"person {OLD} was merged into person {LI}" in got.json()["detail"]
    events = client.get(
        f"/api/persons/{OLD}/events?event=order_paid&limit=2",
        headers=admin_headers,
        follow_redirects=False,
    )
    assert events.status_code == 308
    assert events.headers["location"] == f"/api/persons/{LI}/events?event=order_paid&limit=2"
    followed = client.get(f"/api/persons/{OLD}/events?event=order_paid", headers=admin_headers)
    assert followed.status_code == 200 and followed.json()["total"] == 4
    export = client.get(f"/api/persons/{OLD}/export", headers=admin_headers, follow_redirects=False)
    assert export.status_code == 308
    assert export.headers["location"] == f"/api/persons/{LI}/export"
    refused = client.delete(f"/api/persons/{OLD}", headers=admin_headers)
    assert refused.status_code == 409
    assert f"DELETE /api/persons/{LI}" in refused.json()["detail"]


def test_unknown_and_blocked_ids_say_why(world, client, admin_headers):
    unknown = client.get("/api/persons/99", headers=admin_headers)
    assert unknown.status_code == 404 and "no person 99" in unknown.json()["detail"]
    blocked = client.get(f"/api/persons/{BLOCKED}", headers=admin_headers)
    assert blocked.status_code == 404 and "blocked" in blocked.json()["detail"]
    assert client.get("/api/persons/abc", headers=admin_headers).status_code == 422
    assert client.get(f"/api/persons/{LI}").status_code == 401


def test_viewer_sees_identifiers_masked(world, client, viewer_headers):
    view = client.get(f"/api/persons/{LI}", headers=viewer_headers).json()
    text = json.dumps(view, ensure_ascii=False)
    assert MOBILE not in text and EMAIL not in text and "李伟" not in text
    ids = view["identities"]
    assert ids["mobile"][0]["value"] == MASKED_MOBILE
    assert ids["email"][0]["value"] == "l***@example.com"
    assert ids["member_id"][0]["value"] == "M1001"  # not personal: left as it is
    crm = next(s for s in view["slices"] if s["source"] == "crm")
    assert crm["identifiers"] == {"member_id": "M1001", "mobile": MASKED_MOBILE}
    assert crm["properties"]["city"] == "上海" and crm["properties"]["name"] == "***"
    assert MASKED_MOBILE in {n["value"] for n in view["graph"]["nodes"]}
    if "name" in view["attributes"]:
        assert view["attributes"]["name"]["value"] == "***"
    events = client.get(f"/api/persons/{LI}/events?event=identify", headers=viewer_headers)
    assert events.json()["events"][0]["properties"]["mobile"] == MASKED_MOBILE
    assert client.get(f"/api/persons/{LI}/export", headers=viewer_headers).status_code == 403
    refused = client.delete(f"/api/persons/{LI}", headers=viewer_headers)
    assert refused.status_code == 403 and "needs: admin" in refused.json()["detail"]


# -- API: the timeline ------------------------------------------------------------------------
def test_timeline_filters_and_paging(world, client, admin_headers):
    def page(**params: Any) -> dict[str, Any]:
        got = client.get(f"/api/persons/{LI}/events", params=params, headers=admin_headers)
        assert got.status_code == 200, got.text
        return got.json()

    first = page(limit=5)
    assert first["total"] == 14 and len(first["events"]) == 5
    assert first["events"][0]["event_id"] == "log-1"  # newest first
    times = [e["ts"] for e in first["events"]]
    assert times == sorted(times, reverse=True)
    second = page(limit=5, offset=5)
    assert not {e["event_id"] for e in first["events"]} & {e["event_id"] for e in second["events"]}
    assert len(page(limit=5, offset=10)["events"]) == 4
    assert page(event="order_paid")["total"] == 4
    assert page(event="identify")["events"][0]["event_id"] == "id-1"
    assert page(source="app")["total"] == 9
    window = page(start="2026-03-02T00:00:00", end="2026-03-04T00:00:00Z")
    assert {e["event_id"] for e in window["events"]} == {"v1", "v2", "o1", "o2"}
    assert page(event="order_paid", source="app")["total"] == 0
    backwards = client.get(
        f"/api/persons/{LI}/events?start=2026-03-04&end=2026-03-02", headers=admin_headers
    )
    assert backwards.status_code == 422 and "start: must be before end" in backwards.text
    garbage = client.get(f"/api/persons/{LI}/events?start=soon", headers=admin_headers)
    assert garbage.status_code == 422 and "start" in garbage.text
    zero = client.get(f"/api/persons/{LI}/events?limit=0", headers=admin_headers)
    assert zero.status_code == 422


# -- API: lookup ------------------------------------------------------------------------------
def test_lookup_by_identifier(world, client, admin_headers):
    pytest.importorskip("rapport.identity.resolve")

    def lookup(id_type: str, value: str) -> httpx.Response:
        params = {"type": id_type, "value": value}
        return client.get("/api/persons/lookup", params=params, headers=admin_headers)

    got = lookup("mobile", "139 1234 5678")  # normalised to +8613912345678
    assert got.status_code == 200, got.text
    assert got.json() == {"person_id": LI, "url": "/api/persons/0", "console_url": "/persons/0"}
    missing = lookup("mobile", "13911112222")
    assert missing.status_code == 404 and "no person has this mobile" in missing.json()["detail"]
    invalid = lookup("mobile", "12")
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("value:")
    unknown = lookup("shoe_size", "42")
    assert unknown.status_code == 422 and "shoe_size" in unknown.json()["detail"]
    absent = client.get("/api/persons/lookup?type=mobile", headers=admin_headers)
    assert absent.status_code == 422 and "value" in absent.text


# -- API: the rights of the person ------------------------------------------------------------
def test_export_holds_everything_in_clear(world, client, admin_headers):
    got = client.get(f"/api/persons/{LI}/export", headers=admin_headers)
    assert got.status_code == 200, got.text
    assert got.headers["content-disposition"] == 'attachment; filename="person-0.json"'
    data = got.json()
    assert {i["value"] for i in data["identities"]} == {MOBILE, "M1001", EMAIL, "dev-aaa"}
    assert len(data["events"]) == 14
    assert {e["event_id"] for e in data["events"]} >= {"log-1", "id-1", "o3"}
    assert {s["record_key"] for s in data["profile_slices"]} == {"C1", "S1"}
    assert {s["properties"]["city"] for s in data["profile_slices"]} == {"上海", "北京"}
    assert {h["action"] for h in data["identity_history"]} == {"merge", "block"}
    assert len(data["identity_links"]) == 8  # every link of its four nodes
    assert [(c["person_a"], c["person_b"]) for c in data["match_candidates"]] == [(LI, WANG)]
    with world.db.connect() as conn:
        rows = conn.execute(select(audit_log).where(audit_log.c.action == "person.export"))
        assert [r.target for r in rows] == [str(LI)]


def test_erasure_removes_the_person_everywhere(world, client, admin_headers):
    assert [o for o, r in world.log.read(0, 100) if r.message_id == "log-1"]
    with world.warehouse.connect() as con:  # survivorship's table, as build_profiles makes it
        con.raw_sql("CREATE TABLE profiles (person_key BIGINT, name VARCHAR)")
        _insert(con, "profiles", [{"person_key": LI, "name": "李伟"}, {"person_key": WANG}])
    got = client.delete(f"/api/persons/{LI}", headers=admin_headers)
    assert got.status_code == 200, got.text
    deleted = got.json()["deleted"]
    assert deleted["warehouse"]["events"] == 14
    assert deleted["warehouse"]["profile_slices"] == 2
    assert deleted["warehouse"]["profiles"] == 1
    assert deleted["warehouse"]["identity_nodes"] == 5  # its four, and the blocked one only it had
    assert deleted["event_log"] == {"events": 1}
    assert deleted["metadata"] == {"match_candidates": 1}
    assert (
        deleted["warehouse"]["identity_links"] == 10
        and deleted["warehouse"]["identity_history"] == 2
    )

    assert _sql(world, "SELECT count(*) AS n FROM events WHERE person_key = 0")[0]["n"] == 0
    assert not _sql(world, "SELECT * FROM profile_slices WHERE person_key = 0")
    assert _sql(world, "SELECT person_key FROM profiles") == [{"person_key": WANG}]
    nodes = _sql(world, "SELECT * FROM identity_nodes ORDER BY node_id")
    assert [n["node_id"] for n in nodes] == list(range(8))  # ids stay dense for the resolver
    assert {n["node_id"] for n in nodes if n["value"]} == {4, 5, SHARED}
    for n in nodes:
        if n["node_id"] in (0, 1, 2, 3, BLOCKED):  # blanked: nothing left to match or show
            assert n["key"] is None and n["value"] == "" and n["person_id"] is None
            assert n["first_seen"] is None and n["first_source"] is None
    links = _sql(world, "SELECT DISTINCT record_key FROM identity_links ORDER BY 1")
    assert [r["record_key"] for r in links] == ["S2", "w1"]
    history = _sql(world, "SELECT * FROM identity_history ORDER BY action")
    assert [h["action"] for h in history] == ["erase", "reject"]
    erase = history[0]
    assert erase["person_id"] == LI and erase["node_id"] is None and erase["record_key"] is None
    assert not [o for o, r in world.log.read(0, 100) if r.message_id == "log-1"]
    with world.db.connect() as conn:
        pairs = [(r.person_a, r.person_b) for r in conn.execute(select(match_candidates))]
        audits = conn.execute(select(audit_log).where(audit_log.c.action == "person.erase")).all()
    assert pairs == [(WANG, 9)]
    assert len(audits) == 1 and audits[0].target == str(LI) and audits[0].actor == "token:test"
    assert audits[0].detail["deleted"]["warehouse"]["events"] == 14
    assert MOBILE not in json.dumps(audits[0].detail)

    gone = client.get(f"/api/persons/{LI}", headers=admin_headers)
    assert gone.status_code == 410 and f"person {LI} was erased" in gone.json()["detail"]
    assert client.get(f"/api/persons/{OLD}", headers=admin_headers).status_code == 410
    assert client.get(f"/api/persons/{WANG}", headers=admin_headers).json()["identity_count"] == 2
    assert client.delete(f"/api/persons/{LI}", headers=admin_headers).status_code == 410


def test_after_erasure_the_resolver_loads_the_graph_and_starts_afresh(world, client, admin_headers):
    resolve = pytest.importorskip("rapport.identity.resolve")
    with world.warehouse.connect() as con:
        before = world.warehouse.get_state(con, resolve.VERSION_KEY)
    assert client.delete(f"/api/persons/{LI}", headers=admin_headers).status_code == 200
    with world.warehouse.connect() as con:
        assert world.warehouse.get_state(con, resolve.VERSION_KEY) != before
        back = _event("back", "crm", None, T0 + timedelta(days=30), LI, mobile=MOBILE)
        _insert(con, "events", [back | {"person_key": None}])
    resolve.resolve_pending(world)  # ids are still dense: the graph loads
    found = _sql(world, "SELECT person_key FROM events WHERE event_id = 'back'")[0]["person_key"]
    assert found not in (None, LI, -1)  # the same mobile again is a new person
    assert (
        client.get(f"/api/persons/{found}", headers=admin_headers).json()["identities"]["mobile"][
            0
        ]["value"]
        == MOBILE
    )


# -- console ----------------------------------------------------------------------------------
def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(
        r'"X-CSRF-Token": "([^"]+)"', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1)


def _sign_in(client: httpx.Client, ws: Workspace, role: Role) -> str:
    """Sign in as a fresh user of ``role``; the session's CSRF token."""
    name = f"{role.value}_user"
    accounts.create_user(ws.db, name, PASSWORD, role)
    token = _csrf(client.get("/login").text)
    signed = client.post(
        "/login",
        data={"username": name, "password": PASSWORD, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )
    assert signed.status_code == 303
    return _csrf(client.get("/persons").text)


def test_people_page_lists_recent_persons(world, client):
    assert client.get("/persons", follow_redirects=False).status_code == 303
    _sign_in(client, world, Role.viewer)
    page = client.get("/persons")
    assert page.status_code == 200
    assert 'href="/persons"' in page.text and "People" in page.text
    assert MOBILE not in page.text and MASKED_MOBILE in page.text
    assert page.text.index(f"#{LI}<") < page.text.index(f"#{WANG}<")  # LI was active last
    empty = client.get("/persons/lookup?type=mobile&value=")
    assert empty.status_code == 422 and "Give an identifier type and a value" in empty.text


def test_console_lookup_goes_to_the_person(world, client):
    pytest.importorskip("rapport.identity.resolve")
    _sign_in(client, world, Role.admin)
    params = {"type": "email", "value": "Li.Wei@Example.com"}
    found = client.get("/persons/lookup", params=params, follow_redirects=False)
    assert found.status_code == 303 and found.headers["location"] == f"/persons/{LI}"
    missing = client.get("/persons/lookup", params={"type": "email", "value": "x@example.com"})
    assert missing.status_code == 404 and "No person has this email" in missing.text


def test_profile_page_as_admin(world, client):
    _sign_in(client, world, Role.admin)
    page = client.get(f"/persons/{LI}")
    assert page.status_code == 200, page.text
    html = page.text
    for section in ("identities-table", "history-table", "slices-table", "timeline-table"):
        assert f'id="{section}"' in html
    assert MOBILE in html and 'id="identity-graph"' in html and "&#34;graph&#34;" in html
    assert "not computed yet" in html and "in no audience or segmentation" in html
    assert f'href="/api/persons/{LI}/export"' in html and "Erase person" in html
    assert html.count('class="expandable"') == 10  # the first page of the timeline
    moved = client.get(f"/persons/{OLD}?event=order_paid", follow_redirects=False)
    assert moved.status_code == 308
    assert moved.headers["location"] == f"/persons/{LI}?event=order_paid"
    assert f"Person {OLD} was merged into person {LI}." in client.get(f"/persons/{OLD}").text
    missing = client.get("/persons/99")
    assert missing.status_code == 404 and "no person 99" in missing.text


def test_profile_page_as_viewer_is_masked_without_the_rights_actions(world, client):
    _sign_in(client, world, Role.viewer)
    html = client.get(f"/persons/{LI}").text
    assert MOBILE not in html and EMAIL not in html and "李伟" not in html
    assert MASKED_MOBILE in html
    assert "/export" not in html and "Erase person" not in html


def test_timeline_fragment_filters(world, client):
    _sign_in(client, world, Role.viewer)
    headers = {"HX-Request": "true"}
    part = client.get(f"/persons/{LI}/timeline?event=order_paid", headers=headers)
    assert part.status_code == 200
    assert part.text.lstrip().startswith('<div id="timeline">')
    assert part.text.count('class="expandable"') == 4 and "view_product" not in part.text
    window = client.get(
        f"/persons/{LI}/timeline?from=2026-03-02T00:00&to=2026-03-04T00:00&source=shop",
        headers=headers,
    )
    assert window.text.count('class="expandable"') == 2 and "Events 1–2 of 2" in window.text
    assert "hx-get=" not in window.text  # one page: no paging links
    app = client.get(f"/persons/{LI}/timeline?source=app", headers=headers).text
    assert app.count('class="expandable"') == 9
    bad = client.get(f"/persons/{LI}/timeline?from=yesterday", headers=headers)
    assert bad.status_code == 422 and "from" in bad.json()["detail"]


def test_timeline_paging_keeps_the_filters(world, client):
    _sign_in(client, world, Role.admin)
    headers = {"HX-Request": "true"}
    first = client.get(f"/persons/{LI}/timeline?from=2026-03-01T00:00", headers=headers).text
    assert first.count('class="expandable"') == 10 and "Events 1–10 of 14" in first
    assert f'hx-get="/persons/{LI}/timeline?from=2026-03-01T00%3A00&amp;page=2"' in first
    second = client.get(
        f"/persons/{LI}/timeline?from=2026-03-01T00:00&page=2", headers=headers
    ).text
    assert second.count('class="expandable"') == 4 and "Events 11–14 of 14" in second
    assert f'hx-get="/persons/{LI}/timeline?from=2026-03-01T00%3A00&amp;page=1"' in second


def test_console_erasure_needs_the_typed_id(world, client):
    csrf = _sign_in(client, world, Role.admin)
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    wrong = client.post(f"/persons/{LI}/erase", data={"confirm": "5"}, headers=headers)
    assert wrong.status_code == 422 and "type the person id 0" in wrong.json()["detail"]
    no_csrf = client.post(f"/persons/{LI}/erase", data={"confirm": str(LI)})
    assert no_csrf.status_code == 403
    done = client.post(f"/persons/{LI}/erase", data={"confirm": str(LI)}, headers=headers)
    assert done.status_code == 200 and done.headers["hx-redirect"] == "/persons"
    listing = client.get("/persons").text
    assert f"Person {LI} erased: 14 events" in listing and f"#{LI}<" not in listing


def test_console_erasure_is_for_admins(world, client):
    csrf = _sign_in(client, world, Role.marketer)
    headers = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    refused = client.post(f"/persons/{LI}/erase", data={"confirm": str(LI)}, headers=headers)
    assert refused.status_code == 403
    assert _sql(world, "SELECT count(*) AS n FROM events WHERE person_key = 0")[0]["n"] == 14


def test_profile_shows_tags_segments_and_lifecycle(world, client, admin_headers):
    import ibis

    from rapport.identity import profile

    workspace = client.app.state.ws  # type: ignore[attr-defined]
    with workspace.warehouse.connect() as con:
        con.insert(
            "tag_values",
            ibis.memtable(
                {
                    "person_key": [LI, LI, LI],
                    "tag": ["high_net_worth", "prefers_category", "prefers_category"],
                    "value": ["yes", "fridge", "hotel"],
                    "run_id": [1, 2, 2],
                }
            ),
        )
        con.insert(
            "segment_members",
            ibis.memtable(
                {
                    "segment": ["vip", "lifecycle"],
                    "bucket": [None, "retained"],
                    "person_key": [LI, LI],
                },
                schema={"segment": "string", "bucket": "string", "person_key": "int64"},
            ),
        )
    view = profile.person_view(workspace, LI)
    assert view["tags"] == {"high_net_worth": ["yes"], "prefers_category": ["fridge", "hotel"]}
    assert view["segments"] == {"vip": None} and view["lifecycle"] == "retained"
