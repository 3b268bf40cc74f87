"""Tags on hand-made events and profiles: rollups, each kind, history, the API and console."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest

from conftest import copy_home
from rapport.accounts import Role
from rapport.catalog import import_plan
from rapport.settings import Settings
from rapport.tags import rollups, store
from rapport.tags.compute import compute_all, compute_tag, compute_tags
from rapport.tags.definitions import TagError, TagIn, TagPatch, create_tag, update_tag
from rapport.warehouse import layout
from rapport.workspace import Workspace
from test_console import as_role

PLAN = """
events:
  order_paid:
    kind: user
    properties:
      amount: number
      category: string
  book_hotel:
    kind: user
    properties:
      price: number
  view_product:
    kind: user
    properties:
      category: string
      price: number
user_properties:
  birthday: string
  gender: string
  city: string
"""

AS_OF = datetime(2024, 6, 30, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def template_home(tmp_path_factory: pytest.TempPathFactory, migrated_home: Path) -> Path:
    """A migrated metadata DB with the plan and an empty warehouse, made once (copied per test)."""
    ws = Workspace(copy_home(migrated_home, tmp_path_factory.mktemp("template")))
    import_plan(ws.db, PLAN)
    ws.close()
    return ws.settings.home


@pytest.fixture
def settings(tmp_path: Path, template_home: Path) -> Settings:
    return copy_home(template_home, tmp_path)


def days_ago(n: float, hour: int = 0) -> datetime:
    return AS_OF - timedelta(days=n) + timedelta(hours=hour)


_seq = iter(range(10**9))


def write_events(
    ws: Workspace,
    rows: Sequence[tuple[int | None, str, dict[str, Any], datetime]],
    received: datetime | None = None,
) -> None:
    """(person, event, properties, ts) track events into ``events``."""
    n = len(rows)
    ts = [t for *_, t in rows]
    table = pa.table(
        {
            "event_id": [f"e{next(_seq)}" for _ in rows],
            "source": ["test"] * n,
            "type": ["track"] * n,
            "event": [e for _, e, _, _ in rows],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for t in ts], pa.date32()),
            "received_at": pa.array([received or datetime.now(UTC)] * n, pa.timestamp("us", "UTC")),
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([p for p, *_ in rows], pa.int64()),
            "properties": [json.dumps(p, ensure_ascii=False) for _, _, p, _ in rows],
            "context": ["{}"] * n,
        }
    )
    t = ibis.memtable(table)
    with ws.warehouse.connect() as con:
        con.insert("events", t.select(**{c: t[c].cast(d) for c, d in layout.EVENTS.items()}))


def write_profiles(ws: Workspace, rows: dict[int, dict[str, str | None]]) -> None:
    columns = sorted({k for r in rows.values() for k in r})
    table = pa.table(
        {
            "person_key": pa.array(list(rows), pa.int64()),
            **{c: pa.array([r.get(c) for r in rows.values()], pa.string()) for c in columns},
            "updated_at": pa.array([AS_OF] * len(rows), pa.timestamp("us", "UTC")),
        }
    )
    with ws.warehouse.connect() as con:
        con.create_table("profiles", table, overwrite=True)


def tag(ws: Workspace, name: str, kind: str, definition: dict[str, Any], **kw: Any) -> None:
    create_tag(
        ws.db, TagIn.model_validate({"name": name, "kind": kind, "definition": definition, **kw})
    )


def values(ws: Workspace, name: str) -> dict[int, str | list[str]]:
    with ws.warehouse.connect() as con:
        t = con.table("tag_values")
        rows = t.filter(t.tag == name).order_by(["person_key", "value"]).to_pyarrow().to_pylist()
    out: dict[int, Any] = {}
    for r in rows:
        out[r["person_key"]] = (
            r["value"] if r["person_key"] not in out else [*[out[r["person_key"]]], r["value"]]
        )
    return out


def daily(ws: Workspace) -> list[tuple[Any, ...]]:
    with ws.warehouse.connect() as con:
        t = con.table("person_daily")
        rows = t.order_by(["person_key", "day", "event"]).to_pyarrow().to_pylist()
    return [
        (r["person_key"], r["day"].isoformat(), r["event"], r["n"], r.get("sum_amount"))
        for r in rows
    ]


# -- rollups -------------------------------------------------------------------------------------
def test_rollups_count_and_sum_per_person_day_and_event(workspace):
    write_events(
        workspace,
        [
            (1, "order_paid", {"amount": 100}, days_ago(1)),
            (1, "order_paid", {"amount": 50.5}, days_ago(1, hour=3)),
            (1, "order_paid", {}, days_ago(1, hour=4)),  # no amount: counted, not summed
            (1, "view_product", {"category": "tv"}, days_ago(1)),
            (2, "order_paid", {"amount": 10}, days_ago(2)),
            (None, "order_paid", {"amount": 999}, days_ago(2)),  # not resolved yet
            (-1, "order_paid", {"amount": 999}, days_ago(2)),  # not a person
        ],
    )
    report = rollups.refresh(workspace)
    assert report.full
    d1, d2 = days_ago(1).date().isoformat(), days_ago(2).date().isoformat()
    assert daily(workspace) == [
        (1, d1, "order_paid", 3, 150.5),
        (1, d1, "view_product", 1, None),
        (2, d2, "order_paid", 1, 10.0),
    ]


def test_rollups_recompute_only_changed_days_and_log_changed_persons(workspace):
    write_events(workspace, [(1, "order_paid", {"amount": 5}, days_ago(10))])
    write_events(workspace, [(2, "order_paid", {"amount": 7}, days_ago(3))])
    first = rollups.refresh(workspace)
    nothing = rollups.refresh(workspace)
    assert (nothing.full, nothing.days, nothing.persons_changed) == (False, 0, 0)

    write_events(workspace, [(2, "order_paid", {"amount": 1}, days_ago(3))])
    again = rollups.refresh(workspace)
    assert (again.full, again.days, again.persons_changed) == (False, 1, 1)
    assert (2, days_ago(3).date().isoformat(), "order_paid", 2, 8.0) in daily(workspace)
    assert (1, days_ago(10).date().isoformat(), "order_paid", 1, 5.0) in daily(workspace)
    with workspace.warehouse.connect() as con:
        changed = rollups.changed_keys(con, first.refresh).to_pyarrow().to_pylist()
    assert changed == [{"person_key": 2}]


def test_rollups_pick_up_events_resolved_after_they_arrived(workspace):
    write_events(workspace, [(None, "order_paid", {"amount": 5}, days_ago(4))])
    rollups.refresh(workspace)
    assert daily(workspace) == []
    with workspace.warehouse.connect() as con:  # the resolver sets the person later
        con.raw_sql("UPDATE events SET person_key = 7")
    report = rollups.refresh(workspace)
    assert not report.full and report.days == 1
    assert daily(workspace) == [(7, days_ago(4).date().isoformat(), "order_paid", 1, 5.0)]


def test_rollups_follow_identity_merges(workspace):
    write_events(
        workspace,
        [
            (1, "order_paid", {"amount": 5}, days_ago(4)),
            (2, "order_paid", {"amount": 7}, days_ago(4)),
        ],
    )
    rollups.refresh(workspace)
    with workspace.warehouse.connect() as con:  # what resolution does when 2 merges into 1
        con.raw_sql("UPDATE events SET person_key = 1 WHERE person_key = 2")
        con.raw_sql(
            'INSERT INTO identity_history ("at", action, person_id, other_id) '
            "VALUES (now(), 'merge', 1, 2)"
        )
    report = rollups.refresh(workspace)
    assert (report.full, report.days, report.persons_changed) == (False, 1, 2)
    assert daily(workspace) == [(1, days_ago(4).date().isoformat(), "order_paid", 2, 12.0)]


# -- attribute tags ------------------------------------------------------------------------------
AGE_BANDS = [
    {"label": "<25", "max": 25},
    {"label": "25-34", "min": 25, "max": 35},
    {"label": "35+", "min": 35},
]


def test_attribute_age_band_from_messy_birthdays_and_maps(workspace):
    write_profiles(
        workspace,
        {
            1: {"birthday": "1990-05-12", "gender": "男", "city": "上海"},
            2: {"birthday": "1990/7/1", "gender": "F", "city": "成都"},  # 33: birthday not yet
            3: {"birthday": "20050101", "gender": "1", "city": "拉萨"},
            4: {"birthday": "12/05/1980", "gender": "女", "city": None},
            5: {"birthday": "1999年6月30日", "gender": "?", "city": "北京"},
            6: {"birthday": "not a date", "gender": "", "city": ""},
        },
    )
    tag(
        workspace,
        "age_band",
        "attribute",
        {"field": "birthday", "transform": "age_band", "bands": AGE_BANDS},
    )
    gender_map = {
        "男": "male",
        "M": "male",
        "1": "male",
        "女": "female",
        "F": "female",
        "0": "female",
    }
    tag(workspace, "gender", "attribute", {"field": "gender", "map": gender_map})
    tiers = {"上海": "tier1", "北京": "tier1", "成都": "new tier1"}
    tag(workspace, "city_tier", "attribute", {"field": "city", "map": tiers, "default": "other"})
    for name in ("age_band", "gender", "city_tier"):
        compute_tag(workspace, name, AS_OF)
    assert values(workspace, "age_band") == {1: "25-34", 2: "25-34", 3: "<25", 4: "35+", 5: "25-34"}
    assert values(workspace, "gender") == {1: "male", 2: "female", 3: "male", 4: "female"}
    assert values(workspace, "city_tier") == {1: "tier1", 2: "new tier1", 3: "other", 5: "tier1"}


def test_unknown_profile_field_fails_the_run_with_the_reason(workspace):
    write_profiles(workspace, {1: {"city": "上海"}})
    tag(workspace, "bad", "attribute", {"field": "cty"})
    with pytest.raises(TagError, match="unknown profile attribute `cty`"):
        compute_tag(workspace, "bad", AS_OF)
    (run,) = store.runs(workspace.db, "bad")
    assert run["status"] == "failed" and "cty" in run["error"]


# -- statistical tags ----------------------------------------------------------------------------
def orders(ws: Workspace) -> None:
    write_events(
        ws,
        [
            (1, "order_paid", {"amount": 100, "category": "tv"}, days_ago(1)),
            (1, "order_paid", {"amount": 300, "category": "fridge"}, days_ago(20)),
            (1, "order_paid", {"amount": 50, "category": "fridge"}, days_ago(60)),
            (2, "order_paid", {"amount": 10, "category": "tv"}, days_ago(45)),
            (3, "view_product", {"category": "tv"}, days_ago(2)),
            (1, "order_paid", {"amount": 5000}, AS_OF + timedelta(days=1)),  # after as_of
        ],
    )


def test_statistical_tags_from_rollups_and_events(workspace):
    orders(workspace)
    stat = {"event": "order_paid"}
    tag(workspace, "orders_30d", "statistical", {**stat, "agg": "count", "window_days": 30})
    tag(
        workspace,
        "spend_90d",
        "statistical",
        {**stat, "agg": "sum", "property": "amount", "window_days": 90},
    )
    tag(workspace, "avg_order", "statistical", {**stat, "agg": "avg", "property": "amount"})
    tag(
        workspace,
        "max_order",
        "statistical",
        {**stat, "agg": "max", "property": "amount", "window_days": 90},
    )
    tag(workspace, "last_purchase", "statistical", {**stat, "agg": "last_date"})
    tag(
        workspace,
        "fav_category",
        "statistical",
        {**stat, "agg": "top_value", "property": "category"},
    )
    bands = [{"label": "light", "max": 100}, {"label": "heavy", "min": 100}]
    tag(
        workspace,
        "spender",
        "statistical",
        {**stat, "agg": "sum", "property": "amount", "window_days": 90, "bands": bands},
    )
    reports = compute_all(workspace, AS_OF)
    assert all("error" not in r for r in reports), reports
    assert values(workspace, "orders_30d") == {1: "2"}
    assert values(workspace, "spend_90d") == {1: "450", 2: "10"}
    assert values(workspace, "avg_order") == {1: "150", 2: "10"}
    assert values(workspace, "max_order") == {1: "300", 2: "10"}
    assert values(workspace, "last_purchase") == {
        1: days_ago(1).date().isoformat(),
        2: days_ago(45).date().isoformat(),
    }
    assert values(workspace, "fav_category") == {1: "fridge", 2: "tv"}
    assert values(workspace, "spender") == {1: "heavy", 2: "light"}


def test_statistical_tag_is_incremental(workspace):
    orders(workspace)
    tag(workspace, "orders_30d", "statistical", {"event": "order_paid", "window_days": 30})
    first = compute_tag(workspace, "orders_30d", AS_OF)
    assert first["incremental"] is False
    write_events(workspace, [(2, "order_paid", {"amount": 1}, days_ago(0))])
    second = compute_tag(workspace, "orders_30d", AS_OF)
    assert second["incremental"] is True and second["persons_recomputed"] == 1
    assert values(workspace, "orders_30d") == {1: "2", 2: "1"}
    # 35 days later every order has left the window: both lose their value
    later = compute_tag(workspace, "orders_30d", AS_OF + timedelta(days=35))
    assert later["incremental"] is True and later["persons_recomputed"] == 2
    assert values(workspace, "orders_30d") == {}
    # a changed definition recomputes everyone
    update_tag(
        workspace.db, "orders_30d", TagPatch(definition={"event": "order_paid", "window_days": 90})
    )
    assert compute_tag(workspace, "orders_30d", AS_OF)["incremental"] is False
    assert values(workspace, "orders_30d") == {1: "3", 2: "2"}


def held(ws: Workspace, name: str) -> list[tuple[int, str, bool]]:
    """The tag's history: (person, value, still held), sorted."""
    with ws.warehouse.connect() as con:
        h = con.table("tag_history")
        rows = h.filter(h.tag == name).to_pyarrow().to_pylist()
    return sorted((r["person_key"], r["value"], r["to_run"] is None) for r in rows)


