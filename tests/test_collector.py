"""The /v1 collector over real HTTP (in-process): auth, limits, dedupe, timestamps, plan checks."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from rapport.catalog import EventTypeBody, PropertyBody, create_event_type
from rapport.db.tables import violations
from rapport.ingest import quarantine
from rapport.ingest.sources import create_source
from rapport.log import FLAG_CLOCK_SKEW, FLAG_REPLAYED


def basic(key: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


@pytest.fixture
def web(workspace):
    return create_source(workspace.db, "web")


def track(event="view_product", **extra):
    return {"type": "track", "event": event, "userId": "u1", **extra}


def payloads(workspace):
    return [json.loads(r.payload) for _, r in workspace.log.tail(100)]


def test_track_with_basic_auth_is_in_the_log_when_acknowledged(client, workspace, web):
    r = client.post(
        "/v1/track", json=track(properties={"price": 10}), headers=basic(web["write_key"])
    )
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert result["status"] == "accepted" and len(result["messageId"]) == 32
    (stored,) = payloads(workspace)
    assert stored["messageId"] == result["messageId"]
    assert stored["properties"] == {"price": 10} and "receivedAt" in stored


def test_write_key_by_header_or_body(client, workspace, web):
    assert (
        client.post(
            "/v1/identify", json={"userId": "u2"}, headers={"X-Write-Key": web["write_key"]}
        ).status_code
        == 200
    )
    body = {"batch": [track()], "writeKey": web["write_key"]}
    assert client.post("/v1/batch", json=body).status_code == 200
    assert client.post("/v1/import", json=body).json()["results"][0]["status"] == "accepted"
    assert workspace.log.count() == 3
    assert all("writeKey" not in p for p in payloads(workspace))


def test_dedupe_by_message_id(client, workspace, web):
    batch = {"batch": [track(messageId="m-1"), track(messageId="m-2"), track(messageId="m-1")]}
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted", "duplicate"]
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    assert {x["status"] for x in r.json()["results"]} == {"duplicate"}
    assert workspace.log.count() == 2


def test_unknown_or_missing_write_key_is_401(client, workspace):
    r = client.post("/v1/track", json=track(), headers=basic("wk_nope"))
    assert r.status_code == 401 and r.json()["code"] == "unknown_write_key"
    r = client.post("/v1/track", json=track())
    assert r.status_code == 401 and "write key" in r.json()["message"]
    assert workspace.log.count() == 0


def test_malformed_json_is_400_with_line_and_column(client, web):
    body = b'{"batch": [\n  {"type": "track", "event": }\n]}'
    r = client.post("/v1/batch", content=body, headers=basic(web["write_key"]))
    assert r.status_code == 400
    error = r.json()
    assert (error["line"], error["column"]) == (2, 30)
    assert error["position"] == body.index(b"}\n]")
    assert "line 2, column 30" in error["message"]
    r = client.post("/v1/batch", json={"batch": {}}, headers=basic(web["write_key"]))
    assert r.status_code == 400 and "$.batch" in r.json()["message"]


def test_size_limits_are_413_or_quarantined(client, workspace, web):
    big = "x" * 40_000
    r = client.post("/v1/track", json=track(properties={"t": big}), headers=basic(web["write_key"]))
    assert r.status_code == 413 and "32768" in r.json()["message"]
    batch = {"batch": [track(properties={"t": "y" * 20_000}) for _ in range(30)]}
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    assert r.status_code == 413 and "512000" in r.json()["message"]
    batch = {"batch": [track(), track(properties={"t": big})]}
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "quarantined"]
    (entry,) = quarantine.list_entries(workspace.db)
    assert entry["reason"] == "event_too_large" and entry["detail"].startswith("$.batch[1]")


def test_gzip_body(client, workspace, web):
    body = gzip.compress(json.dumps({"batch": [track(), track(event="login")]}).encode())
    headers = {**basic(web["write_key"]), "Content-Encoding": "gzip"}
    r = client.post("/v1/batch", content=body, headers=headers)
    assert r.status_code == 200 and workspace.log.count(event="login") == 1
    r = client.post("/v1/batch", content=b"not gzip", headers=headers)
    assert r.status_code == 400 and r.json()["code"] == "invalid_gzip"


def test_invalid_messages_are_quarantined_with_their_path(client, workspace, web):
    batch = {
        "batch": [track(), {"type": "track", "userId": "u"}, {"type": "track", "event": "e"}, 7]
    }
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    assert [x["status"] for x in r.json()["results"]] == ["accepted"] + ["quarantined"] * 3
    details = sorted(e["detail"] for e in quarantine.list_entries(workspace.db))
    assert details[0].startswith("$.batch[1].event:")
    assert details[1].startswith("$.batch[2]: needs a userId or an anonymousId")
    assert details[2].startswith("$.batch[3]: a message must be a JSON object")


def test_timestamps_corrected_by_sent_at_and_skew_flagged(client, workspace, web):
    now = datetime.now(UTC)
    fast_clock = now + timedelta(hours=1)  # the device's clock is an hour ahead
    ts = (fast_clock - timedelta(minutes=5)).isoformat()
    far = (now - timedelta(days=30)).isoformat()
    batch = {
        "batch": [track(timestamp=ts, messageId="a"), track(timestamp=far, messageId="b")],
        "sentAt": fast_clock.isoformat(),
    }
    client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    (_, a), (_, b) = workspace.log.tail(2)
    corrected = datetime.fromisoformat(a.timestamp)
    assert abs(corrected - (now - timedelta(minutes=5))) < timedelta(seconds=5)
    assert json.loads(a.payload)["originalTimestamp"] == ts and a.flags == 0
    assert b.flags & FLAG_CLOCK_SKEW and b.timestamp == b.received_at
    assert json.loads(b.payload)["originalTimestamp"] == far


@pytest.fixture
def plan(workspace):
    body = EventTypeBody(
        name="view_product",
        properties=[PropertyBody(name="price", type="number", required=True)],
    )
    create_event_type(workspace.db, body)
    create_event_type(workspace.db, EventTypeBody(name="payment_failed", kind="system"))


def test_lenient_source_accepts_and_records_violations(client, workspace, web, plan):
    batch = {"batch": [track(properties={"price": "cheap"}, messageId="v1"), track("unknown")]}
    r = client.post("/v1/batch", json=batch, headers=basic(web["write_key"]))
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "accepted"]
    assert results[0]["violations"][0]["path"] == "$.properties.price"
    with workspace.db.connect() as conn:
        rows = conn.execute(select(violations.c.type, violations.c.path)).all()
    assert sorted(rows) == [
        ("datatype_mismatch", "$.properties.price"),
        ("unplanned_event", "$.event"),
    ]
    assert workspace.log.count() == 2


def test_strict_source_quarantines_then_replay_after_plan_fix(client, workspace, plan):
    strict = create_source(workspace.db, "app", validation_mode="strict")
    batch = {"batch": [track(properties={"price": 5999}), track("add_to_cart", properties={})]}
    r = client.post("/v1/batch", json=batch, headers=basic(strict["write_key"]))
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "quarantined"]
    assert r.json()["results"][1]["reason"] == "unplanned_event"
    assert quarantine.counts_by_reason(workspace.db) == {"unplanned_event": 1}
    (entry,) = quarantine.list_entries(workspace.db, source="app")

    summary = quarantine.replay(workspace, [entry["id"]])  # plan not fixed yet
    assert summary["replayed"] == 0 and summary["still_failing"] == 1

    create_event_type(workspace.db, EventTypeBody(name="add_to_cart"))
    summary = quarantine.replay(workspace, [entry["id"]])
    assert summary["replayed"] == 1
    assert quarantine.list_entries(workspace.db) == []
    (_, record) = workspace.log.tail(1)[0]
    assert record.event == "add_to_cart" and record.flags & FLAG_REPLAYED


def test_replay_and_discard_over_the_api(client, workspace, admin_headers, plan):
    strict = create_source(workspace.db, "app", validation_mode="strict")
    batch = {"batch": [track("a1"), track("a2"), track("a3")]}
    client.post("/v1/batch", json=batch, headers=basic(strict["write_key"]))
    listed = client.get("/api/quarantine", headers=admin_headers).json()
    assert listed["counts"] == {"unplanned_event": 3}
    first = listed["entries"][-1]["id"]
    assert client.delete(f"/api/quarantine/{first}", headers=admin_headers).json() == {
        "discarded": 1
    }
    create_event_type(workspace.db, EventTypeBody(name="a2"))
    create_event_type(workspace.db, EventTypeBody(name="a3"))
    r = client.post("/api/quarantine/replay", json={"source": "app"}, headers=admin_headers)
    assert r.json()["replayed"] == 2
    assert workspace.log.count() == 2
    assert client.get("/api/quarantine", headers=admin_headers).json()["entries"] == []


def test_server_source_needs_secret_and_allow_list(client, workspace, plan):
    web = create_source(workspace.db, "web")
    srv = create_source(workspace.db, "payments", kind="server", allowed_events=["payment_failed"])
    forged = {"batch": [track("payment_failed")]}
    r = client.post("/v1/batch", json=forged, headers=basic(web["write_key"]))
    assert r.json()["results"][0]["reason"] == "server_only_event"

    r = client.post("/v1/batch", json=forged, headers=basic(srv["write_key"]))
    assert r.status_code == 401 and r.json()["code"] == "secret_key_required"
    r = client.post("/v1/batch", json=forged, headers=basic(srv["secret_key"]))
    assert r.json()["results"][0]["status"] == "accepted"
    r = client.post("/v1/batch", json=forged, headers=basic(srv["write_key"], srv["secret_key"]))
    assert r.json()["results"][0]["status"] == "accepted"

    r = client.post(
        "/v1/batch",
        json={"batch": [track(properties={"price": 1})]},
        headers=basic(srv["secret_key"]),
    )
    assert r.json()["results"][0]["reason"] == "event_not_allowed"
    assert workspace.log.count(event="payment_failed", source="payments") == 2
    assert workspace.log.count(source="web") == 0


def test_events_tail_api(client, workspace, web, admin_headers):
    client.post(
        "/v1/batch",
        json={"batch": [track(messageId=f"t{i}") for i in range(5)]},
        headers=basic(web["write_key"]),
    )
    r = client.get("/api/events/tail", params={"limit": 3}, headers=admin_headers).json()
    assert [e["messageId"] for e in r["events"]] == ["t2", "t3", "t4"]
    r = client.get("/api/events/tail", params={"after": 4}, headers=admin_headers).json()
    assert [e["offset"] for e in r["events"]] == [5] and r["last_offset"] == 5
    assert client.get("/api/events/tail").status_code == 401
