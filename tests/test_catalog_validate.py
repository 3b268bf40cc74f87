"""The compiled validator: each violation type, identify traits, accessors, cache freshness."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest
from sqlalchemy import insert, update

from rapport import catalog
from rapport.catalog import cache
from rapport.catalog.validate import CompiledPlan
from rapport.db.tables import event_types, properties
from rapport.settings import load_settings
from rapport.workspace import Workspace

PLAN = """
events:
  view_product:
    properties:
      item_id: {type: string, required: true}
      price: {type: number, min: 0, max: 1000000}
      duration_s: {type: integer, min: 0}
      category: {type: string, allowed_values: [fridge, tv]}
      in_stock: boolean
      seen_at: datetime
  payment_failed:
    kind: system
    properties:
      order_id: {type: string, required: true}
common_properties:
  channel: {type: string, allowed_values: [app, web]}
user_properties:
  age: {type: integer, min: 0, max: 120}
  gender: {type: string, allowed_values: [male, female]}
  mobile: {type: string, pii: true}
item_properties:
  product:
    stock: integer
    model: {type: string, pii: false}
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace(load_settings(home=tmp_path_factory.mktemp("catalog") / "home"))
    workspace.init()
    catalog.import_plan(workspace.db, PLAN)
    yield workspace
    workspace.close()


@pytest.fixture(scope="module")
def plan(ws: Workspace) -> CompiledPlan:
    return catalog.current_plan(ws.db)


def track(props: dict | None = None, event: str = "view_product", **extra) -> dict:
    message = {"type": "track", "event": event, "properties": props, **extra}
    if props is None:
        del message["properties"]
    return message


def kinds(violations: list[catalog.Violation]) -> list[tuple[str, str]]:
    return [(v.type, v.path) for v in violations]


def test_a_valid_event_has_no_violations(plan):
    props = {
        "item_id": "p1",
        "price": 6999,  # an int is a valid number
        "duration_s": 75,
        "category": "fridge",
        "in_stock": True,
        "seen_at": "2024-05-01T08:00:00Z",
        "channel": "app",
    }
    assert plan.check(track(props)) == []
    assert plan.check(track({"item_id": "p1", "price": 6999.5, "category": None})) == []


def test_unplanned_event(plan):
    violations = plan.check(track({"anything": 1}, event="teleport"))
    assert kinds(violations) == [("unplanned_event", "$.event")]
    assert "teleport" in violations[0].message
    # common properties are still typed on unplanned events
    assert kinds(plan.check(track({"channel": 3}, event="teleport")))[1:] == [
        ("datatype_mismatch", "$.properties.channel")
    ]


def test_required_missing(plan):
    assert kinds(plan.check(track({"price": 1}))) == [("required_missing", "$.properties.item_id")]
    assert kinds(plan.check(track(None))) == [("required_missing", "$.properties.item_id")]
    assert kinds(plan.check(track({"item_id": None}))) == [
        ("required_missing", "$.properties.item_id")
    ]


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        ("price", "6999"),
        ("price", True),  # booleans are not numbers
        ("duration_s", 1.5),  # integer refuses floats
        ("duration_s", False),
        ("in_stock", "yes"),
        ("in_stock", 1),
        ("item_id", 42),
        ("seen_at", "yesterday"),
        ("seen_at", 1714550400),
        ("category", ["fridge"]),
    ],
)
def test_datatype_mismatch(plan, prop, value):
    violations = plan.check(track({"item_id": "p1", prop: value}))
    assert kinds(violations) == [("datatype_mismatch", f"$.properties.{prop}")]
    assert f"'{prop}' must be" in violations[0].message


def test_allowed_values_and_range_are_other(plan):
    violations = plan.check(
        track({"item_id": "p1", "category": "phone", "price": -1, "duration_s": 10**9})
    )
    assert kinds(violations) == [
        ("other", "$.properties.category"),
        ("other", "$.properties.price"),
    ]
    assert "not one of: 'fridge', 'tv'" in violations[0].message
    assert "below the minimum 0" in violations[1].message
    too_dear = plan.check(track({"item_id": "p1", "price": 2_000_000}))
    assert "above the maximum 1e+06" in too_dear[0].message


def test_additional_properties(plan):
    violations = plan.check(track({"item_id": "p1", "colour": "red", "odd key": 1}))
    assert kinds(violations) == [
        ("additional_properties", "$.properties.colour"),
        ("additional_properties", "$.properties['odd key']"),
    ]