def test_compute_tags_together_writes_what_each_alone_writes(workspace):
    """Tags computed in one pass (the rollup-based ones share one query, diff and write) get
    the values, history and run report each gets computed on its own, full and incremental;
    a broken definition fails its own run only."""
    orders(workspace)
    write_events(workspace, [(3, "view_product", {"price": 20}, days_ago(40))])
    bands = [{"label": "1", "max": 2}, {"label": "2+", "min": 2}]
    defs: dict[str, dict[str, Any]] = {
        "orders_30d": {"event": "order_paid", "window_days": 30, "bands": bands},
        "spend_90d": {"event": "order_paid", "agg": "sum", "property": "amount", "window_days": 90},
        "avg_order": {"event": "order_paid", "agg": "avg", "property": "amount"},
        "views_7d": {"event": "view_product", "window_days": 7},
        "view_price_90d": {
            "event": "view_product",
            "agg": "sum",
            "property": "price",
            "window_days": 90,
        },
        "max_order": {"event": "order_paid", "agg": "max", "property": "amount"},  # events
    }
    for name, d in defs.items():
        for copy in ("together", "alone"):
            tag(workspace, f"{name}_{copy}", "statistical", d)
    compared = ("rows", "persons", "distribution", "incremental", "persons_recomputed")
    for at in (AS_OF, AS_OF + timedelta(days=35)):
        together = compute_tags(workspace, [f"{n}_together" for n in defs], at)
        for name, report in zip(defs, together, strict=True):
            alone = compute_tag(workspace, f"{name}_alone", at)
            assert [report.get(k) for k in compared] == [alone.get(k) for k in compared], name
            assert values(workspace, f"{name}_together") == values(workspace, f"{name}_alone")
            assert held(workspace, f"{name}_together") == held(workspace, f"{name}_alone")
        if at == AS_OF:
            assert values(workspace, "orders_30d_together") == {1: "2+"}
            assert values(workspace, "spend_90d_together") == {1: "450", 2: "10"}
            assert values(workspace, "view_price_90d_together") == {3: "20"}
            write_events(workspace, [(2, "order_paid", {"amount": 7}, at + timedelta(days=30))])
    assert [r["incremental"] for r in together[:5]] == [True] * 5
    assert values(workspace, "orders_30d_together") == {2: "1"}
    assert held(workspace, "spend_90d_together") == [
        (1, "450", False),
        (1, "5400", True),
        (2, "10", False),
        (2, "17", True),
    ]
    tag(workspace, "bad", "statistical", {"event": "order_paid", "agg": "sum", "property": "x"})
    with pytest.raises(TagError, match="`x`"):
        compute_tags(workspace, ["orders_30d_together", "bad"], AS_OF, full=True)
    assert store.runs(workspace.db, "bad")[0]["status"] == "failed"
    assert store.runs(workspace.db, "orders_30d_together")[0]["status"] == "done"
    assert values(workspace, "orders_30d_together") == {1: "2+"}


