"""Malformed input files and bodies (issue 7): each gets a clear error, and nothing is lost.

A GBK export reads as the right Chinese; a ragged CSV's bad lines are quarantined with the
reason (and replay once fixed); a corrupt Parquet names the file; a 10 MB field loads; the
collector answers deeply nested JSON with a 400 and an oversized event with a 413.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rapport.ingest import quarantine
from rapport.ingest.importer import ImportFailed, ImportSpec, run_import
from rapport.ingest.sources import create_source

MAPPING = {
    "target": "profiles",
    "key": "member_id",
    "identifiers": {"member_id": "member_id"},
    "properties": ["name", "city"],
}
PEOPLE = [("M1", "张三", "上海"), ("M2", "李四", "北京"), ("M3", "王小明", "广州")]


def _csv(rows: list[tuple[str, ...]]) -> str:
    return "member_id,name,city\n" + "".join(",".join(r) + "\n" for r in rows)


def _spec(path: Path, **extra: object) -> ImportSpec:
    return ImportSpec(source="warehouse", uri=str(path), mapping=MAPPING, **extra)  # type: ignore[arg-type]


def _names(workspace) -> dict[str, tuple[str, str]]:
    slices = workspace.warehouse.profile_slices(source="warehouse")
    return {
        s["record_key"]: (s["properties"].get("name"), s["properties"].get("city")) for s in slices
    }


def test_gbk_csv_is_detected_and_reads_as_the_right_chinese(workspace, tmp_path):
    path = tmp_path / "members_gbk.csv"
    path.write_bytes(_csv(PEOPLE).encode("gbk"))
    run = run_import(workspace, _spec(path))
    assert (run["rows_read"], run["rows_loaded"], run["rows_quarantined"]) == (3, 3, 0)
    assert _names(workspace) == {key: (name, city) for key, name, city in PEOPLE}


def test_explicit_encoding_and_a_wrong_one(workspace, tmp_path):
    path = tmp_path / "members.csv"
    path.write_bytes(_csv(PEOPLE).encode("gb18030"))
    run = run_import(workspace, _spec(path, encoding="GBK"))
    assert run["rows_loaded"] == 3 and _names(workspace)["M3"] == ("王小明", "广州")
    with pytest.raises(ImportFailed, match="unknown encoding 'klingon'"):
        run_import(workspace, _spec(path, encoding="klingon", name="other"))
    path.write_bytes(_csv(PEOPLE).encode("utf-16"))
    with pytest.raises(ImportFailed, match="members.csv.*utf-8|members.csv.*UTF-8"):
        run_import(workspace, _spec(path, name="utf16"))


def test_ragged_rows_are_quarantined_with_the_line_and_replay_once_fixed(workspace, tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text(
        "member_id,name,city\nM1,张三,上海\nM2,李四\nM3,王五,北京,extra\nM4,赵\x00六,广州\n"
    )
    run = run_import(workspace, _spec(path))
    assert (run["rows_read"], run["rows_loaded"], run["rows_quarantined"]) == (4, 2, 2)
    names = _names(workspace)
    assert names["M1"] == ("张三", "上海")
    assert names["M4"] == ("赵\x00六", "广州")  # a NUL inside a value is kept, not truncated
    entries = {e["detail"]: e for e in quarantine.list_entries(workspace.db)}
    short, long = sorted(entries)
    assert short.startswith("row 2, line 3: missing columns") and "Found: 2" in short
    assert long.startswith("row 3, line 4: too many columns")
    payload = json.loads(entries[long]["payload"])
    assert payload["__line"] == "M3,王五,北京,extra" and payload["__extra"] == ["extra"]
    assert {e["reason"] for e in entries.values()} == {"malformed_row"}
    # a re-run quarantines no second copy
    run_import(workspace, _spec(path))
    assert len(quarantine.list_entries(workspace.db, status="open")) == 2
    # the short row replays as it is (its missing city is just empty)
    replayed = quarantine.replay(workspace, [entries[short]["id"]])
    assert replayed["replayed"] == 1 and _names(workspace)["M2"] == ("李四", None)
    assert len(quarantine.list_entries(workspace.db, status="open")) == 1


def _load_big_field(workspace, tmp_path: Path, size: int) -> None:
    path = tmp_path / "big.csv"
    path.write_text(_csv([("M1", "x" * size, "上海"), ("M2", "b", "c")]))
    run = run_import(workspace, _spec(path))
    assert run["rows_loaded"] == 2
    assert len(_names(workspace)["M1"][0]) == size


def test_a_field_over_duckdbs_2_mb_default_loads(workspace, tmp_path):
    _load_big_field(workspace, tmp_path, 3_000_000)


@pytest.mark.long
def test_a_10_mb_field_loads_and_a_20_mb_line_is_a_short_clear_error(workspace, tmp_path):
    _load_big_field(workspace, tmp_path, 10_000_000)
    path = tmp_path / "huge.csv"
    path.write_text(_csv([("M1", "x" * 20_000_000, "上海")]))
    with pytest.raises(ImportFailed, match="huge.csv") as failed:
        run_import(workspace, _spec(path))
    assert len(str(failed.value)) < 2000  # names the file, does not quote 20 MB back


def test_truncated_or_corrupt_parquet_names_the_file(workspace, tmp_path):
    good = tmp_path / "members.parquet"
    table = pa.table(
        {k: [p[i] for p in PEOPLE] for i, k in enumerate(["member_id", "name", "city"])}
    )
    pq.write_table(table, good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImportFailed, match=r"truncated\.parquet: cannot read as parquet"):
        run_import(workspace, _spec(truncated))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(ImportFailed, match=r"garbage\.parquet: cannot read as parquet"):
        run_import(workspace, _spec(garbage))
    assert run_import(workspace, _spec(good))["rows_loaded"] == 3  # the good one still loads


# -- the collector ----------------------------------------------------------------------------
def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.fixture
def web(workspace):
    return create_source(workspace.db, "web")


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_deeply_nested_json_is_a_400_not_a_crash(client, workspace, web, path):
    nested = "[" * 10_000 + "]" * 10_000
    message = '{"type":"track","event":"e","userId":"u","properties":{"deep":' + nested + "}}"
    body = message if path == "/v1/track" else '{"batch":[' + message + "]}"
    headers = {**_basic(web["write_key"]), "Content-Type": "application/json"}
    r = client.post(path, content=body.encode(), headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_json" and "deep" in r.json()["message"]
    # the collector still works afterwards
    ok = client.post("/v1/track", json={"event": "e", "userId": "u"}, headers=headers)
    assert ok.status_code == 200


def test_a_huge_property_is_a_413_naming_the_limit(client, web):
    headers = _basic(web["write_key"])
    event = {"type": "track", "event": "e", "userId": "u", "properties": {"t": "x" * 100_000}}
    r = client.post("/v1/track", json=event, headers=headers)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large" and "32768" in r.json()["message"]
