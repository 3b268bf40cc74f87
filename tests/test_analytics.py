"""Analytics on hand-built events with known answers: funnel order, window and breakdown,
the retention triangle, trends with a breakdown and ``(other)``, lifecycle flows,
distributions, CSV = JSON, and the API's errors and auth."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest

from conftest import copy_home
from rapport import accounts
from rapport.analytics import AnalyticsError, run, to_csv
from rapport.catalog import (
    DataType,
    EventTypeBody,
    PropertyBody,
    add_user_property,
    create_event_type,
)
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


def at(d: int, hour: int = 10, month: int = 6) -> datetime:
    return datetime(2024, month, d, hour, tzinfo=UTC)


IOS, ANDROID = {"platform": "ios"}, {"platform": "android"}
#: (person, event, ts, properties, source)
EVENTS: list[tuple[int, str, datetime, dict[str, Any], str]] = [
    # funnel view -> cart -> pay, 7 days
    (1, "view", at(1), IOS, "app"),
    (1, "cart", at(2), {}, "app"),
    (1, "pay", at(3), {"amount": 50}, "app"),  # converts fully
    (2, "view", at(1), ANDROID, "app"),
    (2, "view", at(1, 11), {}, "app"),  # a second view, no platform: not the entering one
    (2, "cart", at(2), {}, "app"),
    (2, "pay", at(10), {"amount": 500}, "app"),  # 9 days after entering: outside
    (3, "cart", at(1), {}, "app"),  # cart before view: does not count
    (3, "view", at(2), ANDROID, "app"),
    (3, "pay", at(3), {"amount": 80}, "app"),
    (4, "view", at(5), IOS, "app"),
    (4, "view", at(6), IOS, "app"),
    (4, "cart", at(13), {}, "app"),  # 8 days after the first view (7 after the second)
    (5, "view", at(3), {}, "app"),
    (6, "view", at(1), IOS, "app"),
    (6, "cart", at(8), {}, "app"),  # exactly 7 days: inside
    (6, "pay", at(8, 11), {"amount": 900}, "app"),  # 7 days and 1 hour: outside
    # retention: register -> login
    (11, "register", at(1), {}, "app"),
    (11, "login", at(2), {}, "app"),
    (11, "login", at(3), {}, "app"),
    (12, "register", at(1, 9), {}, "app"),
    (12, "login", at(1, 20), {}, "app"),  # same day: period 0, not shown
    (12, "login", at(4), {}, "app"),
    (13, "register", at(2), {}, "app"),
    (13, "login", at(3), {}, "app"),
    (14, "register", at(20, month=5), {}, "app"),  # first registered before the range
    (14, "register", at(2), {}, "app"),
    (14, "login", at(3), {}, "app"),
    # lifecycle transitions, as the lifecycle logs them
    (1, "lifecycle_changed", at(2), {"from": "retained", "to": "silent"}, "rapport"),
    (2, "lifecycle_changed", at(3), {"from": "retained", "to": "silent"}, "rapport"),
    (1, "lifecycle_changed", at(4), {"from": "silent", "to": "retained"}, "rapport"),
]
PROFILES = {1: ("m", 25), 2: ("f", 35), 3: ("m", 45), 4: ("f", 17), 5: ("", 30), 6: ("f", 60)}
TAGS = [(1, "vip", "gold"), (2, "vip", "silver"), (6, "vip", "gold")]


def _typed(table: pa.Table, schema: Any) -> ibis.Table:
    t = ibis.memtable(table)
    return t.select(**{name: t[name].cast(dtype) for name, dtype in schema.items()})


def write_world(ws: Workspace) -> None:
    prop = PropertyBody
    for name, props in {
        "view": [prop(name="platform", type=DataType.string)],
        "cart": [],
        "pay": [prop(name="amount", type=DataType.number)],
        "register": [],
        "login": [],
    }.items():
        create_event_type(ws.db, EventTypeBody(name=name, properties=props))
    add_user_property(ws.db, PropertyBody(name="age", type=DataType.integer))
    add_user_property(ws.db, PropertyBody(name="gender", type=DataType.string))
    n = len(EVENTS)
    ts = pa.array([e[2] for e in EVENTS], pa.timestamp("us", "UTC"))
    events = pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": [e[4] for e in EVENTS],
            "type": ["track"] * n,
            "event": [e[1] for e in EVENTS],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": ts,
            "day": pa.array([e[2].date() for e in EVENTS], pa.date32()),
            "received_at": ts,
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([e[0] for e in EVENTS], pa.int64()),
            "properties": [json.dumps(e[3]) for e in EVENTS],
            "context": ["{}"] * n,
        }
    )
    profiles = pa.table(
        {
            "person_key": pa.array(list(PROFILES), pa.int64()),
            "gender": [g for g, _ in PROFILES.values()],
            "age": [str(a) for _, a in PROFILES.values()],
        }
    )
    tags = pa.table(
        {
            "person_key": pa.array([p for p, _, _ in TAGS], pa.int64()),
            "tag": [t for _, t, _ in TAGS],
            "value": [v for *_, v in TAGS],
            "run_id": pa.array([1] * len(TAGS), pa.int64()),
        }
    )
    with ws.warehouse.connect() as con:
        con.insert("events", _typed(events, layout.EVENTS))
        # as the loader does: a typed column a running follower already added holds its
        # property for these rows too (readers trust the column)
        for name, kind in ws.warehouse.event_prop_types(con).items():
            ws.warehouse.backfill_prop(con, name, kind)
        con.insert("tag_values", _typed(tags, layout.TAG_VALUES))
        con.create_table("profiles", profiles)
    from rapport.db.tables import tags as tag_table

    with ws.db.begin() as conn:
        now = datetime.now(UTC)
        row = {"name": "vip", "kind": "rule", "definition": {}}
        conn.execute(tag_table.insert().values(**row, created_at=now, updated_at=now))


@pytest.fixture
def world(workspace: Workspace) -> Workspace:
    write_world(workspace)
    return workspace


JUNE = {"start": "2024-06-01T00:00:00Z", "end": "2024-06-30T00:00:00Z"}
STEPS = [{"event": "view"}, {"event": "cart"}, {"event": "pay"}]


def persons(steps: list[dict[str, Any]]) -> list[int]:
    return [s["persons"] for s in steps]


# -- funnels ------------------------------------------------------------------------------------
def test_funnel_counts_only_ordered_steps_within_the_window_of_the_first_start(world):
    out = run(world, "funnel", {**JUNE, "steps": STEPS})
    # 1 converts; 2 pays too late; 3 carted before viewing; 4 carts 8 days after its first view
    # (the later view does not restart); 5 only views; 6 carts at exactly 7 days, pays after
    assert persons(out["steps"]) == [6, 3, 1]
    assert [s["conversion_from_previous"] for s in out["steps"]] == [1.0, 0.5, 0.3333]
    assert out["steps"][2]["conversion_from_first"] == round(1 / 6, 4)
    # median from the step before: carts after 1, 1 and 7 days; the one payment after 1 day
    assert [s["median_seconds_from_previous"] for s in out["steps"]] == [None, 86400, 86400]

    shorter = run(world, "funnel", {**JUNE, "steps": STEPS, "window": {"amount": 6}})
    assert persons(shorter["steps"]) == [6, 2, 1]  # 6's cart at 7 days drops out


def test_funnel_step_filters_and_range(world):
    big = [
        STEPS[0],
        STEPS[1],
        {"event": "pay", "where": [{"field": "amount", "op": ">=", "value": 100}]},
    ]
    assert persons(run(world, "funnel", {**JUNE, "steps": big})["steps"]) == [6, 3, 0]
    ios = [{"event": "view", "where": [{"field": "platform", "op": "=", "value": "ios"}]}, STEPS[1]]
    assert persons(run(world, "funnel", {**JUNE, "steps": ios})["steps"]) == [3, 2]
    # entering needs step 1 inside the range; later steps may fall after its end
    late = {"start": "2024-06-05T00:00:00Z", "end": "2024-06-06T00:00:00Z", "steps": STEPS}
    assert persons(run(world, "funnel", late)["steps"]) == [1, 0, 0]


def test_funnel_breakdown_by_entering_property_sums_to_the_total(world):
    spec = {**JUNE, "steps": STEPS, "breakdown": {"kind": "property", "name": "platform"}}
    out = run(world, "funnel", spec)
    by = {b["value"]: persons(b["steps"]) for b in out["breakdown"]}
    # person 2 enters with its android view (the later view without platform is not used)
    assert by == {"ios": [3, 2, 1], "android": [2, 1, 0], "(none)": [1, 0, 0]}
    for k in range(3):
        assert sum(v[k] for v in by.values()) == persons(out["steps"])[k]
    top = run(world, "funnel", {**spec, "top": 1})
    assert {b["value"]: persons(b["steps"]) for b in top["breakdown"]} == {
        "ios": [3, 2, 1],
        "(other)": [3, 1, 0],
    }
    gender = run(world, "funnel", {**spec, "breakdown": {"kind": "attribute", "name": "gender"}})
    assert {b["value"]: persons(b["steps"]) for b in gender["breakdown"]} == {
        "f": [3, 2, 0],
        "m": [2, 1, 1],
        "(none)": [1, 0, 0],
    }


# -- retention, trends, lifecycle, distributions ----------------------------------------------
def test_retention_triangle(world):
    spec = {
        "start": "2024-06-01T00:00:00Z",
        "end": "2024-06-05T00:00:00Z",
        "cohort_event": "register",
        "return_event": "login",
        "periods": 3,
    }
    out = run(world, "retention", spec)
    # 14 first registered in May: no cohort; 12's same-day login is period 0
    assert [(c["cohort"], c["size"], c["returned"]) for c in out["cohorts"]] == [
        ("2024-06-01", 2, [1, 1, 1]),
        ("2024-06-02", 1, [1, 0, None]),  # day 3 = June 5: not begun by the end
    ]
    assert out["cohorts"][0]["rates"] == [0.5, 0.5, 0.5]
    weekly = run(world, "retention", {**spec, "period": "week", "periods": 1})
    assert [(c["cohort"], c["size"], c["returned"]) for c in weekly["cohorts"]] == [
        ("2024-05-27", 3, [0])  # the week's Monday; nobody returned 7-13 days after their day
    ]


def test_trends_with_a_breakdown_and_other(world):
    spec = {
        "start": "2024-06-01T00:00:00Z",
        "end": "2024-06-07T00:00:00Z",
        "events": ["view"],
        "breakdown": "platform",
        "top": 1,
    }
    events = run(world, "trends", spec)
    assert len(events["buckets"]) == 6
    series = {s["value"]: s["data"] for s in events["series"]}
    assert series == {"ios": [2, 0, 0, 0, 1, 1], "(other)": [2, 1, 1, 0, 0, 0]}
    people = run(world, "trends", {**spec, "measure": "persons"})
    # person 2 viewed twice on June 1, with and without platform: one person in (other)
    assert {s["value"]: s["data"] for s in people["series"]}["(other)"] == [1, 1, 1, 0, 0, 0]
    plain = run(world, "trends", {**spec, "breakdown": None, "events": ["view", "cart"]})
    assert {s["name"]: sum(s["data"]) for s in plain["series"]} == {"view": 8, "cart": 3}


def test_lifecycle_flows(world):
    out = run(world, "lifecycle", JUNE)
    assert out["flows"] == [
        {"from": "retained", "to": "silent", "transitions": 2, "persons": 2},
        {"from": "silent", "to": "retained", "transitions": 1, "persons": 1},
    ]


def test_distributions(world):
    tag = run(world, "distribution", {"kind": "tag", "name": "vip"})
    assert tag["values"] == [{"value": "gold", "persons": 2}, {"value": "silver", "persons": 1}]
    assert tag["persons"] == 3
    age = run(world, "distribution", {"kind": "attribute", "name": "age", "bins": 2})
    assert age["histogram"]
    assert [(v["low"], v["high"], v["persons"]) for v in age["values"]] == [
        (17, 38.5, 4),
        (38.5, 60, 2),
    ]
    gender = run(world, "distribution", {"kind": "attribute", "name": "gender", "top": 1})
    assert gender["values"] == [{"value": "f", "persons": 3}, {"value": "(other)", "persons": 2}]


# -- errors, CSV, API ---------------------------------------------------------------------------
def test_unknown_names_are_refused_with_the_field_and_a_suggestion(world):
    with pytest.raises(AnalyticsError) as bad:
        run(world, "funnel", {**JUNE, "steps": [STEPS[0], {"event": "crat"}]})
    assert bad.value.field == "steps[1].event" and "did you mean `cart`" in bad.value.message
    with pytest.raises(AnalyticsError) as prop:
        run(
            world,
            "funnel",
            {**JUNE, "steps": STEPS, "breakdown": {"kind": "property", "name": "platfrom"}},
        )
    assert prop.value.field == "breakdown.name" and "`platform`" in prop.value.message
    with pytest.raises(AnalyticsError) as where:
        steps = [
            {"event": "view", "where": [{"field": "platfrom", "op": "=", "value": "x"}]},
            STEPS[1],
        ]
        run(world, "funnel", {**JUNE, "steps": steps})
    assert where.value.field == "steps[0].where[0].field"
    with pytest.raises(AnalyticsError) as tag:
        run(world, "distribution", {"kind": "tag", "name": "vipp"})
    assert tag.value.field == "name" and "`vip`" in tag.value.message


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_csv_has_the_json_numbers(world):
    spec = {**JUNE, "steps": STEPS, "breakdown": {"kind": "property", "name": "platform"}}
    out = run(world, "funnel", spec)
    rows = _csv(to_csv(out))
    assert rows[0] == out["table"]["columns"]
    assert rows[1][:4] == ["(all)", "1", "view", "6"]
    got = {(r[0], r[1]): int(r[3]) for r in rows[1:]}
    for b in out["breakdown"]:
        for s in b["steps"]:
            assert got[(b["value"], str(s["step"]))] == s["persons"]


def test_api(world, client, admin_headers):
    spec = {**JUNE, "steps": STEPS}
    r = client.post("/api/analytics/funnel", json=spec, headers=admin_headers)
    assert r.status_code == 200 and persons(r.json()["steps"]) == [6, 3, 1]
    c = client.get(
        "/api/analytics/funnel.csv", params={"spec": json.dumps(spec)}, headers=admin_headers
    )
    assert c.headers["content-type"].startswith("text/csv")
    assert [int(row[3]) for row in _csv(c.text)[1:]] == [6, 3, 1]
    assert client.post("/api/analytics/funnel.csv", json=spec, headers=admin_headers).text == c.text

    bad = client.post(
        "/api/analytics/retention",
        json={**JUNE, "cohort_event": "registr", "return_event": "login"},
        headers=admin_headers,
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("cohort_event: unknown event")
    assert "did you mean `register`" in bad.json()["detail"]
    shape = client.post(
        "/api/analytics/funnel", json={**JUNE, "steps": [STEPS[0]]}, headers=admin_headers
    )
    assert shape.status_code == 422 and shape.json()["detail"].startswith("steps:")
    assert client.post("/api/analytics/nope", json={}, headers=admin_headers).status_code == 404

    assert client.post("/api/analytics/funnel", json=spec).status_code == 401
    viewer = accounts.create_token(world.db, accounts.Role.viewer, "v")
    r = client.post(
        "/api/analytics/lifecycle", json=JUNE, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert r.status_code == 200 and len(r.json()["flows"]) == 2


def test_console_pages_draw_the_chart_and_link_the_csv(world, client):
    from test_console import as_role

    as_role(client, world, accounts.Role.viewer)
    assert "Funnel" in client.get("/analytics").text
    form = [("event", "view"), ("event", "cart"), ("where", ""), ("where", "")]
    form += [("start", "2024-06-01"), ("end", "2024-06-30"), ("window", "7")]
    html = client.get("/analytics/funnel", params=form).text
    assert 'id="analysis-chart"' in html and 'id="download-png"' in html
    link = re.search(r'id="download-csv" href="([^"]+)"', html)
    assert link is not None
    rows = _csv(client.get(link.group(1).replace("&amp;", "&")).text)
    assert [int(r[3]) for r in rows[1:]] == [6, 3]
    bad = client.get("/analytics/funnel", params=[("event", "veiw"), ("event", "cart"), *form[4:]])
    assert "did you mean `view`" in bad.text and 'id="analysis-chart"' not in bad.text
    pages = {
        "retention": {"cohort_event": "register", "return_event": "login", **JUNE},
        "trends": {"event": "view", "breakdown": "platform", **JUNE},
        "lifecycle": JUNE,
        "distribution": {"kind": "attribute", "name": "age"},
    }
    for kind, params in pages.items():
        page_html = client.get(f"/analytics/{kind}", params=params).text
        assert 'id="analysis-chart"' in page_html, kind
