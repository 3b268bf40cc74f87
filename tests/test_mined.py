"""Mined tags on a small generated world with planted signals: hotel lovers, fridge browsers,
frequent and fading visitors. Events are written straight into the warehouse."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pyarrow as pa
import pytest

from rapport.settings import load_settings
from rapport.tags import mined, store
from rapport.tags.definitions import TagIn, create_tag
from rapport.warehouse import layout
from rapport.workspace import Workspace

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)
Row = tuple[int, str, datetime, dict[str, Any]]


def write_events(ws: Workspace, rows: list[Row]) -> None:
    """(person, event, ts, properties) track events into ``events``."""
    n = len(rows)
    ts = pa.array([t for _, _, t, _ in rows], pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": ["app"] * n,
            "type": ["track"] * n,
            "event": [e for _, e, _, _ in rows],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": ts,
            "day": pa.array([t.date() for _, _, t, _ in rows], pa.date32()),
            "received_at": ts,
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([p for p, _, _, _ in rows], pa.int64()),
            "properties": [json.dumps(p) for _, _, _, p in rows],
            "context": ["{}"] * n,
        }
    )
    t = ibis.memtable(table)
    with ws.warehouse.connect() as con:
        con.insert("events", t.select(**{c: t[c].cast(d) for c, d in layout.EVENTS.items()}))


def generate(seed: int = 7) -> tuple[list[Row], dict[str, list[int]]]:
    """~400 persons over 150 days. Each visits on a day with probability ``rate`` (so whoever
    visits rarely is likely to be silent for 30 days: churn is predictable from the past)."""
    rng = random.Random(seed)
    rows: list[Row] = []
    groups: dict[str, list[int]] = {"hotel": [], "fridge": [], "browser": [], "buyer": []}
    order = 0
    for person in range(400):
        kind = ["hotel", "fridge", "browser", "browser", "buyer"][person % 5]
        groups[kind].append(person)
        rate = rng.choice([0.01, 0.02, 0.04, 0.15, 0.3, 0.5])
        for day in range(150, 0, -1):
            if rng.random() >= rate:
                continue
            t = AS_OF - timedelta(days=day) + timedelta(hours=rng.uniform(0, 23))
            if kind == "hotel":
                rows.append((person, "search", t, {"query": "上海酒店"}))
                rows.append((person, "book_hotel", t, {"item_id": "H1", "price": 800, "nights": 2}))
                if rng.random() < 0.5:
                    order += 1
                    props = {"order_id": f"O{order}", "category": "hotel", "amount": 1600.0}
                    rows.append((person, "order_paid", t, props))
            elif kind == "fridge":
                for _ in range(rng.randint(2, 5)):
                    rows.append((person, "view_product", t, {"category": "fridge", "price": 5000}))
            else:
                for _ in range(rng.randint(1, 4)):
                    category = rng.choice(["tv", "washer", "kitchen", "fridge"])
                    rows.append((person, "view_product", t, {"category": category, "price": 999}))
                if kind == "buyer" or rng.random() < 0.1:
                    order += 1
                    amount = rng.choice([99.0, 999.0, 2999.0])
                    props = {"order_id": f"O{order}", "category": "tv", "amount": amount}
                    rows.append((person, "add_to_cart", t, {"category": "tv"}))
                    rows.append((person, "order_paid", t, props))
                    if rng.random() < 0.5:  # the same order, tracked by the app as well
                        rows.append((person, "order_paid", t, {"order_id": f"O{order}"}))
    return rows, groups


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, dict]]:
    home = tmp_path_factory.mktemp("mined") / "home"
    ws = Workspace(load_settings(home=home))
    ws.init()
    rows, groups = generate()
    write_events(ws, rows)
    assert mined.define_mined_tags(ws) == list(mined.DEFAULT_TAGS)
    yield ws, groups
    ws.close()


@pytest.fixture
def empty(tmp_path: Path, world: tuple[Workspace, dict]) -> Iterator[Workspace]:
    """A workspace with the mined tags defined and no events."""
    home = tmp_path / "home"
    shutil.copytree(world[0].settings.home, home)
    ws = Workspace(load_settings(home=home))
    with ws.warehouse.connect() as con:
        con.raw_sql("DELETE FROM events")
    yield ws
    ws.close()


def values(ws: Workspace, tag: str) -> dict[int, list[str]]:
    with ws.warehouse.connect() as con:
        t = con.table("tag_values")
        rows = t.filter(t.tag == tag).to_pyarrow().to_pylist()
    found: dict[int, list[str]] = {}
    for r in rows:
        found.setdefault(r["person_key"], []).append(r["value"])
    return found


def test_quintiles_share_scores_on_ties_and_spread_1_to_5():
    assert mined.quintile(np.arange(10.0)).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    tied = mined.quintile(np.array([1.0, 1, 1, 1, 1, 1, 2, 3, 9, 9]))
    assert tied.tolist()[:6] == [2] * 6 and tied[-1] == tied[-2] == 5


def test_value_tiers():
    assert mined.value_tier(5, 5, 100) == "champions"
    assert mined.value_tier(5, 1, 3) == "new"
    assert mined.value_tier(1, 4, 100) == "at risk"
    assert mined.value_tier(3, 4, 100) == "loyal"
    assert mined.value_tier(1, 1, 100) == "hibernating"
    assert mined.value_tier(4, 2, 100) == "promising"


def test_features_count_an_order_recorded_twice_once(world):
    ws, _ = world
    frame = mined.load_features(ws, AS_OF, mined.FeatureSpec(share_categories=("hotel",)))
    rows, _ = generate()
    paid = [r for r in rows if r[1] == "order_paid" and r[2] > AS_OF - timedelta(days=180)]
    orders = Counter(r[0] for r in paid if "amount" in r[3])
    spend = Counter()
    for person, _, _, props in paid:
        spend[person] += props.get("amount", 0.0)
    got = dict(zip(frame.person_key.tolist(), frame["orders"].tolist(), strict=True))
    got_spend = dict(zip(frame.person_key.tolist(), frame["spend"].tolist(), strict=True))
    assert {p: n for p, n in got.items() if n} == orders
    assert all(got_spend[p] == pytest.approx(s) for p, s in spend.items())


def test_rfm_scores_and_tiers(world):
    ws, groups = world
    run = mined.compute_mined(ws, "rfm_score", AS_OF)
    scores = values(ws, "rfm_score")
    assert run.persons == len(scores) > 100
    assert all(
        len(v) == 1 and len(v[0]) == 3 and set(v[0]) <= set("12345") for v in scores.values()
    )
    assert not set(scores) & set(groups["fridge"])  # never bought: no score

    tiers = mined.compute_mined(ws, "value_tier", AS_OF)
    assert set(tiers.distribution) <= set(mined.TIERS)
    assert {"champions", "hibernating"} <= set(tiers.distribution)
    frame = mined.load_features(ws, AS_OF)
    tier = {p: v[0] for p, v in values(ws, "value_tier").items()}
    score = {p: v[0] for p, v in scores.items()}
    busiest = frame.person_key[np.argsort(-frame["orders"])[:5]]
    assert all(tier[int(p)] == "champions" and score[int(p)][:2] == "55" for p in busiest)
    assert sum(tiers.detail["tiers"].values()) == tiers.persons


def test_clusters_find_hotel_lovers_and_explain_themselves(world):
    ws, groups = world
    run = mined.compute_mined(ws, "cluster", AS_OF)
    detail = run.detail
    assert 3 <= detail["k"] <= 8 and set(detail["silhouette"]) <= {str(k) for k in range(3, 9)}
    names = [c["name"] for c in detail["clusters"]]
    assert len(set(names)) == len(names) == detail["k"]
    assert sum(c["size"] for c in detail["clusters"]) == run.persons
    cluster = {p: v[0] for p, v in values(ws, "cluster").items()}
    # hotel lovers end up in clusters named after hotels (busy and quiet ones may differ)
    hotel = Counter(cluster[p] for p in groups["hotel"] if p in cluster)
    assert sum(n for name, n in hotel.items() if "hotel" in name) >= 0.9 * hotel.total()
    hotel_names = {name for name in names if "hotel" in name}
    in_hotel = [p for p, name in cluster.items() if name in hotel_names]
    assert len(set(in_hotel) & set(groups["hotel"])) >= 0.9 * len(in_hotel)
    for profile in detail["clusters"]:
        if profile["name"] in hotel_names:
            assert profile["means"]["share_hotel"] > 3 * detail["overall"]["share_hotel"]
            assert profile["stands_out"][0]["feature"] in {"share_hotel", "bookings"}
    fridge = Counter(cluster[p] for p in groups["fridge"] if p in cluster)
    assert "fridge" in fridge.most_common(1)[0][0]


def test_churn_risk_is_predicted_with_a_reported_auc(world):
    ws, _ = world
    run = mined.compute_mined(ws, "churn_risk", AS_OF)
    assert run.detail["auc"] > 0.7
    assert run.detail["train"] > run.detail["test"] > 30
    assert set(run.distribution) <= {"low", "medium", "high"} and "high" in run.distribution
    sample = run.detail["sample"]
    assert sample and sample[0]["probability"] >= sample[-1]["probability"]
    latest = store.last_run(ws.db, "churn_risk")
    assert latest is not None and latest["status"] == "done"
    assert latest["detail"]["auc"] == run.detail["auc"]
    # the frequent visitors are low risk; the long silent ones are not
    frame = mined.load_features(ws, AS_OF, mined.FeatureSpec(behaviour_days=60))
    risk = {p: v[0] for p, v in values(ws, "churn_risk").items()}
    keys = frame.person_key.tolist()
    busy = [p for p, d in zip(keys, frame["active_days"], strict=True) if d >= 20]
    quiet = [p for p, s in zip(keys, frame["days_since_seen"], strict=True) if 40 < s < 60]
    assert busy and quiet
    assert Counter(risk[p] for p in busy).most_common(1)[0][0] == "low"
    quiet_risk = Counter(risk[p] for p in quiet)
    assert quiet_risk["low"] < 0.1 * quiet_risk.total()
    assert quiet_risk["high"] / quiet_risk.total() > Counter(risk[p] for p in busy)["high"] / len(
        busy
    )


def test_category_preference_is_multi_valued_and_clear(world):
    ws, groups = world
    mined.compute_mined(ws, "prefers_category", AS_OF)
    prefers = values(ws, "prefers_category")
    hotel = [p for p in groups["hotel"] if p in prefers]
    assert len(hotel) > 0.7 * len(groups["hotel"])
    assert all("hotel" in prefers[p] for p in hotel)
    fridge = [p for p in groups["fridge"] if p in prefers]
    assert all(prefers[p] == ["fridge"] for p in fridge) and len(fridge) > 50
    # browsers view four categories alike: fridges (everyone's favourite) are no preference
    # of theirs, the rarer washers and kitchens may be, both at once
    browsers = [prefers.get(p, []) for p in groups["browser"]]
    assert not any("hotel" in v for v in browsers)
    assert sum("fridge" in v for v in browsers) < 0.1 * len(browsers)
    assert any(len(v) > 1 for v in browsers)


def test_a_model_without_history_fails_its_run_with_the_reason(empty):
    write_events(empty, [(1, "view_product", AS_OF - timedelta(days=1), {"category": "tv"})])
    with pytest.raises(ValueError, match="not enough history"):
        mined.compute_mined(empty, "churn_risk", AS_OF)
    failed = store.last_run(empty.db, "churn_risk", status=None)
    assert failed is not None and failed["status"] == "failed"
    assert "not enough history" in failed["error"]


def test_unknown_models_and_other_kinds_are_refused(empty):
    create_tag(empty.db, TagIn(name="oracle", kind="mined", definition={"model": "oracle"}))
    with pytest.raises(ValueError, match="unknown model 'oracle'"):
        mined.compute_mined(empty, "oracle", AS_OF)
    with pytest.raises(KeyError):
        mined.compute_mined(empty, "no_such_tag", AS_OF)
    assert mined.define_mined_tags(empty) == []  # already there: left alone


def test_tag_pages_explain_the_clusters_and_show_the_auc(world):
    """The console renders what the models stored: cluster profiles and the churn AUC."""
    from fastapi.testclient import TestClient

    from rapport import accounts
    from rapport.web.app import create_app

    ws, _ = world
    mined.compute_mined(ws, "cluster", AS_OF)
    mined.compute_mined(ws, "churn_risk", AS_OF)
    accounts.create_user(ws.db, "analyst", "pw-analyst-1", accounts.Role.marketer)
    with TestClient(create_app(workspace=ws)) as client:
        login = client.get("/login")
        token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post(
            "/login",
            data={"username": "analyst", "password": "pw-analyst-1", "csrf_token": token},
        )
        page = client.get("/tags/cluster")
        assert page.status_code == 200 and "What sets each cluster apart" in page.text
        assert "share_hotel" in page.text
        churn = client.get("/tags/churn_risk")
        assert churn.status_code == 200 and "Held-out AUC" in churn.text
