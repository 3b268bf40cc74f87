"""Recommendations on a hand-built shop where the right answers are known."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest

from conftest import copy_home
from rapport import accounts
from rapport.recommend import Model, build
from rapport.recommend.build import last_runs, read
from rapport.recommend.evaluate import evaluate
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace

NOW = datetime(2026, 3, 1, tzinfo=UTC)
_ids = count()

ITEMS = {
    "A": ("camera", 3000.0, {}),
    "B": ("camera", 200.0, {}),  # the memory card everyone buys with camera A
    "C": ("camera", 900.0, {}),
    "D": ("kitchen", 300.0, {}),
    "MILK": ("grocery", 12.0, {}),
    "X": ("book", 50.0, {}),
    "Y": ("book", 55.0, {}),
    "Z": ("toy", 80.0, {}),
    "W": ("toy", 90.0, {}),
    "F1": ("fridge", 1000.0, {}),
    "F2": ("fridge", 2000.0, {}),
    "F3": ("fridge", 3000.0, {}),
    "TV": ("tv", 4000.0, {"accessories": ["MOUNT"]}),
    "MOUNT": ("tv", 150.0, {}),
}


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


def write_events(ws: Workspace, rows: list[tuple[int, str, str, datetime]]) -> None:
    """(person, event, item, ts) into ``events``, the item in the JSON properties."""
    n = len(rows)
    ts = [r[3] for r in rows]
    table = pa.table(
        {
            "event_id": [f"e{next(_ids)}" for _ in rows],
            "source": ["test"] * n,
            "type": ["track"] * n,
            "event": [r[1] for r in rows],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for t in ts], pa.date32()),
            "received_at": pa.array(ts, pa.timestamp("us", "UTC")),
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([r[0] for r in rows], pa.int64()),
            "properties": [json.dumps({"item_id": r[2]}) for r in rows],
            "context": ["{}"] * n,
        }
    )
    t = ibis.memtable(table)
    with ws.warehouse.connect() as con:
        con.insert("events", t.select(**{c: t[c].cast(d) for c, d in layout.EVENTS.items()}))


def write_items(ws: Workspace) -> None:
    rows: list[dict[str, Any]] = [
        {
            "item_key": f"product:{item}:test",
            "item_type": "product",
            "item_id": item,
            "source": "test",
            "properties": json.dumps({"category": cat, "price": price, "name": item, **extra}),
            "fingerprint": item,
            "updated_at": NOW,
            "import_run_id": None,
        }
        for item, (cat, price, extra) in ITEMS.items()
    ]
    t = ibis.memtable(pa.Table.from_pylist(rows))
    with ws.warehouse.connect() as con:
        con.insert("items", t.select(**{c: t[c].cast(d) for c, d in layout.ITEMS.items()}))


def shop() -> list[tuple[int, str, str, datetime]]:
    rows: list[tuple[int, str, str, datetime]] = []
    for p in range(1, 7):  # A and B always bought together
        rows += [(p, "order_paid", "A", ago(40 + p)), (p, "order_paid", "B", ago(40 + p))]
    for p in range(7, 11):  # C alone, D alone: no rule towards them from A
        rows += [(p, "order_paid", "C", ago(30)), (p + 4, "order_paid", "D", ago(30))]
    rows += [(20, "order_paid", "A", ago(5))]  # bought A, not yet B
    rows += [(30, "order_paid", "MILK", ago(d)) for d in (36, 29, 22, 15, 8)]  # every 7 days
    rows += [(31, "order_paid", "MILK", ago(d)) for d in (16, 9, 2)]  # bought 2 days ago
    for p in range(40, 50):  # X and Y viewed together, Z and W together
        rows += [(p, "view_product", "X", ago(10)), (p, "view_product", "Y", ago(9))]
        rows += [(p + 10, "view_product", "Z", ago(10)), (p + 10, "view_product", "W", ago(9))]
    rows += [(60, "view_product", "X", ago(1))]
    rows += [(70, "view_product", "F1", ago(3))]
    rows += [(80, "order_paid", "TV", ago(3))]
    return rows


@pytest.fixture
def built(workspace: Workspace) -> Iterator[Model]:
    write_items(workspace)
    write_events(workspace, shop())
    build(workspace.warehouse, until=NOW)
    data = read(workspace.warehouse)
    assert data is not None
    yield Model(data)


def ids(model: Model, kind: str, person: int) -> list[str]:
    return [r.item_id for r in model.recommend(kind, person, 10, at=NOW)]


def test_cross_sell_offers_what_is_always_bought_together(built: Model) -> None:
    recs = built.recommend("cross_sell", 20, at=NOW)
    assert recs[0].item_id == "B"
    assert "often bought with A" in recs[0].reason
    assert "C" not in ids(built, "cross_sell", 20)  # independent of A: lift 1 or less


def test_cross_sell_offers_accessories_from_item_attributes(built: Model) -> None:
    recs = built.recommend("cross_sell", 80, at=NOW)
    assert [(r.item_id, r.reason) for r in recs][:1] == [("MOUNT", "goes with TV")]


def test_repurchase_when_the_persons_cycle_is_due(built: Model) -> None:
    recs = built.recommend("repurchase", 30, at=NOW)
    assert [r.item_id for r in recs] == ["MILK"]
    assert recs[0].reason == "last bought 8 days ago; your usual interval is 7 days"
    assert ids(built, "repurchase", 31) == []  # bought 2 days ago: not due
    assert ids(built, "repurchase", 20) == []  # A bought once, nobody rebuys it


def test_guess_you_like_follows_the_item_neighbours(built: Model) -> None:
    recs = built.recommend("guess_you_like", 60, at=NOW)
    assert recs[0].item_id == "Y"
    assert recs[0].reason.startswith("similar to X")
    assert recs[0].score > recs[1].score  # the rest is popularity filling up the list
    assert "Z" not in {r.item_id for r in recs if r.score > 0}
    assert built.neighbours["Z"][0][0] == "W"


def test_guess_you_like_does_not_offer_what_was_just_bought(built: Model) -> None:
    assert "A" not in ids(built, "guess_you_like", 20)
    assert "B" in ids(built, "guess_you_like", 20)


def test_up_sell_goes_up_one_price_tier_first(built: Model) -> None:
    recs = built.recommend("up_sell", 70, at=NOW)
    assert [r.item_id for r in recs] == ["F2", "F3"]
    assert recs[0].reason == "a step up from F1 (1,000 to 2,000)"


def test_item_based_kinds_work_for_one_item(built: Model) -> None:
    assert [r.item_id for r in built.recommend("cross_sell", item="A")] == ["B"]
    assert built.recommend("guess_you_like", item="X")[0].item_id == "Y"


def test_evaluate_scores_against_later_behaviour(workspace: Workspace) -> None:
    write_items(workspace)
    write_events(workspace, [*shop(), (20, "order_paid", "B", ago(0.5))])
    report = evaluate(workspace.warehouse, test_days=2)
    by_kind = {r["kind"]: r for r in report["results"]}
    assert by_kind["cross_sell"]["persons"] == 1  # person 20, who bought B after the split
    assert by_kind["cross_sell"]["recall"] == 1.0
    assert by_kind["cross_sell"]["precision"] == pytest.approx(0.1)
    assert last_runs(workspace.warehouse)["evaluate"]["report"]["test_days"] == 2


def token(ws: Workspace, role: accounts.Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {accounts.create_token(ws.db, role, 'test')}"}


def test_api_needs_a_token_and_a_model(client: Any, workspace: Workspace) -> None:
    assert client.get("/api/recommend/cross_sell?person=20").status_code == 401
    viewer = token(workspace, accounts.Role.viewer)
    answer = client.get("/api/recommend/cross_sell?person=20", headers=viewer)
    assert answer.status_code == 503
    assert "rapport recommend build" in answer.json()["detail"]


def test_api_serves_each_kind(client: Any, workspace: Workspace, built: Model) -> None:
    viewer = token(workspace, accounts.Role.viewer)
    answer = client.get("/api/recommend/cross_sell?person=20&n=1", headers=viewer)
    assert answer.status_code == 200
    body = answer.json()
    assert body["person"] == 20
    assert [(i["item_id"], i["category"]) for i in body["items"]] == [("B", "camera")]
    assert body["items"][0]["reason"] == "often bought with A (lift 2.6)"  # (6/7) / (6/18 buyers)
    item = client.get("/api/recommend/up_sell?item=F1", headers=viewer).json()
    assert [i["item_id"] for i in item["items"]] == ["F2", "F3"]
    assert client.get("/api/recommend/best?person=20", headers=viewer).status_code == 404
    assert client.get("/api/recommend/up_sell", headers=viewer).status_code == 422
    assert client.get("/api/recommend/up_sell?person=999999", headers=viewer).status_code == 404


def test_console_page_shows_the_build_the_evaluation_and_a_persons_lists(
    client: Any, workspace: Workspace
) -> None:
    from test_console import as_role

    write_items(workspace)
    write_events(workspace, [*shop(), (20, "order_paid", "B", ago(0.5))])
    build(workspace.warehouse, until=ago(1))  # before person 20 bought B
    evaluate(workspace.warehouse, test_days=2)
    as_role(client, workspace, accounts.Role.viewer)
    page = " ".join(client.get("/recommendations?person=20").text.split())
    assert 'href="/recommendations"' in page
    assert (
        "14 items, 6 item neighbours, 2 association rules" in page and 'id="rec-eval-table"' in page
    )
    assert 'data-kind="cross_sell"' in page and "often bought with A" in page
    missing = client.get("/recommendations?person=nobody").text
    assert "a person key or an identifier as type:value" in missing


def test_the_scheduler_rebuilds_the_model(workspace: Workspace) -> None:
    from rapport.jobs.registry import find

    write_items(workspace)
    job = find(workspace, "recommend")
    assert job is not None and job.schedule == "daily at 03:00"
    assert job.run(workspace, NOW)["items"] == len(ITEMS)
    assert last_runs(workspace.warehouse)["build"]["report"]["items"] == len(ITEMS)