def test_unknown_numeric_property_is_named(workspace):
    orders(workspace)
    tag(workspace, "s", "statistical", {"event": "order_paid", "agg": "sum", "property": "amout"})
    with pytest.raises(TagError, match="amout"):
        compute_tag(workspace, "s", AS_OF)


# -- history -------------------------------------------------------------------------------------
def test_history_keeps_each_value_with_the_runs_that_held_it(workspace):
    tag(workspace, "t", "mined", {"model": "manual"})
    write = lambda run, rows: store.write_values(  # noqa: E731
        workspace,
        "t",
        run,
        pa.table({"person_key": [p for p, _ in rows], "value": [v for _, v in rows]}),
    )
    r1 = store.start_run(workspace.db, "t")
    write(r1, [(1, "a"), (2, "a"), (2, "b")])
    r2 = store.start_run(workspace.db, "t")
    write(r2, [(1, "a"), (2, "c")])
    r3 = store.start_run(workspace.db, "t")
    write(r3, [(1, "a"), (2, "c")])
    assert store.person_tags(workspace, 2) == {"t": ["c"]}
    assert store.person_tags(workspace, 1) == {"t": ["a"]}
    hist = [(h["value"], h["from_run"], h["to_run"]) for h in store.tag_history(workspace, 2)]
    assert sorted(hist) == [("a", r1, r2), ("b", r1, r2), ("c", r2, None)]
    assert [(h["value"], h["from_run"], h["to_run"]) for h in store.tag_history(workspace, 1)] == [
        ("a", r1, None)
    ]
    store.finish_run(workspace.db, r3, persons=2, distribution={"a": 1, "c": 1})
    assert store.summary(workspace, "t") == (2, {"a": 1, "c": 1})
    assert (store.last_run(workspace.db, "t") or {})["id"] == r3


