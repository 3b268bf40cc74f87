"""The tracking plan over HTTP: CRUD, field-naming errors, roles, audit, YAML endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from rapport import accounts, catalog
from rapport.db.tables import audit_log

EXAMPLE = Path(__file__).parents[1] / "examples" / "tracking-plan.yaml"

VIEW_PRODUCT = {
    "name": "view_product",
    "kind": "user",
    "description": "Looked at a product",
    "properties": [
        {"name": "item_id", "type": "string", "required": True},
        {"name": "price", "type": "number", "min": 0},
        {"name": "category", "type": "string", "allowed_values": ["fridge", "tv"]},
    ],
}


@pytest.fixture
def viewer_headers(workspace) -> dict[str, str]:
    token = accounts.create_token(workspace.db, accounts.Role.viewer, "viewer")
    return {"Authorization": f"Bearer {token}"}


def test_event_type_crud(client, admin_headers, workspace):
    created = client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "view_product"
    assert {p["name"]: p["type"] for p in body["properties"]} == {
        "category": "string",
        "item_id": "string",
        "price": "number",
    }

    again = client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]

    listed = client.get("/api/plan/events", headers=admin_headers).json()
    assert [e["name"] for e in listed] == ["view_product"]

    patched = client.patch(
        "/api/plan/events/view_product",
        json={"kind": "system", "description": "server says"},
        headers=admin_headers,
    )
    assert patched.status_code == 200
    assert patched.json()["kind"] == "system"
    assert catalog.current_plan(workspace.db).event_kind("view_product") == "system"

    renamed = client.patch(
        "/api/plan/events/view_product", json={"name": "product_viewed"}, headers=admin_headers
    )
    assert renamed.json()["name"] == "product_viewed"
    assert client.get("/api/plan/events/view_product", headers=admin_headers).status_code == 404

    deleted = client.delete("/api/plan/events/product_viewed", headers=admin_headers)
    assert deleted.status_code == 204
    plan = client.get("/api/plan", headers=admin_headers).json()
    assert plan["events"] == []
    # its properties went with it
    assert catalog.current_plan(workspace.db).declared_event_properties() == {}


def test_properties_of_every_scope(client, admin_headers):
    client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    added = client.post(
        "/api/plan/events/view_product/properties",
        json={"name": "duration_s", "type": "integer", "min": 0, "max": 86400},
        headers=admin_headers,
    )
    assert added.status_code == 201, added.text
    assert added.json()["event"] == "view_product"
    common = client.post(
        "/api/plan/common-properties",
        json={"name": "channel", "type": "string", "allowed_values": ["app", "web"]},
        headers=admin_headers,
    )
    assert common.status_code == 201 and common.json()["event"] is None
    user = client.post(
        "/api/plan/user-properties",
        json={"name": "mobile", "type": "string", "pii": True},
        headers=admin_headers,
    )
    assert user.status_code == 201 and user.json()["scope"] == "user"
    item = client.post(
        "/api/plan/item-properties",
        json={"item_type": "product", "name": "stock", "type": "integer", "min": 0},
        headers=admin_headers,
    )
    assert item.status_code == 201 and item.json()["item_type"] == "product"

    dup = client.post(
        "/api/plan/user-properties",
        json={"name": "mobile", "type": "string"},
        headers=admin_headers,
    )
    assert dup.status_code == 409

    prop_id = item.json()["id"]
    changed = client.patch(
        f"/api/plan/properties/{prop_id}",
        json={"max": 10000, "description": "units in stock"},
        headers=admin_headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["max"] == 10000 and changed.json()["min"] == 0

    plan = client.get("/api/plan", headers=admin_headers).json()
    assert [p["name"] for p in plan["common_properties"]] == ["channel"]
    assert [p["name"] for p in plan["user_properties"]] == ["mobile"]
    assert plan["item_properties"][0]["description"] == "units in stock"

    assert (
        client.delete(f"/api/plan/properties/{prop_id}", headers=admin_headers).status_code == 204
    )
    assert client.get(f"/api/plan/properties/{prop_id}", headers=admin_headers).status_code == 404

    not_item = client.patch(
        f"/api/plan/properties/{user.json()['id']}",
        json={"item_type": "hotel"},
        headers=admin_headers,
    )
    assert not_item.status_code == 422
    assert not_item.json()["detail"] == "item_type: only item properties have an item type"
    missing = client.post(
        "/api/plan/events/nope/properties",
        json={"name": "a", "type": "string"},
        headers=admin_headers,
    )
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no event type 'nope' in the tracking plan"


INVALID_BODIES = [
    ({"name": "View Product"}, "name", "pattern"),
    ({"name": "x", "kind": "robot"}, "kind", "user"),
    ({"name": "x", "properties": [{"name": "p", "type": "money"}]}, "type", "string"),
    (
        {"name": "x", "properties": [{"name": "p", "type": "number", "min": 5, "max": 1}]},
        "max",
        "less than min",
    ),
    (
        {
            "name": "x",
            "properties": [{"name": "p", "type": "integer", "allowed_values": [1, "a"]}],
        },
        "allowed_values",
        "not of type 'integer'",
    ),
    (
        {"name": "x", "properties": [{"name": "p", "type": "string", "min": 1}]},
        "min",
        "integer and number",
    ),
    (
        {
            "name": "x",
            "properties": [{"name": "p", "type": "string"}, {"name": "p", "type": "string"}],
        },
        "properties",
        "declared twice",
    ),
]


def test_invalid_bodies_name_the_field(client, admin_headers):
    for body, field, words in INVALID_BODIES:
        response = client.post("/api/plan/events", json=body, headers=admin_headers)
        assert response.status_code == 422, body
        errors = response.json()["detail"]
        assert any(field in [str(x) for x in e["loc"]] and words in e["msg"] for e in errors), (
            errors
        )


def test_patch_is_validated_as_a_whole(client, admin_headers):
    created = client.post(
        "/api/plan/user-properties",
        json={"name": "age", "type": "integer", "min": 0, "max": 120},
        headers=admin_headers,
    ).json()
    bad = client.patch(
        f"/api/plan/properties/{created['id']}", json={"type": "string"}, headers=admin_headers
    )
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("min:")
    good = client.patch(
        f"/api/plan/properties/{created['id']}",
        json={"type": "string", "min": None, "max": None},
        headers=admin_headers,
    )
    assert good.status_code == 200 and good.json()["type"] == "string"


def test_one_type_per_event_property_name(client, admin_headers):
    client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    client.post("/api/plan/events", json={"name": "book_hotel"}, headers=admin_headers)
    clash = client.post(
        "/api/plan/events/book_hotel/properties",
        json={"name": "price", "type": "string"},
        headers=admin_headers,
    )
    assert clash.status_code == 422
    assert "number on view_product" in clash.json()["detail"]
    assert "price" not in {
        p["name"]
        for p in client.get("/api/plan/events/book_hotel", headers=admin_headers).json()[
            "properties"
        ]
    }


def test_viewer_reads_but_cannot_write(client, admin_headers, viewer_headers):
    client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    assert client.get("/api/plan", headers=viewer_headers).status_code == 200
    assert client.get("/api/plan/export", headers=viewer_headers).status_code == 200
    writes = [
        ("post", "/api/plan/events", {"name": "x"}),
        ("patch", "/api/plan/events/view_product", {"kind": "system"}),
        ("delete", "/api/plan/events/view_product", None),
        ("post", "/api/plan/user-properties", {"name": "x", "type": "string"}),
        ("delete", "/api/plan/properties/1", None),
    ]
    for method, url, body in writes:
        response = client.request(method, url, json=body, headers=viewer_headers)
        assert response.status_code == 403, (method, url)
    response = client.post("/api/plan/import", content=b"events: {}", headers=viewer_headers)
    assert response.status_code == 403
    assert client.get("/api/plan").status_code == 401


def test_writes_are_audited(client, admin_headers, workspace):
    client.post("/api/plan/events", json=VIEW_PRODUCT, headers=admin_headers)
    client.delete("/api/plan/events/view_product", headers=admin_headers)
    with workspace.db.connect() as conn:
        rows = conn.execute(select(audit_log.c.actor, audit_log.c.action, audit_log.c.target)).all()
    assert ("token:test", "plan.event.create", "view_product") in rows
    assert ("token:test", "plan.event.delete", "view_product") in rows


def test_yaml_export_and_import_over_http(client, admin_headers):
    text = EXAMPLE.read_text(encoding="utf-8")
    imported = client.post(
        "/api/plan/import",
        content=text.encode(),
        headers={**admin_headers, "Content-Type": "application/yaml"},
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["events_created"] == 10
    exported = client.get("/api/plan/export", headers=admin_headers)
    assert exported.headers["content-type"].startswith("application/yaml")
    assert "view_product:" in exported.text

    bad = client.post(
        "/api/plan/import",
        content=b"events:\n  view_product:\n    properties:\n      price: money\n",
        headers=admin_headers,
    )
    assert bad.status_code == 422
    assert bad.json()["detail"] == [
        "events.view_product.properties.price.type: unknown type 'money' "
        "(one of: string, integer, number, boolean, datetime) (line 4)"
    ]


def test_openapi_lists_plan_endpoints(client, admin_headers):
    paths = client.get("/openapi.json", headers=admin_headers).json()["paths"]
    for path in ("/api/plan", "/api/plan/events/{name}", "/api/plan/import", "/api/plan/export"):
        assert path in paths
