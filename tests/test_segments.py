"""Segments on a hand-made world: six persons with profiles, events and tags written straight
into the warehouse. MECE checks, lifecycle stages and their transition events, bitmap-only
counts, static lists (upload, export) and the API."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import msgspec
import pyarrow as pa
import pytest
from pyroaring import BitMap

from conftest import copy_home
from rapport.catalog import PropertyBody, add_user_property
from rapport.conditions.model import And, Attr, HasTag, InSegment, Not, Op, Or
from rapport.segments import audiences, bitmaps, funnel, lifecycle, segmentations
from rapport.segments.store import SegmentError, change_members, get_segment, members
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace

AS_OF = datetime(2024, 6, 30, 12, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


def _typed(table: pa.Table, schema: Any) -> ibis.Table:
    t = ibis.memtable(table)
    return t.select(**{name: t[name].cast(dtype) for name, dtype in schema.items()})


def day(month: int, d: int) -> datetime:
    return datetime(2024, month, d, 10, tzinfo=UTC)


#: person -> (gender, age); person 5 has no gender
PROFILES = {1: ("m", 25), 2: ("f", 35), 3: ("m", 45), 4: ("f", 17), 5: ("", 30), 6: ("f", 60)}
#: (person, event, ts): at AS_OF 1 and 6 are retained, 2 silent, 3 lost, 4 and 5 not activated
EVENTS = [
    (1, "order_paid", day(6, 20)),
    (2, "order_paid", day(5, 10)),
    (3, "book_hotel", day(3, 1)),
    (4, "view_product", day(6, 29)),
    (6, "order_paid", day(6, 1)),
    (6, "login", day(6, 25)),
    (6, "order_paid", day(6, 2)),
]
TAGS = [(1, "vip", "gold"), (2, "vip", "silver"), (6, "vip", "gold"), (3, "churn", "high")]


def write_world(ws: Workspace) -> None:
    add_user_property(ws.db, PropertyBody(name="age", type="integer"))
    n = len(EVENTS)
    events = pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": ["app"] * n,
            "type": ["track"] * n,
            "event": [e for _, e, _ in EVENTS],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array([t for *_, t in EVENTS], pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for *_, t in EVENTS], pa.date32()),
            "received_at": pa.array([t for *_, t in EVENTS], pa.timestamp("us", "UTC")),
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([p for p, *_ in EVENTS], pa.int64()),
            "properties": ["{}"] * n,
            "context": ["{}"] * n,
        }
    )
    profiles = pa.table(
        {
            "person_key": pa.array(list(PROFILES), pa.int64()),
            "gender": [g for g, _ in PROFILES.values()],
            "age": [str(a) for _, a in PROFILES.values()],
            "updated_at": pa.array([AS_OF] * len(PROFILES), pa.timestamp("us", "UTC")),
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
        con.insert("tag_values", _typed(tags, layout.TAG_VALUES))
        con.create_table("profiles", profiles)
    bitmaps.refresh_from_warehouse(ws)


@pytest.fixture
def world(workspace: Workspace) -> Workspace:
    write_world(workspace)
    return workspace


def needs_batch_compiler() -> None:
    pytest.importorskip("rapport.conditions.to_ibis", reason="the batch compiler is not there yet")


def gender(value: str) -> Attr:
    return Attr(field="gender", op=Op.eq, value=value)


def age(op: Op, value: Any) -> Attr:
    return Attr(field="age", op=op, value=value)


# -- the bitmap index ---------------------------------------------------------------------------
def test_bitmap_only_conditions_are_answered_from_the_index(world):
    gold = HasTag(tag="vip", values=["gold"])
    assert bitmaps.bitmap_count(world, gold) == 2
    assert bitmaps.bitmap_count(world, HasTag(tag="vip")) == 3
    either = Or(any=[gold, HasTag(tag="churn")])
    assert bitmaps.bitmap_eval(world, either) == bitmaps.from_keys([1, 3, 6])
    # not = everyone (six persons with a profile or events) minus the tagged
    assert bitmaps.bitmap_eval(world, Not(cond=HasTag(tag="vip"))) == bitmaps.from_keys([3, 4, 5])
    out = audiences.size_of(world, And(all=[HasTag(tag="vip"), Not(cond=gold)]), AS_OF)
    assert out["size"] == 1 and out["bitmap_only"] and out["sample"] == [2]
    # a behaviour leaf is not bitmap-able; a tag the index never saw is not either
    assert bitmaps.bitmap_count(world, Attr(field="gender", op=Op.eq, value="f")) is None
    assert bitmaps.bitmap_count(world, HasTag(tag="never_computed")) is None


def test_bitmaps_survive_a_new_process_and_are_replaced_atomically(world):
    root = world.settings.home / "bitmaps"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["tag:vip=gold"]["size"] == 2
    fresh = bitmaps.BitmapStore(root)  # what another process sees
    assert fresh.get("tag:vip") == bitmaps.from_keys([1, 2, 6])
    before = set(p.name for p in root.iterdir())
    bitmaps.refresh_tag(world, "vip")
    after = set(p.name for p in root.iterdir())
    assert len(after) == len(before)  # old versions removed, no temp files left
    assert not [n for n in after if n.startswith(".tmp")]


def test_mixed_trees_join_warehouse_leaves_to_the_bitmap_algebra(world):
    needs_batch_compiler()
    cond = And(all=[HasTag(tag="vip"), gender("f")])
    out = audiences.size_of(world, cond, AS_OF)
    assert out["size"] == 2 and not out["bitmap_only"]
    assert bitmaps.evaluate(Not(cond=cond), world, AS_OF) == bitmaps.from_keys([1, 3, 4, 5])


def test_a_recomputed_tag_is_reindexed_before_sizing(world):
    from sqlalchemy import insert

    from rapport.db.tables import tag_runs, tags

    gold = HasTag(tag="vip", values=["gold"])
    assert audiences.size_of(world, gold, AS_OF)["size"] == 2
    row = {"person_key": [4], "tag": ["vip"], "value": ["gold"], "run_id": [2]}
    with world.warehouse.connect() as con:
        con.insert("tag_values", _typed(pa.table(row), layout.TAG_VALUES))
    now = datetime.now(UTC)
    with world.db.begin() as conn:
        tag_id = conn.execute(
            insert(tags).values(
                name="vip", kind="rule", definition={}, created_at=now, updated_at=now
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(tag_runs).values(tag_id=tag_id, status="done", started_at=now, finished_at=now)
        )
    out = audiences.size_of(world, gold, AS_OF)
    assert out["size"] == 3 and out["bitmap_only"]


def test_attributes_before_any_profile_build(workspace):
    needs_batch_compiler()
    n = 1
    events = pa.table(
        {
            "event_id": ["x"],
            "source": ["app"],
            "type": ["track"],
            "event": ["login"],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array([AS_OF], pa.timestamp("us", "UTC")),
            "day": pa.array([AS_OF.date()], pa.date32()),
            "received_at": pa.array([AS_OF], pa.timestamp("us", "UTC")),
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([7], pa.int64()),
            "properties": ["{}"],
            "context": ["{}"],
        }
    )
    with workspace.warehouse.connect() as con:
        con.insert("events", _typed(events, layout.EVENTS))
    missing = Attr(field="gender", op=Op.not_set)
    assert bitmaps.evaluate(missing, workspace, AS_OF) == bitmaps.from_keys([7])


def test_mixed_evaluation_agrees_with_the_batch_compiler_alone(world):
    """The index's shortcuts (and = positives minus negatives, grouped warehouse queries)
    give the same persons as compiling the whole tree to one warehouse query."""
    needs_batch_compiler()
    from rapport.conditions.model import Did
    from rapport.conditions.to_ibis import BatchContext, compile

    vip, churn = HasTag(tag="vip"), HasTag(tag="churn")
    ordered, young = Did(event="order_paid"), age(Op.lt, 40)
    trees = [
        And(all=[vip, Not(cond=ordered)]),
        And(all=[Not(cond=vip), Not(cond=young)]),
        Or(any=[churn, ordered, young]),
        And(all=[Or(any=[vip, young]), Not(cond=And(all=[churn, ordered])), gender("f")]),
        Not(cond=Or(any=[vip, Not(cond=ordered)])),
        And(all=[vip, ordered, Not(cond=gender("m")), Not(cond=churn)]),
    ]
    types = bitmaps.attr_types(world)
    for tree in trees:
        with world.warehouse.connect() as con:
            alone = bitmaps.keys_of(compile(tree, BatchContext(con, AS_OF, types)))
        assert bitmaps.evaluate(tree, world, AS_OF) == alone, tree


# -- segmentations ------------------------------------------------------------------------------
def gender_age() -> dict[str, Any]:
    buckets = []
    for g in ("m", "f"):
        for name, cond in (("under_40", age(Op.lt, 40)), ("40_plus", age(Op.ge, 40))):
            both = And(all=[gender(g), cond])
            buckets.append({"name": f"{g}_{name}", "condition": both.model_dump(mode="json")})
    return {"dimension": "gender/age", "buckets": buckets, "other": True}


def test_a_mece_gender_age_segmentation_passes_and_is_written(world):
    needs_batch_compiler()
    segmentations.create_segmentation(world, "gender_age", gender_age())
    report = segmentations.check_mece(world, "gender_age", AS_OF)
    assert report["ok"], report
    sizes = {b["name"]: b["size"] for b in report["buckets"]}
    assert sizes == {"m_under_40": 1, "m_40_plus": 1, "f_under_40": 2, "f_40_plus": 1, "other": 1}
    assert report["uncovered"] == {"count": 1, "sample": [5]}  # no gender: the "other" bucket
    segmentations.refresh_segmentation(world, "gender_age", AS_OF)
    assert members(world, "gender_age", "f_under_40") == bitmaps.from_keys([2, 4])
    assert members(world, "gender_age", "other") == bitmaps.from_keys([5])
    assert get_segment(world, "gender_age")["size"] == 6
    # the buckets are now in the index: a bitmap-only audience over them
    cond = InSegment(segment="gender_age", bucket="f_under_40")
    assert bitmaps.bitmap_count(world, cond) == 2


def test_a_planted_overlap_fails_the_check_with_the_persons_named(world):
    needs_batch_compiler()
    definition = {
        "dimension": "age",
        "buckets": [
            {"name": "young", "condition": age(Op.lt, 40).model_dump(mode="json")},
            {"name": "adult", "condition": age(Op.between, [30, 59]).model_dump(mode="json")},
        ],
        "other": False,
    }
    segmentations.create_segmentation(world, "age_bands", definition)
    report = segmentations.check_mece(world, "age_bands", AS_OF)
    assert not report["ok"]
    assert report["overlaps"] == [{"a": "young", "b": "adult", "count": 2, "sample": [2, 5]}]
    assert report["uncovered"] == {"count": 1, "sample": [6]}  # 60: nobody takes them


def test_the_demo_seed_segmentations(world):
    from rapport.segments.demo import define_demo_segments

    rows = [(1, "gender", "male"), (1, "age_band", "25-34"), (2, "gender", "female")]
    rows += [(2, "age_band", "35-44"), (3, "gender", "male"), (3, "age_band", "55+")]
    table = {
        "person_key": [p for p, _, _ in rows],
        "tag": [t for _, t, _ in rows],
        "value": [v for *_, v in rows],
        "run_id": [1] * len(rows),
    }
    with world.warehouse.connect() as con:
        con.insert("tag_values", _typed(pa.table(table), layout.TAG_VALUES))
    bitmaps.refresh_from_warehouse(world)
    define_demo_segments(world)
    passing = segmentations.check_mece(world, "demo_gender_age", AS_OF)
    assert passing["ok"] and passing["buckets"][-1] == {"name": "other", "size": 3}
    failing = segmentations.check_mece(world, "demo_age_overlap", AS_OF)
    assert not failing["ok"]  # 25-34 is planted in two buckets; 4, 5, 6 have no age band
    assert failing["overlaps"] == [{"a": "young", "b": "adult", "count": 1, "sample": [1]}]
    assert failing["uncovered"] == {"count": 3, "sample": [4, 5, 6]}


def test_segmentation_definitions_are_checked():
    with pytest.raises(SegmentError, match="buckets"):
        segmentations.check_definition({"buckets": []})
    twice = {"name": "a", "condition": {"kind": "tag", "tag": "x"}}
    with pytest.raises(SegmentError, match="two buckets"):
        segmentations.check_definition({"buckets": [twice, twice]})
    with pytest.raises(SegmentError, match=r"buckets\[0\].condition"):
        segmentations.check_definition({"buckets": [{"name": "a", "condition": {"kind": "?"}}]})


# -- lifecycle ----------------------------------------------------------------------------------
def logged(ws: Workspace) -> list[dict[str, Any]]:
    return [
        msgspec.json.decode(rec.payload)
        for _, rec in ws.log.read(0, 1000)
        if rec.event == lifecycle.EVENT
    ]


def test_lifecycle_stages_and_every_transition_on_the_log(world):
    first = lifecycle.refresh_lifecycle(world, AS_OF)
    assert first["distribution"] == {
        "new_not_activated": 2,
        "retained": 2,
        "silent": 1,
        "lost": 1,
    }
    assert members(world, "lifecycle", "silent") == bitmaps.from_keys([2])
    assert first["transitions"] == [] and logged(world) == []  # a first placement moves nobody
    later = datetime(2024, 8, 1, tzinfo=UTC)  # 1 and 6 fall silent, 2 is lost
    second = lifecycle.refresh_lifecycle(world, later)
    assert second["transitions"] == [
        {"from": "retained", "to": "silent", "count": 2},
        {"from": "silent", "to": "lost", "count": 1},
    ]
    events = logged(world)
    moves = sorted((e["properties"]["person"], e["properties"]["to"]) for e in events)
    assert moves == [(1, "silent"), (2, "lost"), (6, "silent")]
    assert {e["userId"] for e in events} == {"person:1", "person:2", "person:6"}
    assert all(e["timestamp"].startswith("2024-08-01") for e in events)
    summary = lifecycle.summary(world)
    assert summary["distribution"]["silent"] == 2
    assert summary["matrix"][1][2] == 2  # retained -> silent
    # a repeated refresh at the same instant adds nothing
    lifecycle.refresh_lifecycle(world, later)
    assert len(logged(world)) == 3


def test_lifecycle_thresholds_are_configurable(world):
    lifecycle.configure(world, retained_days=7, activation_events=["order_paid"])
    stages = lifecycle.compute_stages(world, AS_OF, lifecycle.definition(world))
    assert stages["retained"] == bitmaps.from_keys([6])  # login 5 days ago
    assert stages["silent"] == bitmaps.from_keys([1, 2])
    assert stages["new_not_activated"] == bitmaps.from_keys([3, 4, 5])  # hotels don't count now
    with pytest.raises(ValueError):
        lifecycle.configure(world, retained_days=90)


def test_aarrr_funnel(world):
    out = {s["stage"]: s["persons"] for s in funnel.funnel(world, AS_OF)["stages"]}
    assert out == {"acquisition": 6, "activation": 4, "retention": 1, "revenue": 1, "referral": 0}


# -- audiences: static lists --------------------------------------------------------------------
def test_static_upload_and_export(world):
    audiences.create_audience(world, "vip_list", None, mode="static")
    report = audiences.upload(world, "vip_list", "person_key\n2\n6\nnope\n\n99999\n")
    assert report.persons == 2 and report.unresolved == 2 and report.rows == 4  # 99999: nobody
    text = audiences.export_csv(world, "vip_list", ["gender", "age"])
    assert text.splitlines() == ["person_key,gender,age", "2,f,35", "6,f,60"]
    audiences.upload(world, "vip_list", "1\n", replace=False)
    assert members(world, "vip_list") == bitmaps.from_keys([1, 2, 6])
    assert bitmaps.bitmap_count(world, InSegment(segment="vip_list")) == 3
    with pytest.raises(SegmentError, match="unknown attribute"):
        audiences.export_csv(world, "vip_list", ["prise"])


def test_a_dynamic_audience_refreshes_and_overlaps(world):
    audiences.create_audience(world, "gold", HasTag(tag="vip", values=["gold"]))
    audiences.refresh_audience(world, "gold", AS_OF)
    audiences.create_audience(world, "any_vip", HasTag(tag="vip"))
    audiences.refresh_audience(world, "any_vip", AS_OF)
    a, b = members(world, "gold"), members(world, "any_vip")
    assert audiences.overlap(a, b) == {
        "a": 2,
        "b": 3,
        "both": 2,
        "only_a": 0,
        "only_b": 1,
        "jaccard": 0.6667,
    }
    with pytest.raises(SegmentError, match="dynamic"):
        audiences.upload(world, "gold", "1\n")


# -- the API ------------------------------------------------------------------------------------
def test_the_segments_api(world, client, admin_headers):
    h = admin_headers
    gold = {"kind": "tag", "tag": "vip", "values": ["gold"]}
    r = client.post("/api/segments/size", json={"condition": gold}, headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == 2 and body["bitmap_only"] and body["ms"] < 50
    assert body["sample"][0] == {"person_key": 1, "url": "/persons/1"}
    r = client.post(
        "/api/segments/size",
        json={"condition": gold, "previous": {"kind": "tag", "tag": "vip"}},
        headers=h,
    )
    assert r.json()["overlap"]["only_b"] == 1
    bad = client.post("/api/segments/size", json={"condition": {"kind": "tag"}}, headers=h)
    assert bad.status_code == 422
    r = client.post("/api/segments/size", json={"condition": 'has tag vip = "gold"'}, headers=h)
    assert r.json()["size"] == 2  # the text form too
    r = client.post("/api/segments/size", json={"condition": "has tagg vip"}, headers=h)
    assert r.status_code == 422 and "line 1" in r.json()["detail"]["path"]

    r = client.post("/api/segments", json={"name": "gold", "condition": gold}, headers=h)
    assert r.status_code == 201, r.text
    assert (
        client.post(
            "/api/segments", json={"name": "gold", "condition": gold}, headers=h
        ).status_code
        == 409
    )
    assert client.post("/api/segments/gold/refresh", headers=h).json()["size"] == 2
    r = client.get("/api/segments/gold/members?limit=1", headers=h).json()
    assert r["size"] == 2 and r["members"] == [{"person_key": 1, "url": "/persons/1"}]
    r = client.get("/api/segments/gold/export.csv?attributes=gender", headers=h)
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines() == ["person_key,gender", "1,m", "6,f"]
    patched = client.patch("/api/segments/gold", json={"description": "top tier"}, headers=h)
    assert patched.json()["description"] == "top tier"
    assert [s["name"] for s in client.get("/api/segments", headers=h).json()] == ["gold"]

    client.post("/api/segments", json={"name": "list", "mode": "static"}, headers=h)
    up = client.post("/api/segments/list/upload", content=b"person_key\n3\n4\n", headers=h)
    assert up.json()["persons"] == 2
    assert client.get("/api/segments/list", headers=h).json()["size"] == 2

    assert client.delete("/api/segments/gold", headers=h).status_code == 204
    assert client.get("/api/segments/gold", headers=h).status_code == 404
    assert bitmaps.bitmap_count(world, InSegment(segment="gold")) is None

    r = client.post("/api/lifecycle/refresh?as_of=2024-06-30T12:00:00Z", headers=h)
    assert r.json()["distribution"]["retained"] == 2
    assert client.get("/api/lifecycle", headers=h).json()["distribution"]["lost"] == 1
    f = client.get("/api/funnel?as_of=2024-06-30T12:00:00Z", headers=h).json()
    assert f["stages"][1] == {
        "stage": "activation",
        "persons": 4,
        "of_previous": 0.6667,
        "of_acquired": 0.6667,
    }
    assert client.get("/api/segments", headers={}).status_code == 401


def test_the_mece_api(world, client, admin_headers):
    needs_batch_compiler()
    h = admin_headers
    body = {"name": "gender_age", "kind": "segmentation", "definition": gender_age()}
    assert client.post("/api/segments", json=body, headers=h).status_code == 201
    r = client.get("/api/segments/gender_age/mece?as_of=2024-06-30T12:00:00Z", headers=h)
    assert r.json()["ok"] is True


def test_stream_changes_to_an_audience_reach_members_index_and_size(world):
    audiences.create_audience(world, "gold_live", HasTag(tag="vip", values=["gold"]))
    before = audiences.refresh_audience(world, "gold_live", AS_OF)
    inside = list(members(world, "gold_live"))
    size = change_members(world, "gold_live", BitMap([999_999]), BitMap([inside[0]]), AS_OF)
    assert size == before
    assert members(world, "gold_live") == BitMap([*inside[1:], 999_999])
    assert bitmaps.bitmap_count(world, InSegment(segment="gold_live")) == before
    with world.warehouse.connect() as con:
        sm = con.table("segment_members")
        rows = sm.filter(sm.segment == "gold_live").person_key.to_pyarrow().to_pylist()
    assert sorted(rows) == sorted([*inside[1:], 999_999])


# -- size over time ------------------------------------------------------------------------------
def test_audience_size_over_time_keeps_a_point_a_minute(world, client, admin_headers):
    from datetime import timedelta

    audiences.create_audience(world, "gold_t", HasTag(tag="vip", values=["gold"]))
    audiences.refresh_audience(world, "gold_t", AS_OF)  # persons 1 and 6
    # live changes less than a minute after the last point update it (no row per event)
    change_members(world, "gold_t", BitMap([101]), BitMap(), AS_OF + timedelta(seconds=10))
    change_members(world, "gold_t", BitMap([102]), BitMap(), AS_OF + timedelta(seconds=50))
    change_members(world, "gold_t", BitMap(), BitMap([1]), AS_OF + timedelta(seconds=70))
    audiences.refresh_audience(world, "gold_t", AS_OF + timedelta(hours=1))  # back to 1 and 6

    r = client.get("/api/segments/gold_t/sizes", headers=admin_headers)
    assert r.status_code == 200, r.text
    t0 = AS_OF.isoformat()
    t70 = (AS_OF + timedelta(seconds=70)).isoformat()
    t1h = (AS_OF + timedelta(hours=1)).isoformat()
    assert r.json() == {
        "segment": "gold_t",
        "kind": "audience",
        "series": [{"bucket": None, "points": [[t0, 4], [t70, 3], [t1h, 2]]}],
    }
    since = client.get(
        "/api/segments/gold_t/sizes", params={"since": t70}, headers=admin_headers
    ).json()
    assert since["series"][0]["points"] == [[t70, 3], [t1h, 2]]
    missing = client.get("/api/segments/nope/sizes", headers=admin_headers)
    assert missing.status_code == 404


def test_segmentation_sizes_per_bucket_and_the_chart(world, client):
    from rapport.accounts import Role
    from test_console import as_role

    needs_batch_compiler()
    segmentations.create_segmentation(world, "gender_age", gender_age())
    segmentations.refresh_segmentation(world, "gender_age", AS_OF)
    series = {
        s["bucket"]: s["points"]
        for s in client.get("/api/segments/gender_age/sizes", headers=_admin(world)).json()[
            "series"
        ]
    }
    assert series[None] == [[AS_OF.isoformat(), 6]]
    assert series["f_under_40"] == [[AS_OF.isoformat(), 2]]
    assert set(series) == {None, "m_under_40", "m_40_plus", "f_under_40", "f_40_plus", "other"}

    as_role(client, world, Role.marketer)
    page = client.get("/segments/gender_age")
    assert page.status_code == 200
    assert "Size over time" in page.text and 'id="sizes-chart"' in page.text
    assert "f_under_40" in page.text.split('id="sizes-chart"')[1].split(">")[0]  # a line each


def _admin(ws: Workspace) -> dict[str, str]:
    from rapport import accounts

    return {"Authorization": f"Bearer {accounts.create_token(ws.db, accounts.Role.admin, 't')}"}
