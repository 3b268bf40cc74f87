"""Batch import from files: what lands in the warehouse, what is refused, what a re-run does."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rapport.ingest import quarantine
from rapport.ingest.importer import ImportFailed, ImportSpec, replay_rows, run_import
from rapport.ingest.mapping import MappingError, load_mapping, parse_mapping
from rapport.ingest.quality import quality_report

MEMBERS = """member_id,name,mobile,email,id_card,birthday,updated_at
00123, Alice ,138 0013 8000,Alice@Example.COM,11010519491231002X,1990-01-02,2024-01-01 10:00:00
00124,Bob,+86-13912345678,bob@example.com,,1985-05-05,2024-01-02 10:00:00
00125,Carol,12345,carol@example.com,,,2024-01-03 10:00:00
,Dan,13700000000,,,,2024-01-03 11:00:00
00126,Eve,+44 20 7946 0958,EVE@example.org ,,,2024-01-04 10:00:00
00127,Frank,8613800138000,frank@example.com,110105194912310021,,2024-01-04 10:00:00
"""
MEMBER_MAPPING = {
    "target": "profiles",
    "key": "member_id",
    "identifiers": {
        "member_id": "member_id",
        "mobile": "mobile",
        "email": "email",
        "id_card": "id_card",
    },
    "properties": ["name", "birthday"],
    "updated_at": "updated_at",
}


@pytest.fixture
def members_csv(tmp_path: Path) -> Path:
    path = tmp_path / "members.csv"
    path.write_text(MEMBERS)
    return path


def _members(path: Path, source: str = "member_db") -> ImportSpec:
    return ImportSpec(source=source, uri=str(path), mapping=MEMBER_MAPPING)


def test_profiles_from_csv_are_normalised_per_source_slices(workspace, members_csv):
    run = run_import(workspace, _members(members_csv))
    assert run["status"] == "done"
    assert (run["rows_read"], run["rows_loaded"], run["rows_quarantined"]) == (6, 3, 3)
    slices = {s["record_key"]: s for s in workspace.warehouse.profile_slices(source="member_db")}
    assert set(slices) == {"00123", "00124", "00126"}  # leading zeros kept: ids are text
    alice = slices["00123"]
    assert alice["identifiers"] == {
        "member_id": "00123",
        "mobile": "+8613800138000",
        "email": "alice@example.com",
        "id_card": "11010519491231002X",
    }
    assert alice["properties"] == {"name": "Alice", "birthday": "1990-01-02"}
    assert alice["source"] == "member_db" and alice["updated_at"].year == 2024
    assert slices["00126"]["identifiers"]["mobile"] == "+442079460958"
    assert slices["00126"]["identifiers"]["email"] == "eve@example.org"


def test_bad_rows_are_quarantined_with_column_and_row_number(workspace, members_csv):
    run = run_import(workspace, _members(members_csv))
    entries = quarantine.list_entries(workspace.db, source="member_db")
    by_reason = {e["reason"]: e for e in entries}
    assert set(by_reason) == {"invalid_mobile", "missing_key", "invalid_id_card"}
    mobile = by_reason["invalid_mobile"]
    assert mobile["detail"].startswith("row 3, column 'mobile'")
    assert "12345" in mobile["detail"]
    assert json.loads(mobile["payload"])["name"] == "Carol"
    assert mobile["kind"] == "row" and mobile["import_run_id"] == run["id"]
    assert by_reason["missing_key"]["detail"].startswith("row 4, column 'member_id'")
    assert "checksum" in by_reason["invalid_id_card"]["detail"]


def test_rerun_never_duplicates_and_picks_up_changes(workspace, members_csv):
    run_import(workspace, _members(members_csv))
    again = run_import(workspace, _members(members_csv))
    assert (again["rows_loaded"], again["rows_duplicate"], again["rows_quarantined"]) == (0, 3, 3)
    assert len(workspace.warehouse.profile_slices()) == 3
    assert len(quarantine.list_entries(workspace.db, source="member_db")) == 3  # no copies
    members_csv.write_text(MEMBERS.replace("Bob,", "Robert,"))
    third = run_import(workspace, _members(members_csv))
    assert third["rows_loaded"] == 1
    bob = workspace.warehouse.profile_slices(record_key="00124")
    assert [s["properties"]["name"] for s in bob] == ["Robert"]


def test_replay_after_fixing_the_mapping_loads_the_rows(workspace, members_csv):
    run_import(workspace, _members(members_csv))
    entries = quarantine.list_entries(workspace.db, source="member_db", reason="invalid_mobile")
    # the mobile column actually holds extensions: declare it as a custom identifier
    fixed = {
        **MEMBER_MAPPING,
        "identifiers": {**MEMBER_MAPPING["identifiers"], "mobile": "custom:phone"},
    }
    run_import(workspace, ImportSpec(source="member_db", uri=str(members_csv), mapping=fixed))
    summary = replay_rows(workspace, entries)
    assert summary["replayed"] == 1 and summary["still_failing"] == 0
    carol = workspace.warehouse.profile_slices(record_key="00125")
    assert carol[0]["identifiers"]["phone"] == "12345"
    assert quarantine.list_entries(workspace.db, source="member_db", reason="invalid_mobile") == []


def test_events_from_parquet_with_watermark_are_incremental(workspace, tmp_path):
    path = tmp_path / "orders.parquet"

    def write(n: int) -> None:
        pq.write_table(
            pa.table(
                {
                    "order_id": [f"o{i}" for i in range(n)],
                    "customer_id": [f"c{i % 3}" for i in range(n)],
                    "mobile": ["13800138000"] * n,
                    "amount": [100.5 + i for i in range(n)],
                    "paid_at": pa.array(
                        [1_700_000_000 + 3600 * i for i in range(n)], pa.timestamp("s")
                    ),
                }
            ),
            path,
        )

    mapping = {
        "target": "events",
        "identifiers": {"customer_id": "customer_id", "mobile": "mobile"},
        "event": {"name": "order_paid", "time": "paid_at", "id": "order_id"},
        "properties": ["amount"],
    }
    spec = ImportSpec(source="orders", uri=str(path), watermark="paid_at", mapping=mapping)
    write(5)
    first = run_import(workspace, spec)
    assert (first["rows_read"], first["rows_loaded"]) == (5, 5)
    assert first["watermark"].startswith("2023-11-15T")
    write(8)
    second = run_import(workspace, spec)
    assert (second["rows_read"], second["rows_loaded"]) == (3, 3)  # only rows after the mark
    wh = workspace.warehouse
    assert wh.count_events(event="order_paid", source="orders") == 8
    newest = wh.events(source="orders", limit=1)[0]
    assert newest["event_id"] == "o7" and newest["user_id"] == "c1"
    assert newest["properties"] == {"amount": 107.5}
    assert newest["context"]["identifiers"]["mobile"] == "+8613800138000"
    assert newest["type"] == "import" and newest["day"].isoformat() == "2023-11-15"


def test_events_without_id_from_jsonl_are_deduplicated_by_content(workspace, tmp_path):
    path = tmp_path / "tickets.jsonl"
    rows = [
        {"email": "A@x.com", "topic": "refund", "created_at": "2024-03-01T10:00:00+08:00"},
        {"email": "b@x.com", "topic": "delivery", "created_at": "2024-03-02 09:00:00"},
        {"email": "b@x.com", "topic": "delivery", "created_at": "2024-03-02 09:00:00"},
        {"email": "c@x.com", "topic": "other", "created_at": "not a date"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mapping = {
        "target": "events",
        "identifiers": {"email": "email"},
        "event": {"name": "service_ticket", "time": "created_at"},
        "properties": {"topic": "ticket_topic"},
    }
    spec = ImportSpec(source="customer_service", uri=str(path), mapping=mapping)
    run = run_import(workspace, spec)
    assert (run["rows_loaded"], run["rows_duplicate"], run["rows_quarantined"]) == (2, 1, 1)
    assert run_import(workspace, spec)["rows_loaded"] == 0
    events = workspace.warehouse.events(source="customer_service", limit=10)
    first = [e for e in events if e["properties"]["ticket_topic"] == "refund"][0]
    assert first["ts"].isoformat() == "2024-03-01T02:00:00+00:00"  # offset honoured
    bad = quarantine.list_entries(workspace.db, source="customer_service")
    assert bad[0]["reason"] == "invalid_timestamp" and "created_at" in bad[0]["detail"]


def test_items_from_csv(workspace, tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("model,category,price\nBCD-520,fridge,6999\nXQG-100,washer,2999\n,tv,1\n")
    mapping = {
        "target": "items",
        "item": {"type": "product", "id": "model"},
        "properties": ["category", "price"],
    }
    run = run_import(workspace, ImportSpec(source="catalog", uri=str(path), mapping=mapping))
    assert (run["rows_loaded"], run["rows_quarantined"]) == (2, 1)
    items = {i["item_id"]: i for i in workspace.warehouse.items(item_type="product")}
    assert items["BCD-520"]["properties"] == {"category": "fridge", "price": 6999}


def test_quality_report_fill_rates_duplicates_and_cross_source_conflicts(
    workspace, tmp_path, members_csv
):
    run_import(workspace, _members(members_csv))
    crm = tmp_path / "crm.csv"
    crm.write_text(
        "crm_id,phone,birthday\n"
        "k1,13800138000,1991-09-09\n"  # Alice's mobile, another birthday
        "k2,139-1234-5678,1985-05-05\n"  # Bob's, same birthday
        "k3,13912345678,\n"  # the same mobile twice in this source
    )
    mapping = {
        "target": "profiles",
        "key": "crm_id",
        "identifiers": {"phone": "mobile"},
        "properties": ["birthday"],
    }
    run_import(workspace, ImportSpec(source="crm", uri=str(crm), mapping=mapping))
    report = quality_report(workspace)
    sources = {s["source"]: s for s in report["sources"]}
    fields = {f["field"]: f for f in sources["member_db"]["fields"]}
    assert fields["birthday"]["fill_rate"] == pytest.approx(2 / 3, abs=0.001)
    assert fields["mobile"]["invalid"] == 1  # the quarantined '12345'
    crm_fields = {f["field"]: f for f in sources["crm"]["fields"]}
    assert crm_fields["mobile"]["duplicates"] == 1
    conflict = next(c for c in report["conflicts"] if c["property"] == "birthday")
    assert conflict["identifier_type"] == "mobile" and conflict["identifiers"] == 1
    example = conflict["examples"][0]
    assert example["identifier"] == "+8613800138000"
    assert example["values"] == {"crm": ["1991-09-09"], "member_db": ["1990-01-02"]}
    json.dumps(quality_report(workspace, "crm"))  # JSON-able for the API and the charts


def test_mapping_errors_name_the_path(tmp_path, workspace, members_csv):
    with pytest.raises(MappingError, match=r"identifiers: mobile: unknown identifier type 'phone'"):
        parse_mapping({"target": "profiles", "identifiers": {"mobile": "phone"}})
    with pytest.raises(MappingError, match=r"target 'events' needs an 'event' section"):
        parse_mapping({"target": "events"})
    bad = tmp_path / "m.yaml"
    bad.write_text("target: profiles\nidentifiers: {mobile: mobile}\nproperties: [nme]\n")
    with pytest.raises(ImportFailed, match=r"properties.nme: column 'nme' not found"):
        run_import(
            workspace, ImportSpec(source="s", uri=str(members_csv), mapping=load_mapping(bad))
        )
    with pytest.raises(ImportFailed, match="no such file"):
        run_import(
            workspace,
            ImportSpec(source="s", uri=str(tmp_path / "nope.csv"), mapping=load_mapping(bad)),
        )
