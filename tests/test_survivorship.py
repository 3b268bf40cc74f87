"""Survivorship on hand-made slices and identify events written straight into the warehouse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest

from conftest import copy_home
from rapport.catalog import PropertyBody, add_user_property
from rapport.identity import config as cfg
from rapport.identity.survivorship import (
    build_profiles,
    conflict_report,
    known_properties,
    merged_profile,
    profile_columns,
)
from rapport.ingest import sources
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 5, day, hour, tzinfo=UTC)


def write_slices(ws: Workspace, rows: list[tuple[int, str, str, dict[str, Any], datetime]]) -> None:
    """(person, source, record_key, properties, updated_at) rows into ``profile_slices``."""
    table = pa.table(
        {
            "slice_key": [f"{s}:{k}" for _, s, k, _, _ in rows],
            "source": [s for _, s, _, _, _ in rows],
            "record_key": [k for _, _, k, _, _ in rows],
            "identifiers": ["{}"] * len(rows),
            "properties": [json.dumps(p, ensure_ascii=False) for _, _, _, p, _ in rows],
            "fingerprint": [""] * len(rows),
            "updated_at": pa.array([t for *_, t in rows], pa.timestamp("us", "UTC")),
            "import_run_id": pa.array([None] * len(rows), pa.int64()),
            "person_key": pa.array([p for p, *_ in rows], pa.int64()),
        }
    )
    with ws.warehouse.connect() as con:
        con.insert("profile_slices", _typed(table, layout.PROFILE_SLICES))


def write_identifies(ws: Workspace, rows: list[tuple[int, str, dict[str, Any], datetime]]) -> None:
    """(person, source, traits, ts) identify events into ``events``."""
    n = len(rows)
    table = pa.table(
        {
            "event_id": [f"e{i}-{p}" for i, (p, *_) in enumerate(rows)],
            "source": [s for _, s, _, _ in rows],
            "type": ["identify"] * n,
            "event": pa.array([None] * n, pa.string()),
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array([t for *_, t in rows], pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for *_, t in rows], pa.date32()),
            "received_at": pa.array([t for *_, t in rows], pa.timestamp("us", "UTC")),
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([p for p, *_ in rows], pa.int64()),
            "properties": [json.dumps(t, ensure_ascii=False) for _, _, t, _ in rows],
            "context": ["{}"] * n,
        }
    )
    with ws.warehouse.connect() as con:
        con.insert("events", _typed(table, layout.EVENTS))


def _typed(table: pa.Table, schema: Any) -> ibis.Table:
    t = ibis.memtable(table)
    return t.select(**{name: t[name].cast(dtype) for name, dtype in schema.items()})


def profile(ws: Workspace, person: int) -> dict[str, Any]:
    with ws.warehouse.connect() as con:
        return merged_profile(con, ws.db, person)


def rules(ws: Workspace, *pairs: tuple[str, str] | tuple[str, str, tuple[str, ...]]) -> None:
    cfg.save_survivorship(ws.db, [cfg.SurvivorshipRule(*p) for p in pairs])  # type: ignore[arg-type]


def test_most_recent_is_the_default_and_empty_values_never_win(workspace):
    write_slices(
        workspace,
        [
            (1, "crm", "c1", {"city": "Beijing", "name": "王伟"}, at(1)),
            (1, "shop", "s1", {"city": "Shanghai", "name": ""}, at(3)),
            (1, "members", "m1", {"city": None, "name": "  "}, at(5)),
            (2, "crm", "c2", {"city": "Chengdu"}, at(9)),
        ],
    )
    out = profile(workspace, 1)
    assert out["attributes"]["city"] == {
        "value": "Shanghai",
        "source": "shop",
        "updated_at": at(3).isoformat(),
        "rule": "most_recent",
    }
    assert out["attributes"]["name"]["value"] == "王伟"  # blanks and "" never win
    assert out["conflicts"] == {
        "city": [
            {"source": "shop", "value": "Shanghai", "updated_at": at(3).isoformat()},
            {"source": "crm", "value": "Beijing", "updated_at": at(1).isoformat()},
        ]
    }


def test_identify_traits_take_part_and_identifiers_are_left_out(workspace):
    write_slices(workspace, [(1, "crm", "c1", {"level": "gold"}, at(1))])
    write_identifies(
        workspace,
        [
            (1, "app", {"level": "silver", "mobile": "13912345678", "email": "a@b.cn"}, at(2)),
            (2, "app", {"level": "bronze"}, at(3)),
        ],
    )
    out = profile(workspace, 1)
    assert out["attributes"]["level"]["value"] == "silver"
    assert out["attributes"]["level"]["source"] == "app"
    assert "mobile" not in out["attributes"] and "email" not in out["attributes"]


def test_source_priority_uses_the_rule_order_then_the_sources_priority(workspace):
    db = workspace.db
    for name, priority in (("crm", 50), ("members", 300), ("shop", 200)):
        sources.create_source(db, name, "file")
        sources.update_source(db, name, priority=priority)
    write_slices(
        workspace,
        [
            (1, "shop", "s1", {"name": "Wang Wei", "gender": "male"}, at(9)),
            (1, "crm", "c1", {"name": "王伟", "gender": "M"}, at(1)),
            (1, "members", "m1", {"gender": "m"}, at(2)),
        ],
    )
    rules(
        workspace,
        ("name", "source_priority", ("crm", "shop")),
        ("gender", "source_priority", ("x",)),
    )
    out = profile(workspace, 1)["attributes"]
    assert out["name"]["value"] == "王伟" and out["name"]["source"] == "crm"
    # no listed source has it: the metadata DB's priority decides (members 300 > shop 200)
    assert out["gender"] == {
        "value": "m",
        "source": "members",
        "updated_at": at(2).isoformat(),
        "rule": "source_priority",
    }


def test_most_frequent_compares_normalised_text(workspace):
    write_slices(
        workspace,
        [
            (1, "a", "1", {"city": "Shanghai "}, at(1)),
            (1, "b", "2", {"city": "shanghai"}, at(2)),
            (1, "c", "3", {"city": "Beijing"}, at(5)),
            (1, "a", "4", {"birthday": "1990/1/2"}, at(1)),
            (1, "b", "5", {"birthday": "1990-01-02"}, at(2)),
            (1, "c", "6", {"birthday": "02/01/1990"}, at(3)),
            (1, "d", "7", {"birthday": "1991-01-02"}, at(8)),
        ],
    )
    rules(workspace, ("city", "most_frequent"), ("birthday", "most_frequent"))
    out = profile(workspace, 1)
    assert out["attributes"]["city"]["value"] == "shanghai"  # latest spelling of the winner
    assert out["attributes"]["city"]["source"] == "b"
    assert out["attributes"]["birthday"]["value"] == "02/01/1990"
    # three spellings of one date are one value: the conflict is with source d only
    assert {c["value"] for c in out["conflicts"]["birthday"]} == {
        "1990/1/2",
        "1990-01-02",
        "02/01/1990",
        "1991-01-02",
    }


def test_first_non_empty_takes_the_earliest(workspace):
    write_slices(
        workspace,
        [
            (1, "a", "1", {"registered_at": ""}, at(1)),
            (1, "b", "2", {"registered_at": "2019-03-01"}, at(2)),
            (1, "c", "3", {"registered_at": "2021-07-01"}, at(3)),
        ],
    )
    rules(workspace, ("registered_at", "first_non_empty"))
    got = profile(workspace, 1)["attributes"]["registered_at"]
    assert (got["value"], got["source"], got["rule"]) == ("2019-03-01", "b", "first_non_empty")


def test_sum_adds_each_records_current_number(workspace):
    write_slices(
        workspace,
        [
            (1, "shop", "s1", {"spend": 100}, at(1)),
            (1, "shop", "s2", {"spend": "20.5"}, at(2)),
            (1, "hotel", "h1", {"spend": 50}, at(1)),
            (1, "hotel", "h1b", {"spend": "n/a"}, at(1)),
        ],
    )
    write_identifies(workspace, [(1, "app", {"spend": 7}, at(1)), (1, "app", {"spend": 9}, at(4))])
    rules(workspace, ("spend", "sum"))
    out = profile(workspace, 1)
    got = out["attributes"]["spend"]
    assert got["value"] == 179.5  # 100 + 20.5 + 50 + 9 (the app's latest, not 7 + 9)
    assert got["source"] == "app, hotel, shop" and got["rule"] == "sum"
    assert got["updated_at"] == at(4).isoformat()
    assert "spend" not in out["conflicts"]  # sums are meant to differ per source


def test_union_lists_distinct_values_and_flattens_arrays(workspace):
    write_slices(
        workspace,
        [
            (1, "shop", "s1", {"tags": ["vip", "golf"]}, at(1)),
            (1, "crm", "c1", {"tags": "vip"}, at(2)),
            (1, "crm", "c2", {"tags": "old"}, at(1)),
            (1, "crm", "c2", {"tags": "new"}, at(3)),
        ],
    )
    rules(workspace, ("tags", "union"))
    got = profile(workspace, 1)["attributes"]["tags"]
    # c2 appears twice (same record key): only its current value counts
    assert got["value"] == ["golf", "new", "vip"]
    assert got["source"] == "crm, shop"


def test_build_profiles_is_one_wide_table_for_everyone(workspace):
    add_user_property(workspace.db, PropertyBody(name="vip_level", type="integer"))
    write_slices(
        workspace,
        [
            (1, "crm", "c1", {"city": "Beijing", "spend": 10, "updated_at": "x"}, at(1)),
            (1, "shop", "s1", {"city": "Shanghai", "spend": 5}, at(2)),
            (4, "crm", "c4", {"City": "Xi'an"}, at(3)),
        ],
    )
    write_identifies(workspace, [(7, "app", {"spend": 1}, at(5))])
    rules(workspace, ("spend", "sum"))
    with workspace.warehouse.connect() as con:
        nodes = pa.table(
            {
                "node_id": pa.array([1, 4, 7, 9], pa.int64()),
                "key": pa.array([11, 44, 77, 99], pa.int64()),
                "id_type": ["mobile"] * 4,
                "value": ["a", "b", "c", "d"],
                "person_id": pa.array([1, 4, 7, 9], pa.int64()),
                "first_seq": pa.array([1, 2, 3, 4], pa.int64()),
                "first_source": ["crm"] * 4,
                "first_seen": pa.array([at(1)] * 4, pa.timestamp("us", "UTC")),
            }
        )
        con.insert("identity_nodes", _typed(nodes, layout.IDENTITY_NODES))
        assert "vip_level" in known_properties(con, workspace.db)
    assert build_profiles(workspace) == 4  # 9 has no value but is a person of the graph
    with workspace.warehouse.connect() as con:
        table = con.table("profiles")
        rows = {r["person_key"]: r for r in table.order_by("person_key").to_pyarrow().to_pylist()}
        columns = table.columns
    assert columns[0] == "person_key" and columns[-1] == "updated_at"
    assert {"city", "spend", "vip_level", "prop_updated_at"} <= set(columns)
    assert [c for c in columns if c.lower() == "city"] == ["city"]
    assert rows[1]["city"] == "Shanghai" and rows[1]["spend"] == "15"
    assert rows[1]["updated_at"] == at(2)
    assert rows[7]["spend"] == "1" and rows[7]["city"] is None
    assert rows[9]["city"] is None and rows[9]["updated_at"] is None
    assert build_profiles(workspace) == 4  # rebuilt in place


def test_profile_columns_avoid_clashes():
    assert profile_columns(["name", "Name", "person_key", "updated_at"]) == {
        "name": "name",
        "Name": "prop_Name",
        "person_key": "prop_person_key",
        "updated_at": "prop_updated_at",
    }


def test_conflict_report_counts_persons_and_masks_personal_values(workspace):
    write_slices(
        workspace,
        [
            (1, "crm", "c1", {"name": "Wang Wei", "city": "Beijing"}, at(1)),
            (1, "shop", "s1", {"name": "Wang Wi", "city": "Beijing"}, at(2)),
            (2, "crm", "c2", {"name": "Li Na", "city": "Chengdu"}, at(1)),
            (2, "shop", "s2", {"name": "Li Na", "city": "Shanghai"}, at(2)),
            (3, "crm", "c3", {"city": "Xi'an"}, at(1)),
            (3, "shop", "s3", {"city": "Wuhan"}, at(1)),
            (3, "app", "a3", {"city": "Wuhan"}, at(1)),
        ],
    )
    report = conflict_report(workspace)
    assert [(r["property"], r["persons"]) for r in report] == [("city", 2), ("name", 1)]
    city = report[0]
    assert city["rule"] == "most_recent" and city["sources"] == ["app", "crm", "shop"]
    assert [e["person_key"] for e in city["examples"]] == [2, 3]
    assert {v["value"] for v in city["examples"][0]["values"]} == {"Chengdu", "Shanghai"}
    name = report[1]
    assert {v["value"] for v in name["examples"][0]["values"]} == {"***"}  # name is PII


def test_every_rule_gives_a_value(workspace):
    names = {rule: f"p_{rule}" for rule in cfg.SURVIVORSHIP_RULES}
    write_slices(
        workspace,
        [
            (5, "crm", "c", {p: "3" for p in names.values()}, at(1)),
            (5, "x", "x", {p: "4" for p in names.values()}, at(2)),
        ],
    )
    rules(workspace, *[(p, rule, ("crm",)) for rule, p in names.items()])
    got = profile(workspace, 5)["attributes"]
    assert {rule: got[p]["value"] for rule, p in names.items()} == {
        "source_priority": "3",
        "most_recent": "4",
        "most_frequent": "4",  # a tie: the most recent
        "first_non_empty": "3",
        "sum": 7,
        "union": ["3", "4"],
    }
