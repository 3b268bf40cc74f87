"""The plan as YAML: round trips, merge vs replace, errors with their YAML path, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rapport import catalog
from rapport.catalog import cache
from rapport.settings import load_settings
from rapport.workspace import Workspace

EXAMPLE = Path(__file__).parents[1] / "examples" / "tracking-plan.yaml"


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One workspace for tests whose imports fail (and so write nothing)."""
    ws = Workspace(load_settings(home=tmp_path_factory.mktemp("yaml") / "home"))
    ws.init()
    yield ws
    ws.close()


def test_example_plan_round_trips(workspace):
    text = EXAMPLE.read_text(encoding="utf-8")
    first = catalog.import_plan(workspace.db, text)
    assert first.events_created == 10 and first.properties_created > 40
    exported = catalog.export_plan(workspace.db)
    assert yaml.safe_load(exported)["events"]["view_product"]["properties"]["price"] == {
        "type": "number",
        "description": "Unit price shown, yuan.",
        "required": True,
        "min": 0,
    }
    ids = {p.name: p.id for p in catalog.get_plan(workspace.db).user_properties}

    again = catalog.import_plan(workspace.db, exported, replace=True)
    assert again.model_dump() == {
        "events_created": 0,
        "events_updated": 0,
        "events_deleted": 0,
        "events_unchanged": 10,
        "properties_created": 0,
        "properties_updated": 0,
        "properties_deleted": 0,
        "properties_unchanged": first.properties_created,
    }
    assert catalog.export_plan(workspace.db) == exported
    assert {p.name: p.id for p in catalog.get_plan(workspace.db).user_properties} == ids

    plan = catalog.current_plan(workspace.db)
    assert plan.event_kind("risk_cancel") == "system"
    assert {"mobile", "email", "id_card"} <= plan.pii_fields()
    assert plan.item_properties("product")["price"] == "number"


def test_unicode_descriptions_survive(workspace):
    catalog.import_plan(workspace.db, "events:\n  view_product:\n    description: 浏览商品详情\n")
    assert "浏览商品详情" in catalog.export_plan(workspace.db)


def test_merge_keeps_and_replace_deletes(workspace):
    catalog.import_plan(
        workspace.db,
        "events:\n  login:\n    properties:\n      method: string\n"
        "user_properties:\n  age: integer\n",
    )
    merged = catalog.import_plan(
        workspace.db,
        "events:\n  login:\n    kind: user\n    description: signed in\n"
        "  search:\n    properties:\n      query: {type: string, required: true}\n",
    )
    assert (merged.events_created, merged.events_updated) == (1, 1)
    plan = catalog.get_plan(workspace.db)
    assert [e.name for e in plan.events] == ["login", "search"]
    assert [p.name for p in plan.user_properties] == ["age"]  # untouched by a merge
    assert [p.name for p in plan.events[0].properties] == ["method"]

    replaced = catalog.import_plan(
        workspace.db, "events:\n  search:\n    properties:\n      query: string\n", replace=True
    )
    assert replaced.events_deleted == 1
    assert replaced.properties_deleted == 2  # login.method and age
    assert replaced.properties_updated == 1  # query is no longer required
    plan = catalog.get_plan(workspace.db)
    assert [e.name for e in plan.events] == ["search"]
    assert plan.user_properties == []
    assert plan.events[0].properties[0].required is False


