"""Import from real databases by SQLAlchemy URL: SQLite, PostgreSQL and MariaDB, incrementally."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import create_engine, text

from rapport.ingest import quarantine
from rapport.ingest.importer import ImportFailed, ImportSpec, run_import, run_saved_import

MAPPING = {
    "target": "profiles",
    "key": "member_id",
    "identifiers": {"member_id": "member_id", "mobile": "mobile", "email": "email"},
    "properties": ["name", "city"],
    "updated_at": "updated_at",
}


def _fill(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE members (member_id VARCHAR(20) PRIMARY KEY, name VARCHAR(50),"
                " mobile VARCHAR(30), email VARCHAR(100), city VARCHAR(50), updated_at TIMESTAMP)"
            )
        )
        conn.execute(
            text("INSERT INTO members VALUES (:i, :n, :m, :e, :c, :u)"),
            [
                {
                    "i": "0001",
                    "n": "李雷",
                    "m": "138 0013 8000",
                    "e": "LI@x.cn",
                    "c": "上海",
                    "u": datetime(2024, 1, 1),
                },
                {
                    "i": "0002",
                    "n": "韩梅梅",
                    "m": "+86 139 1234 5678",
                    "e": None,
                    "c": "北京",
                    "u": datetime(2024, 1, 2),
                },
                {
                    "i": "0003",
                    "n": "Bad",
                    "m": "000",
                    "e": "bad@x.cn",
                    "c": None,
                    "u": datetime(2024, 1, 3),
                },
            ],
        )
    engine.dispose()


def _add_row(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO members VALUES ('0004', 'New', '13700000001', NULL, NULL, :u)"),
            {"u": datetime(2024, 2, 1)},
        )
        conn.execute(
            text("UPDATE members SET city = '广州', updated_at = :u WHERE member_id = '0001'"),
            {"u": datetime(2024, 2, 2)},
        )
    engine.dispose()


def _check_incremental_import(workspace, url: str) -> None:
    _fill(url)
    spec = ImportSpec(
        name="members",
        source="member_db",
        uri=url,
        table="members",
        watermark="updated_at",
        mapping=MAPPING,
    )
    first = run_import(workspace, spec)
    assert (first["rows_read"], first["rows_loaded"], first["rows_quarantined"]) == (3, 2, 1)
    assert first["watermark"].startswith("2024-01-03")
    slices = {s["record_key"]: s for s in workspace.warehouse.profile_slices(source="member_db")}
    assert slices["0001"]["identifiers"]["mobile"] == "+8613800138000"
    assert slices["0001"]["identifiers"]["email"] == "li@x.cn"
    assert slices["0002"]["properties"]["name"] == "韩梅梅"
    entry = quarantine.list_entries(workspace.db, source="member_db")[0]
    assert entry["reason"] == "invalid_mobile" and "column 'mobile'" in entry["detail"]

    assert run_saved_import(workspace, "members")["rows_read"] == 0  # nothing newer
    _add_row(url)
    third = run_saved_import(workspace, "members")
    assert (third["rows_read"], third["rows_loaded"]) == (2, 2)  # only the changed rows
    slices = {s["record_key"]: s for s in workspace.warehouse.profile_slices(source="member_db")}
    assert len(slices) == 3 and slices["0001"]["properties"]["city"] == "广州"


def test_sqlite_table_incremental(workspace, tmp_path):
    _check_incremental_import(workspace, f"sqlite:///{tmp_path}/crm.db")


def test_postgresql_table_incremental(workspace, pg_url):
    _check_incremental_import(workspace, pg_url)


def test_mariadb_table_incremental(workspace, mariadb_url):
    _check_incremental_import(workspace, mariadb_url)


def test_query_source_and_clear_errors(workspace, tmp_path):
    url = f"sqlite:///{tmp_path}/crm.db"
    _fill(url)
    spec = ImportSpec(
        source="crm",
        uri=url,
        query="SELECT member_id, mobile FROM members WHERE city = '上海'",
        mapping={
            "target": "profiles",
            "identifiers": {"member_id": "member_id", "mobile": "mobile"},
        },
    )
    assert run_import(workspace, spec)["rows_loaded"] == 1
    missing = spec.model_copy(update={"query": None, "table": "nope"})
    with pytest.raises(ImportFailed, match="nope"):
        run_import(workspace, missing)
    wrong = spec.model_copy(update={"uri": "postgresql+psycopg://u:secret@127.0.0.1:1/x"})
    with pytest.raises(ImportFailed) as exc:
        run_import(workspace, wrong)
    assert "secret" not in str(exc.value)