def test_identify_traits_checked_against_user_properties(plan):
    message = {
        "type": "identify",
        "userId": "u1",
        "traits": {"age": "thirty", "gender": "x", "nickname": "extra traits are fine"},
        "context": {"traits": {"age": 200}},
    }
    assert kinds(plan.check(message)) == [
        ("datatype_mismatch", "$.traits.age"),
        ("other", "$.traits.gender"),
        ("other", "$.context.traits.age"),
    ]
    # required user properties are not demanded of a partial identify
    assert plan.check({"type": "identify", "traits": {}}) == []


def test_malformed_shapes_are_other(plan):
    assert kinds(plan.check(track([1, 2]))) == [("other", "$.properties")]
    assert kinds(plan.check({"type": "track"})) == [("other", "$.event")]
    assert kinds(plan.check({"type": "identify", "traits": "x"})) == [("other", "$.traits")]


def test_empty_plan_accepts_everything(tmp_path):
    empty = CompiledPlan(
        catalog.PlanOut(events=[], common_properties=[], user_properties=[], item_properties=[])
    )
    assert empty.check(track({"x": 1}, event="anything")) == []


def test_violations_serialise(plan):
    violation = plan.check(track({}, event="nope"))[0]
    assert msgspec.json.decode(msgspec.json.encode(violation)) == violation.as_dict()


def test_accessors(plan):
    assert plan.event_kind("payment_failed") == "system"
    assert plan.event_kind("view_product") == "user"
    assert plan.event_kind("nope") is None
    assert plan.declared_event_properties() == {
        "item_id": "string",
        "price": "number",
        "duration_s": "integer",
        "category": "string",
        "in_stock": "boolean",
        "seen_at": "datetime",
        "order_id": "string",
        "channel": "string",
    }
    assert plan.user_properties() == {"age": "integer", "gender": "string", "mobile": "string"}
    assert plan.item_properties("product") == {"model": "string", "stock": "integer"}
    assert plan.item_properties("hotel") == {}
    assert plan.pii_fields() == {"mobile"}
    assert plan.event_properties("payment_failed") == {"order_id": "string", "channel": "string"}


def test_writes_through_catalog_invalidate_at_once(ws):
    before = catalog.current_plan(ws.db)
    assert before.event_kind("login") is None
    catalog.create_event_type(ws.db, catalog.EventTypeBody(name="login"))
    assert catalog.current_plan(ws.db).event_kind("login") == "user"
    catalog.delete_event_type(ws.db, "login")
    assert catalog.current_plan(ws.db).event_kind("login") is None


def test_writes_by_other_processes_are_seen_within_a_second(ws, monkeypatch):
    plan = catalog.current_plan(ws.db)
    now = datetime.now(UTC)
    with ws.db.begin() as conn:  # as another process would: straight into the DB
        conn.execute(
            insert(event_types).values(
                name="register", kind="user", description="", created_at=now, updated_at=now
            )
        )
    assert catalog.current_plan(ws.db) is plan  # cached: no query on the hot path
    monkeypatch.setattr(cache, "RECHECK_S", 0.0)
    fresh = catalog.current_plan(ws.db)
    assert fresh.event_kind("register") == "user"
    assert catalog.current_plan(ws.db) is fresh  # same stamp: no recompilation

    with ws.db.begin() as conn:  # an update changes neither count nor ids, only updated_at
        conn.execute(
            update(properties)
            .where(properties.c.name == "age")
            .values(max_value=300, updated_at=datetime.now(UTC))
        )
    assert catalog.current_plan(ws.db).check({"type": "identify", "traits": {"age": 200}}) == []


def test_plan_on_postgresql(tmp_path, pg_url):
    workspace = Workspace(load_settings(home=tmp_path / "home", database_url=pg_url))
    workspace.init()
    try:
        catalog.import_plan(workspace.db, PLAN)
        catalog.add_user_property(
            workspace.db, catalog.PropertyBody(name="city", type=catalog.DataType.string)
        )
        with pytest.raises(catalog.Invalid, match="number on view_product"):
            catalog.add_event_property(
                workspace.db, "payment_failed", catalog.PropertyBody(name="price", type="string")
            )
        plan = catalog.current_plan(workspace.db)
        assert plan.user_properties()["city"] == "string"
        assert kinds(plan.check(track({"price": "x"}))) == [
            ("datatype_mismatch", "$.properties.price"),
            ("required_missing", "$.properties.item_id"),
        ]
        again = catalog.import_plan(workspace.db, catalog.export_plan(workspace.db), replace=True)
        assert again.properties_created == again.properties_updated == 0
        assert again.properties_deleted == again.events_deleted == 0
    finally:
        workspace.close()