def test_merge_never_flips_a_system_event_by_omission(workspace):
    catalog.import_plan(workspace.db, "events:\n  payment_failed:\n    kind: system\n")
    catalog.import_plan(
        workspace.db, "events:\n  payment_failed:\n    properties:\n      order_id: string\n"
    )
    assert catalog.current_plan(workspace.db).event_kind("payment_failed") == "system"
    catalog.import_plan(workspace.db, "events:\n  payment_failed: {}\n", replace=True)
    assert catalog.current_plan(workspace.db).event_kind("payment_failed") == "user"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "events:\n  view_product:\n    properties:\n      price:\n        type: money\n",
            "events.view_product.properties.price.type: unknown type 'money' "
            "(one of: string, integer, number, boolean, datetime) (line 5)",
        ),
        (
            "events:\n  view_product:\n    kind: robot\n",
            "events.view_product.kind: unknown kind 'robot' (user or system) (line 3)",
        ),
        (
            "events:\n  ViewProduct: {}\n",
            "events.ViewProduct: event name 'ViewProduct' must be snake_case (line 2)",
        ),
        (
            "user_properties:\n  age: {type: integer, min: 10, max: 1}\n",
            "user_properties.age.max: max (1) is less than min (10) (line 2)",
        ),
        (
            "user_properties:\n  gender: {type: string, allowed_values: [m, 1]}\n",
            "user_properties.gender.allowed_values: value #2 1 is not of type 'string' (line 2)",
        ),
        (
            "user_properties:\n  age: {type: integer, maximum: 3}\n",
            "user_properties.age.maximum: unknown field (allowed: type, description, required, "
            "allowed_values, min, max, pii) (line 2)",
        ),
        (
            "user_properties:\n  age: {required: true}\n",
            "user_properties.age.type: missing (one of: string, integer, number, boolean, "
            "datetime) (line 2)",
        ),
        (
            "people: {}\n",
            "people: unknown section (expected: events, common_properties, "
            "user_properties, item_properties) (line 1)",
        ),
        ("- a\n- b\n", "(document): the plan must be a mapping, got list"),
        (
            "events: [\n",
            "(document): not valid YAML at line 2, column 1: expected the node "
            "content, but found '<stream end>'",
        ),
        (
            "item_properties:\n  product:\n    stock: [integer]\n",
            "item_properties.product.stock: a property is a type name or a mapping with 'type' "
            "(line 3)",
        ),
        (
            "events:\n  a:\n    properties:\n      price: number\n"
            "  b:\n    properties:\n      price: string\n",
            "events.a.properties.price.type: event property 'price' has different types "
            "(number on a; string on b); one name has one type across events because it is "
            "one column of the events table",
        ),
    ],
)
def test_errors_name_the_yaml_path(shared_workspace, text, error):
    with pytest.raises(catalog.PlanImportError) as caught:
        catalog.import_plan(shared_workspace.db, text)
    assert caught.value.errors == [error]


def test_every_error_is_reported_and_nothing_is_written(workspace):
    text = (
        "events:\n  ok_event: {}\n  bad:\n    properties:\n      a: money\n      b: cash\n"
        "user_properties:\n  age: {type: integer, min: x}\n"
    )
    with pytest.raises(catalog.PlanImportError) as caught:
        catalog.import_plan(workspace.db, text)
    assert [e.split(":")[0] for e in caught.value.errors] == [
        "events.bad.properties.a.type",
        "events.bad.properties.b.type",
        "user_properties.age.min",
    ]
    assert catalog.get_plan(workspace.db).events == []


def test_type_clash_with_the_existing_plan_on_merge(workspace):
    catalog.import_plan(workspace.db, "events:\n  a:\n    properties:\n      price: number\n")
    with pytest.raises(catalog.PlanImportError) as caught:
        catalog.import_plan(workspace.db, "events:\n  b:\n    properties:\n      price: integer\n")
    assert caught.value.errors[0].startswith("events.b.properties.price.type: ")
    # with --replace the old definition goes away, so there is no clash
    catalog.import_plan(
        workspace.db, "events:\n  b:\n    properties:\n      price: integer\n", replace=True
    )
    assert catalog.current_plan(workspace.db).declared_event_properties() == {"price": "integer"}


def test_cli_import_in_another_process_reaches_the_cached_plan(workspace, monkeypatch):
    before = catalog.current_plan(workspace.db)
    assert before.event_names() == []
    imported = subprocess.run(
        [sys.executable, "-m", "rapport", "plan", "import", str(EXAMPLE), "--json"],
        env={**os.environ, "RAPPORT_HOME": str(workspace.settings.home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["events_created"] == 10
    monkeypatch.setattr(cache, "RECHECK_S", 0.0)  # instead of waiting for the next second
    assert catalog.current_plan(workspace.db).event_kind("payment_failed") == "system"


@pytest.fixture
def rapport(tmp_path, monkeypatch):
    """Run ``rapport plan ARGS`` in-process (the CLI's start-up is slow to repeat)."""
    from typer.testing import CliRunner

    from rapport.catalog.cli import cli
    from rapport.settings import get_settings

    monkeypatch.setenv("RAPPORT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield lambda *args: CliRunner().invoke(cli, list(args))
    get_settings.cache_clear()


def test_cli_export_show_and_errors(rapport, tmp_path):
    assert rapport("show").stdout.startswith("The tracking plan is empty")
    assert rapport("import", str(EXAMPLE)).stdout.startswith("Event types: 10 created")

    out = tmp_path / "plan.yaml"
    assert rapport("export", str(out)).exit_code == 0
    nights = yaml.safe_load(out.read_text())["events"]["book_hotel"]["properties"]["nights"]
    assert nights["type"] == "integer"
    assert rapport("export").stdout == out.read_text()

    shown = rapport("show").stdout
    assert "view_product" in shown and "id_card" in shown

    bad = tmp_path / "bad.yaml"
    bad.write_text("events:\n  x:\n    properties:\n      p: money\n")
    failed = rapport("import", str(bad))
    assert failed.exit_code == 1
    assert "events.x.properties.p.type: unknown type 'money'" in failed.stderr
