"""The segments console: the list, a segment's page with its MECE report, the lifecycle page
and the audience builder — rendered for each role (marketers edit, viewers only read) over a
small world written straight into the metadata DB and the warehouse.

``rapport.segments`` does the work (sizes, refreshes, MECE); where a test needs its answers
without depending on its data, it replaces the one function the page calls.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from rapport import catalog
from rapport.accounts import Role
from rapport.catalog import EventTypeBody, PropertyBody
from rapport.db import tables
from rapport.segments import audiences, segmentations
from rapport.segments.refresh import refresh
from rapport.segments.store import get_segment, members
from rapport.web.console import segments as console
from rapport.workspace import Workspace
from test_console import as_role

NOW = datetime.now(UTC).replace(microsecond=0)
HOTEL = {
    "kind": "did",
    "event": "book_hotel",
    "where": [{"field": "price", "op": ">", "value": 2000}],
    "agg": "count",
    "op": ">=",
    "threshold": 1,
    "window": {"last": {"amount": 30, "unit": "days"}},
}
#: person -> (days ago, price) of their hotel bookings; 1 and 4 match HOTEL
BOOKINGS = {1: [(2, 2500)], 2: [(3, 1500)], 3: [(40, 3000)], 4: [(1, 5000), (5, 800)]}
GENDER = {1: "F", 2: "M", 3: "F", 4: "M", 5: "F"}


def _rows(con: Any, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        names = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" * len(row))
        values = [json.dumps(v) if isinstance(v, dict) else v for v in row.values()]
        con.raw_sql(f"INSERT INTO {table} ({names}) VALUES ({marks})", parameters=values)


def build_world(ws: Workspace) -> None:
    """A plan with book_hotel(price), five persons, the audience hotel_fans (persons 1 and 4),
    a MECE gender segmentation, one with a planted overlap, and a tag with a finished run."""
    number, text = catalog.DataType.number, catalog.DataType.string
    catalog.create_event_type(
        ws.db,
        EventTypeBody(
            name="book_hotel",
            description="预订酒店",
            properties=[
                PropertyBody(name="price", type=number),
                PropertyBody(name="hotel", type=text),
            ],
        ),
    )
    catalog.create_event_type(ws.db, EventTypeBody(name="view_product"))
    catalog.add_user_property(ws.db, PropertyBody(name="gender", type=text))
    events = [
        {
            "event_id": f"b{person}-{i}",
            "source": "app",
            "type": "track",
            "event": "book_hotel",
            "user_id": f"M{person}",
            "ts": NOW - timedelta(days=days),
            "day": (NOW - timedelta(days=days)).date(),
            "received_at": NOW,
            "person_key": person,
            "properties": {"price": price, "hotel": "上海外滩"},
            "prop_price": price,
        }
        for person, bookings in BOOKINGS.items()
        for i, (days, price) in enumerate(bookings)
    ]
    with ws.warehouse.connect() as con:
        ws.warehouse.add_prop_columns(con)
        _rows(con, "events", events)
        con.raw_sql(
            "CREATE OR REPLACE TABLE profiles (person_key BIGINT, gender VARCHAR, "
            "updated_at TIMESTAMPTZ)"
        )
        _rows(
            con,
            "profiles",
            [{"person_key": p, "gender": g, "updated_at": NOW} for p, g in GENDER.items()],
        )
    audiences.create_audience(
        ws, "hotel_fans", HOTEL, description="booked an expensive hotel lately"
    )
    refresh(ws, "hotel_fans")
    by_gender = [{"name": g, "condition": _gender(g)} for g in ("F", "M")]
    segmentations.create_segmentation(ws, "gender", {"dimension": "gender", "buckets": by_gender})
    planted = [{"name": "F", "condition": _gender("F")}, {"name": "hotel", "condition": HOTEL}]
    segmentations.create_segmentation(ws, "planted", {"dimension": "mixed", "buckets": planted})
    with ws.db.begin() as conn:
        tag_id = conn.execute(
            insert(tables.tags).values(
                name="value_tier",
                kind="mined",
                definition={"model": "rfm"},
                created_at=NOW,
                updated_at=NOW,
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(tables.tag_runs).values(
                tag_id=tag_id, status="done", started_at=NOW, finished_at=NOW, persons=5,
                distribution={"gold": 2, "silver": 3},
            )
        )  # fmt: skip


def _gender(value: str) -> dict[str, Any]:
    return {"kind": "attr", "field": "gender", "op": "=", "value": value}


@pytest.fixture
def world(workspace: Workspace) -> Workspace:
    build_world(workspace)
    return workspace


# -- the list ----------------------------------------------------------------------------------
def test_segments_list_for_each_role(client: httpx.Client, world: Workspace) -> None:
    as_role(client, world, Role.viewer)
    page = client.get("/segments")
    assert page.status_code == 200
    assert 'href="/segments/hotel_fans"' in page.text and "booked an expensive hotel" in page.text
    assert 'href="/segments/gender"' in page.text and 'href="/lifecycle"' in page.text
    assert "New audience" not in page.text and "/segments/hotel_fans/edit" not in page.text
    assert re.search(r'nav-link active"\s+href="/segments"', page.text)  # the nav entry

    client.cookies.clear()
    as_role(client, world, Role.marketer)
    page = client.get("/segments")
    assert "New audience" in page.text and "/segments/hotel_fans/edit" in page.text


# -- the builder -------------------------------------------------------------------------------
def test_builder_is_for_editors_and_carries_the_pickers(
    client: httpx.Client, world: Workspace
) -> None:
    as_role(client, world, Role.viewer)
    assert client.get("/segments/new").status_code == 403
    assert "cannot open this page" in client.get("/segments/hotel_fans/edit").text

    client.cookies.clear()
    as_role(client, world, Role.marketer)
    page = client.get("/segments/new")
    assert page.status_code == 200 and "/static/builder.js" in page.text
    options = client.get("/segments/builder/options").json()
    hotel = next(e for e in options["events"] if e["name"] == "book_hotel")
    assert {"name": "price", "type": "number"} in hotel["properties"]
    assert {"name": "gender", "type": "string"} in options["attrs"]
    assert {"name": "value_tier", "kind": "mined", "values": ["gold", "silver"]} in options["tags"]
    gender = next(s for s in options["segments"] if s["name"] == "gender")
    assert gender["buckets"] == ["F", "M"]

    edit = client.get("/segments/hotel_fans/edit")
    assert edit.status_code == 200
    assert "book_hotel" in edit.text and 'data-editing="hotel_fans"' in edit.text
    assert client.get("/segments/gender/edit").status_code == 409  # a segmentation: no builder


def test_saving_needs_an_editor_and_a_valid_condition(
    client: httpx.Client, world: Workspace
) -> None:
    body = {"name": "rich_travellers", "mode": "static", "condition": HOTEL}
    token = as_role(client, world, Role.viewer)
    viewer = client.post("/segments/save", json=body, headers={"X-CSRF-Token": token})
    assert viewer.status_code == 403

    client.cookies.clear()
    token = as_role(client, world, Role.marketer)
    headers = {"X-CSRF-Token": token}
    assert client.post("/segments/save", json=body).status_code == 403  # no CSRF token
    bad = client.post(
        "/segments/save", json={**body, "condition": {"kind": "did"}}, headers=headers
    )
    assert bad.status_code == 422 and "condition" in bad.json()["detail"]
    typo = {**HOTEL, "where": [{"field": "prise", "op": ">", "value": 2000}]}
    unknown = client.post("/segments/save", json={**body, "condition": typo}, headers=headers)
    assert unknown.status_code == 422 and "did you mean `price`" in unknown.json()["detail"]
    nameless = client.post("/segments/save", json={**body, "name": " "}, headers=headers)
    assert nameless.status_code == 422 and "name" in nameless.json()["detail"]
    taken = client.post("/segments/save", json={**body, "name": "hotel_fans"}, headers=headers)
    assert taken.status_code == 409

    saved = client.post("/segments/save", json=body, headers=headers)
    assert saved.status_code == 200, saved.text
    assert saved.json() == {"name": "rich_travellers", "url": "/segments/rich_travellers"}
    stored = get_segment(world, "rich_travellers")
    assert (stored["kind"], stored["mode"], stored["size"]) == ("audience", "static", 2)
    assert list(members(world, "rich_travellers")) == [1, 4]
    page = client.get("/segments")
    assert 'href="/segments/rich_travellers"' in page.text


def test_editing_replaces_the_condition_and_keeps_the_name(
    client: httpx.Client, world: Workspace
) -> None:
    token = as_role(client, world, Role.marketer)
    page = client.get("/segments/hotel_fans/edit")
    assert 'data-editing="hotel_fans"' in page.text and "book_hotel" in page.text
    body = {"name": "hotel_fans", "original": "hotel_fans", "condition": _gender("F")}
    saved = client.post("/segments/save", json=body, headers={"X-CSRF-Token": token})
    assert saved.status_code == 200, saved.text
    assert list(members(world, "hotel_fans")) == [1, 3, 5]
    renamed = client.post(
        "/segments/save", json={**body, "name": "other"}, headers={"X-CSRF-Token": token}
    )
    assert renamed.status_code == 422


# -- one segment -------------------------------------------------------------------------------
def test_audience_page_shows_definition_members_and_actions(
    client: httpx.Client, world: Workspace
) -> None:
    as_role(client, world, Role.viewer)
    page = client.get("/segments/hotel_fans")
    assert page.status_code == 200
    assert "did book_hotel where price &gt; 2000" in page.text  # the text form
    assert 'href="/persons/1"' in page.text and 'href="/persons/4"' in page.text
    assert 'href="/persons/2"' not in page.text
    assert 'id="refresh"' not in page.text and "/edit" not in page.text
    assert "export.csv" not in page.text  # exporting personal lists is for marketers

    client.cookies.clear()
    token = as_role(client, world, Role.marketer)
    page = client.get("/segments/hotel_fans")
    assert 'hx-post="/segments/hotel_fans/refresh"' in page.text
    assert 'href="/segments/hotel_fans/edit"' in page.text
    assert "/api/segments/hotel_fans/export.csv" in page.text
    assert client.get("/segments/nobody").status_code == 404
    done = client.post(
        "/segments/hotel_fans/refresh", headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert done.headers["HX-Redirect"] == "/segments/hotel_fans"
    assert "hotel_fans refreshed: 2 persons." in client.get("/segments/hotel_fans").text


def test_mece_report_pass_and_fail(client: httpx.Client, world: Workspace) -> None:
    as_role(client, world, Role.marketer)
    page = client.get("/segments/gender")
    assert 'id="mece-pass"' in page.text and 'id="mece-fail"' not in page.text
    assert "mece-buckets" in page.text  # the bar chart
    assert 'hx-post="/segments/gender/other"' not in page.text

    page = client.get("/segments/planted")
    assert 'id="mece-fail"' in page.text and "1 pair(s) of buckets overlap" in page.text
    assert "1 person(s) are in no bucket" in page.text  # person 2: a man without a booking
    overlaps = page.text.split('id="overlaps-table"')[1].split("</table>")[0]
    assert 'href="/persons/1"' in overlaps  # a woman who booked
    assert 'hx-post="/segments/planted/other"' in page.text


def test_add_other_bucket(client: httpx.Client, world: Workspace) -> None:
    token = as_role(client, world, Role.viewer)
    assert (
        client.post("/segments/planted/other", headers={"X-CSRF-Token": token}).status_code == 403
    )
    client.cookies.clear()
    token = as_role(client, world, Role.marketer)
    done = client.post(
        "/segments/planted/other", headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert done.headers["HX-Redirect"] == "/segments/planted"
    assert get_segment(world, "planted")["definition"]["other"] is True
    assert list(members(world, "planted", "other")) == [2]
    page = client.get("/segments/planted")
    assert "1 pair(s) of buckets overlap" in page.text  # the overlap is still there
    assert "person(s) are in no bucket" not in page.text


def test_mece_view_draws_the_buckets() -> None:
    view = console.mece_view(
        {
            "ok": False,
            "buckets": [{"name": "a", "size": 1}, {"name": "b", "size": 2}],
            "overlaps": [],
            "uncovered": {"count": 3, "sample": [7]},
        }
    )
    assert view["uncovered"] == 3 and view["uncovered_sample"] == [7] and not view["ok"]
    assert view["chart"]["yAxis"]["data"] == ["b", "a"]
    assert view["chart"]["series"][0]["data"] == [2, 1]


# -- lifecycle ---------------------------------------------------------------------------------
def test_lifecycle_page_and_thresholds(client: httpx.Client, world: Workspace) -> None:
    token = as_role(client, world, Role.marketer)
    done = client.post(
        "/segments/lifecycle/refresh", headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert done.headers["HX-Redirect"] == "/lifecycle"
    page = client.get("/lifecycle")
    assert page.status_code == 200 and "lifecycle refreshed: 5 persons." in page.text
    stages = page.text.split('id="stages-table"')[1].split("</table>")[0]
    assert re.search(r"retained</td><td class=\"num\">3<", stages)  # persons 1, 2, 4
    assert re.search(r"silent</td><td class=\"num\">1<", stages)  # person 3: 40 days ago
    assert re.search(r"new_not_activated</td><td class=\"num\">1<", stages)  # person 5
    funnel = page.text.split('id="funnel-table"')[1].split("</table>")[0]
    assert re.search(r"activation</td><td class=\"num\">4<", funnel)
    assert "lifecycle-stages" in page.text and "funnel" in page.text
    assert 'name="retained_days"' not in page.text  # thresholds are for admins
    form = {"retained_days": "20", "csrf_token": token}
    assert client.post("/lifecycle/settings", data=form).status_code == 403

    client.cookies.clear()
    token = as_role(client, world, Role.admin)
    page = client.get("/lifecycle")
    assert 'value="order_paid, book_hotel"' in page.text  # the defaults
    bad = client.post("/lifecycle/settings", data={"retained_days": "soon", "csrf_token": token})
    assert bad.status_code == 422 and "retained_days" in bad.text
    wrong = client.post(
        "/lifecycle/settings", data={"retained_days": "90", "lost_days": "61", "csrf_token": token}
    )
    assert wrong.status_code == 422 and "retained_days < lost_days" in wrong.text
    client.post(
        "/lifecycle/settings",
        data={"retained_days": "20", "activation_events": "book_hotel", "csrf_token": token},
    )
    settings = get_segment(world, "lifecycle")["definition"]
    assert settings["retained_days"] == 20 and settings["activation_events"] == ["book_hotel"]


def test_viewer_reads_the_lifecycle(client: httpx.Client, world: Workspace) -> None:
    as_role(client, world, Role.viewer)
    page = client.get("/lifecycle")
    assert page.status_code == 200
    assert "Only admins change the thresholds." in page.text and 'id="refresh"' not in page.text
    assert client.get("/segments/lifecycle", follow_redirects=False).headers["location"] == (
        "/lifecycle"
    )


def test_lifecycle_charts_follow_the_stages() -> None:
    charts = console.lifecycle_charts(
        {
            "stages": ["new_not_activated", "retained", "silent", "lost"],
            "distribution": {"retained": 2, "lost": 1},
            "transitions": [{"from": "retained", "to": "silent", "count": 5}],
        }
    )
    assert charts["stages"][0] == ("new_not_activated", 0)
    assert charts["heat"]["series"][0]["data"] == [[2, 1, 5]]