def test_definitions_are_checked_with_the_field_named(workspace):
    with pytest.raises(TagError) as err:
        tag(workspace, "x", "statistical", {"event": "order_paid", "agg": "sum"})
    assert err.value.field == "definition" and "property" in err.value.message
    with pytest.raises(TagError) as err:
        tag(
            workspace,
            "x",
            "attribute",
            {"field": "age", "bands": [{"label": "a", "min": 5, "max": 1}]},
        )
    assert err.value.field == "definition.bands.0"
    with pytest.raises(TagError) as err:
        tag(workspace, "x", "rule", {"condition": {"kind": "did", "event": "e", "agg": "sum"}})
    assert err.value.field.startswith("definition.condition")
    body = TagIn(name="x", kind="rule", schedule="daily at 25:00", definition={})
    body.definition = {"condition": {"kind": "tag", "tag": "vip"}}
    with pytest.raises(TagError) as err:
        create_tag(workspace.db, body)
    assert err.value.field == "schedule" and "hour" in err.value.message


# -- rule tags -----------------------------------------------------------------------------------
def test_rule_tag_high_net_worth_seed_example(workspace):
    pytest.importorskip("rapport.conditions.to_ibis")
    from rapport.tags.demo import HIGH_NET_WORTH

    hotel = "book_hotel"
    rows = [(1, hotel, {"price": 2500}, days_ago(i % 29 + 0.5)) for i in range(30)]
    rows += [(2, hotel, {"price": 2500}, days_ago(i % 29 + 0.5)) for i in range(29)]
    rows += [(3, hotel, {"price": 2000 if i == 0 else 3000}, days_ago(1)) for i in range(30)]
    rows += [(4, hotel, {"price": 9000}, days_ago(31 if i == 0 else 2)) for i in range(30)]
    write_events(workspace, rows)
    tag(workspace, "high_net_worth", "rule", {"condition": HIGH_NET_WORTH, "value": "yes"})
    report = compute_tag(workspace, "high_net_worth", AS_OF)
    assert values(workspace, "high_net_worth") == {1: "yes"}
    assert report["distribution"] == {"yes": 1}


# -- API and console -----------------------------------------------------------------------------
@pytest.fixture
def ordered(workspace: Workspace) -> Workspace:
    """The orders written before the app starts (its loader writes ``events`` too: DuckDB
    refuses two transactions altering one table at once)."""
    orders(workspace)
    return workspace


def test_api_create_compute_distribution_delete(ordered, client, workspace, admin_headers):
    body = {
        "name": "orders_90d",
        "kind": "statistical",
        "description": "orders in 90 days",
        "definition": {"event": "order_paid", "agg": "count", "window_days": 90},
    }
    created = client.post("/api/tags", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert client.post("/api/tags", json=body, headers=admin_headers).status_code == 409
    bad = {**body, "name": "bad", "definition": {"event": "order_paid", "window_days": -1}}
    refused = client.post("/api/tags", json=bad, headers=admin_headers)
    assert refused.status_code == 422 and "definition.window_days" in refused.json()["detail"]

    run = client.post(
        "/api/tags/orders_90d/compute", json={"as_of": AS_OF.isoformat()}, headers=admin_headers
    )
    assert run.status_code == 200, run.text
    assert (run.json()["persons"], run.json()["distribution"]) == (2, {"1": 1, "3": 1})
    dist = client.get("/api/tags/orders_90d/distribution", headers=admin_headers).json()
    assert dist == {"persons": 2, "total": 3, "distribution": {"1": 1, "3": 1}}
    listed = client.get("/api/tags", headers=admin_headers).json()
    assert [(t["name"], t["persons"], t["last_run"]["status"]) for t in listed] == [
        ("orders_90d", 2, "done")
    ]
    got = client.get("/api/tags/orders_90d", headers=admin_headers).json()
    assert got["runs"][0]["detail"]["incremental"] is False

    patched = client.patch(
        "/api/tags/orders_90d",
        json={"definition": {"event": "order_paid", "agg": "max"}},
        headers=admin_headers,
    )
    assert patched.status_code == 422 and "property" in patched.json()["detail"]
    assert client.delete("/api/tags/orders_90d", headers=admin_headers).status_code == 204
    assert client.get("/api/tags/orders_90d", headers=admin_headers).status_code == 404
    assert store.person_tags(workspace, 1) == {}


def test_viewers_read_tags_but_cannot_define_them(client, workspace):
    from rapport import accounts

    def bearer(role: accounts.Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {accounts.create_token(workspace.db, role, 't')}"}

    viewer, marketer = bearer(accounts.Role.viewer), bearer(accounts.Role.marketer)
    body = {
        "name": "t",
        "kind": "rule",
        "definition": {"condition": {"kind": "did", "event": "login"}},
    }
    assert client.post("/api/tags", json=body, headers=viewer).status_code == 403
    assert client.post("/api/tags", json=body, headers=marketer).status_code == 201
    assert [t["name"] for t in client.get("/api/tags", headers=viewer).json()] == ["t"]


def test_console_tag_pages(ordered, client, workspace):
    csrf = as_role(client, workspace, Role.marketer)
    created = client.post(
        "/tags",
        data={
            "name": "orders_all",
            "kind": "statistical",
            "description": "every paid order",
            "definition": json.dumps({"event": "order_paid"}),
        },
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert created.status_code == 200 and created.headers["HX-Redirect"] == "/tags/orders_all"
    listing = client.get("/tags")
    assert listing.status_code == 200 and "orders_all" in listing.text and "never" in listing.text
    page = client.get("/tags/orders_all")
    assert "No values yet" in page.text and "Compute now" in page.text
    computed = client.post(
        "/tags/orders_all/compute", headers={"X-CSRF-Token": csrf, "HX-Request": "true"}
    )
    assert computed.status_code == 200, computed.text
    page = client.get("/tags/orders_all")
    assert 'id="tag-distribution"' in page.text and "every paid order" in page.text
    assert "66.7%" in page.text  # 2 of 3 persons have a value
    bad = client.post(
        "/tags/orders_all",
        data={"definition": '{"event": "order_paid", "agg": "nope"}'},
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert bad.status_code == 422 and "definition.agg" in bad.text


# -- manual tags ---------------------------------------------------------------------------------
def test_manual_tag_set_bulk_unset_and_a_run_copies_them(ordered, client, workspace, admin_headers):
    """Values set through the API live in the metadata DB; a run makes them the warehouse's
    values (audiences read those); an unset value is gone after the next run."""
    from rapport.jobs.registry import tag_jobs

    body = {"name": "vip_call", "kind": "manual", "definition": {"values": ["yes", "no"]}}
    created = client.post("/api/tags", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    assert created.json()["schedule"] == "every 5 minutes"  # the default: runs by itself
    assert any(j.key == "tag:vip_call" for j in tag_jobs(workspace))

    put = client.put("/api/tags/vip_call/values/1", json={"value": "yes"}, headers=admin_headers)
    assert put.json() == {"tag": "vip_call", "person_key": 1, "value": "yes"}
    bulk = [{"person_key": 2, "value": "no"}, {"person_key": 3, "value": "yes"}]
    assert client.post("/api/tags/vip_call/values", json=bulk, headers=admin_headers).json() == {
        "tag": "vip_call",
        "set": 2,
    }
    assert values(workspace, "vip_call") == {}  # nothing heavy on set: the next run copies
    run = client.post("/api/tags/vip_call/compute", headers=admin_headers).json()
    assert (run["persons"], run["distribution"]) == (3, {"yes": 2, "no": 1})
    assert values(workspace, "vip_call") == {1: "yes", 2: "no", 3: "yes"}

    gone = client.delete("/api/tags/vip_call/values/2", headers=admin_headers)
    assert gone.status_code == 204
    again = client.delete("/api/tags/vip_call/values/2", headers=admin_headers)
    assert again.status_code == 404 and "has no 'vip_call'" in again.json()["detail"]
    client.put("/api/tags/vip_call/values/1", json={"value": "no"}, headers=admin_headers)
    compute_tag(workspace, "vip_call")
    assert values(workspace, "vip_call") == {1: "no", 3: "yes"}
    assert store.person_tags(workspace, 1) == {"vip_call": ["no"]}
    listed = client.get("/api/tags/vip_call/values", headers=admin_headers).json()
    assert [(v["person_key"], v["value"], v["set_by"]) for v in listed] == [
        (1, "no", "token:test"),
        (3, "yes", "token:test"),
    ]
    # a person the warehouse does not know (yet) may be tagged: they may arrive later
    unknown = client.put(
        "/api/tags/vip_call/values/999", json={"value": "yes"}, headers=admin_headers
    )
    assert unknown.status_code == 200


def test_manual_tag_values_are_checked_with_a_clear_message(workspace, client, admin_headers):
    tag(workspace, "tier", "manual", {"values": ["gold", "silver"]})
    tag(workspace, "score", "manual", {}, value_type="number")
    tag(workspace, "hnw", "rule", {"condition": {"kind": "did", "event": "order_paid"}})
    h = admin_headers
    bad = client.put("/api/tags/tier/values/1", json={"value": "bronze"}, headers=h)
    assert bad.status_code == 422
    assert bad.json()["detail"] == "value: 'bronze' is not one of gold, silver (tag tier)"
    bulk = [{"person_key": 1, "value": "gold"}, {"person_key": 2, "value": "platinum"}]
    refused = client.post("/api/tags/tier/values", json=bulk, headers=h)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("[1] (person 2)")
    assert client.get("/api/tags/tier/values", headers=h).json() == []  # none of the bulk
    nan = client.put("/api/tags/score/values/1", json={"value": "lots"}, headers=h)
    assert nan.json()["detail"] == "value: 'lots' is not a number (tag score)"
    assert (
        client.put("/api/tags/score/values/1", json={"value": 4.5}, headers=h).json()["value"]
        == "4.5"
    )
    rule = client.put("/api/tags/hnw/values/1", json={"value": "yes"}, headers=h)
    assert rule.status_code == 422 and "is a rule tag" in rule.json()["detail"]
    missing = client.put("/api/tags/nope/values/1", json={"value": "yes"}, headers=h)
    assert missing.status_code == 404
    with pytest.raises(TagError, match=r"definition.values.*listed twice"):
        tag(workspace, "dup", "manual", {"values": ["a", "a"]})
    with pytest.raises(TagError, match="one value per person"):
        tag(workspace, "many", "manual", {}, multi=True)


def test_viewers_cannot_set_manual_values(workspace, client):
    from rapport import accounts

    tag(workspace, "flag", "manual", {})
    viewer = {"Authorization": f"Bearer {accounts.create_token(workspace.db, Role.viewer, 't')}"}
    put = client.put("/api/tags/flag/values/1", json={"value": "x"}, headers=viewer)
    assert put.status_code == 403


def test_console_sets_a_manual_value_from_the_tag_page(workspace, client):
    csrf = as_role(client, workspace, Role.marketer)
    hx = {"X-CSRF-Token": csrf, "HX-Request": "true"}
    form = {"name": "called", "kind": "manual", "definition": json.dumps({"values": ["yes"]})}
    assert client.post("/tags", data=form, headers=hx).status_code == 200
    page = client.get("/tags/called")
    assert 'id="manual-values"' in page.text and "every 5 minutes" in page.text
    done = client.post("/tags/called/values", data={"person_key": "7", "value": "yes"}, headers=hx)
    assert done.status_code == 200, done.text
    bad = client.post("/tags/called/values", data={"person_key": "7", "value": "no"}, headers=hx)
    assert bad.status_code == 422 and "is not one of yes" in bad.text
    page = client.get("/tags/called")
    assert 'href="/persons/7"' in page.text and "<td>marketer_user</td>" in page.text
