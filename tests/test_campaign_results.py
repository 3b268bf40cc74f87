"""Campaign results on hand-built data with exact answers: the plan, outbox messages in every
status, goal events placed on the edges of the attribution window, link clicks and coupons,
all in the real metadata DB and warehouse."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from conftest import copy_home
from rapport import catalog
from rapport.accounts import Role
from rapport.campaigns import CampaignIn, create_campaign
from rapport.campaigns.results import results, uplift
from rapport.db.tables import (
    campaign_recipients,
    coupon_codes,
    coupons,
    link_clicks,
    links,
    outbox,
)
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace
from test_console import as_role

SENT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
WEEK = timedelta(days=7)
SECOND = timedelta(seconds=1)
#: person -> (outbox status, delivered_at); 11 was suppressed by the plan (no message)
MESSAGES = {
    1: ("delivered", SENT + timedelta(hours=1)),
    2: ("delivered", SENT + timedelta(hours=2)),
    3: ("delivered", SENT + timedelta(hours=1)),
    4: ("delivered", SENT + timedelta(hours=1)),
    5: ("delivered", SENT + timedelta(hours=1)),
    6: ("delivered", SENT + timedelta(hours=1)),
    7: ("dead", None),
    8: ("suppressed", None),
    9: ("pending", None),
    10: ("failed", None),
}
HOLDOUT = [101, 102, 103, 104]
#: (person, event, time, amount)
EVENTS = [
    (1, "order_paid", SENT + timedelta(hours=1) + WEEK, 100.0),  # exactly N days in: counts
    (2, "order_paid", SENT + timedelta(hours=2) + WEEK + SECOND, 999.0),  # 1 s late: out
    (3, "order_paid", SENT + timedelta(minutes=30), 999.0),  # before its delivery: out
    (3, "order_paid", SENT + timedelta(hours=1), 999.0),  # at the delivery itself: out
    (4, "order_paid", SENT + timedelta(hours=1, days=1), 50.0),  # day 1
    (4, "order_paid", SENT + timedelta(hours=1, days=2), 25.0),  # same person again
    (5, "view_item", SENT + timedelta(days=1), 999.0),  # not the goal
    (7, "order_paid", SENT + timedelta(days=1), 999.0),  # never delivered: not treated
    (101, "order_paid", SENT + timedelta(days=3), 999.0),  # holdout, day 3
    (102, "order_paid", SENT + WEEK + SECOND, 999.0),  # holdout, 1 s late
    (103, "order_paid", SENT - SECOND, 999.0),  # holdout, before the send
]


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path, dispatcher_in_process=False)


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    """The workspace the API client serves too: an SMS channel and ``order_paid`` declared
    with two numeric properties."""
    spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/"}}
    create_channel(workspace.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    catalog.create_event_type(
        workspace.db,
        catalog.EventTypeBody(
            name="order_paid",
            properties=[
                catalog.PropertyBody(name=name, type=catalog.DataType.number)
                for name in ("amount", "price")
            ],
        ),
    )
    return workspace


def _campaign(ws: Workspace) -> int:
    body = {
        "name": "coupon",
        "goal_event": "order_paid",
        "goal_days": 7,
        "person_keys": [*MESSAGES, 11, *HOLDOUT],
        "channel": "sms",
        "content": {"text": "hello"},
        "cost_per_message": 0.5,
    }
    return int(create_campaign(ws, CampaignIn.model_validate(body), "alice")["id"])


def _events(ws: Workspace, events: list[tuple[int, str, datetime, float]]) -> None:
    n = len(events)
    ts = pa.array([e[2] for e in events], pa.timestamp("us", "UTC"))
    table = pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "source": ["shop"] * n,
            "type": ["track"] * n,
            "event": [e[1] for e in events],
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": ts,
            "day": pa.array([e[2].date() for e in events], pa.date32()),
            "received_at": ts,
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array([e[0] for e in events], pa.int64()),
            "properties": [json.dumps({"amount": e[3], "price": 1.0}) for e in events],
            "context": ["{}"] * n,
        }
    )
    with ws.warehouse.connect() as con:
        typed = table.cast(pa.schema(layout.EVENTS.to_pyarrow()))
        con.insert("events", typed)
        # the declared properties' columns now, before any app starts: adding them later
        # (an ALTER) would race with the app's loader writing ``events``
        ws.warehouse.add_prop_columns(con)


@pytest.fixture
def sent(ws: Workspace) -> int:
    """The campaign's plan and messages, as a send and a dispatcher would have left them."""
    cid = _campaign(ws)
    plan = [{"person_key": p, "role": "send"} for p in MESSAGES]
    plan += [{"person_key": 11, "role": "suppressed", "reason": "unsubscribed"}]
    plan += [{"person_key": p, "role": "holdout"} for p in HOLDOUT]
    msgs = [
        {
            "key": f"campaign:{cid}:{p}",
            "channel": "sms",
            "person_key": p,
            "origin": f"campaign:{cid}",
            "payload": {"text": "hello"},
            "status": status,
            "attempts": 1,
            "next_attempt_at": SENT,
            "created_at": SENT + timedelta(seconds=p - 1),  # the first: the send time
            "queued_at": SENT,
            "delivered_at": at,
        }
        for p, (status, at) in MESSAGES.items()
    ]
    with ws.db.begin() as conn:
        conn.execute(sa.insert(campaign_recipients), [{"campaign_id": cid, **r} for r in plan])
        conn.execute(sa.insert(outbox), msgs)
    _events(ws, EVENTS)
    return cid


def test_counts_by_status_conversions_on_the_window_edges_and_roi(ws, sent):
    r = results(ws, sent)
    assert r["sent_at"] == SENT.isoformat()
    counts = ("planned", "holdout", "planned_suppressed", "sent", "delivered", "failed")
    assert [r[k] for k in counts] == [10, 4, 1, 10, 6, 1]
    assert (r["suppressed"], r["pending"]) == (1, 2)  # pending and failed-to-retry
    # treated: 1 (exactly 7 days after its own delivery) and 4; not 2, 3, 5, 7
    assert (r["converted"], r["treated_rate"]) == (2, 2 / 6)
    # holdout, clock at the send: 101 only
    assert (r["holdout_converted"], r["holdout_rate"]) == (1, 1 / 4)
    assert r["revenue_property"] == "amount"  # declared before price
    assert r["revenue"] == 175.0  # 100 + 50 + 25, converters' goal events in their window
    assert r["cost"] == 4.5  # 9 messages not suppressed × 0.5
    assert r["roi"] == round((175 - 4.5) / 4.5, 4)
    assert r["uplift"]["absolute"] == pytest.approx(2 / 6 - 1 / 4)
    assert r["uplift"]["relative"] == pytest.approx((2 / 6 - 1 / 4) / (1 / 4))


def test_trend_is_cumulative_per_day_since_each_clock(ws, sent):
    trend = results(ws, sent)["trend"]
    assert trend["columns"][:4] == ["day", "treated", "treated_converted", "treated_rate"]
    by_day = {row[0]: (row[2], row[5]) for row in trend["rows"]}
    assert list(by_day) == [1, 2, 3, 4, 5, 6, 7]
    assert by_day == {1: (1, 0), 2: (1, 0), 3: (1, 1), 4: (1, 1), 5: (1, 1), 6: (1, 1), 7: (2, 1)}
    assert trend["rows"][-1][3] == 2 / 6 and trend["rows"][-1][6] == 1 / 4


def test_uplift_interval_on_known_numbers():
    u = uplift(120, 1000, 80, 1000)  # 12 % vs 8 %
    # se = sqrt(.12 × .88 / 1000 + .08 × .92 / 1000) = 0.0133866; × 1.959964 = 0.0262372
    assert u["absolute"] == pytest.approx(0.04)
    assert u["ci_low"] == pytest.approx(0.0137628, abs=1e-7)
    assert u["ci_high"] == pytest.approx(0.0662372, abs=1e-7)
    assert u["relative"] == pytest.approx(0.5)
    assert uplift(0, 0, 1, 10)["absolute"] is None
    assert uplift(3, 10, 0, 10)["relative"] is None  # no holdout conversions: no ratio


def test_link_clicks_and_coupons_count_distinct_persons(ws, sent):
    at = SENT + timedelta(hours=3)
    with ws.db.begin() as conn:
        link = conn.execute(
            sa.insert(links).values(campaign_id=sent, target="https://shop.example/")
        ).inserted_primary_key[0]
        conn.execute(
            sa.insert(link_clicks),
            [
                {"campaign_id": sent, "person_key": p, "link_id": link, "kind": k, "at": at}
                for p, k in [(1, "click"), (1, "click"), (2, "scan"), (3, "click"), (4, "register")]
            ],
        )
        coupon = conn.execute(
            sa.insert(coupons).values(name="ten", kind="generated", created_at=at)
        ).inserted_primary_key[0]
        conn.execute(
            sa.insert(coupon_codes),
            [
                {"code": f"C{p}", "coupon_id": coupon, "campaign_id": sent, "person_key": p}
                | {"issued_at": at, "redeemed_at": at if p == 4 else None}
                for p in (1, 2, 4)
            ],
        )
    r = results(ws, sent)
    assert (r["opened"], r["clicked"], r["scanned"], r["registered"]) == (4, 2, 1, 1)
    assert (r["coupons_issued"], r["coupons_redeemed"]) == (3, 1)


def test_api_json_csv_and_console_card(ws, sent, client, admin_headers):
    got = client.get(f"/api/campaigns/{sent}/results", headers=admin_headers)
    assert got.status_code == 200 and got.json()["converted"] == 2
    csv = client.get("/api/campaigns/coupon/results.csv", headers=admin_headers)
    lines = csv.text.splitlines()
    assert csv.headers["content-type"].startswith("text/csv")
    assert lines[0].startswith("day,treated,treated_converted")
    assert lines[-1] == f"7,6,2,{2 / 6},4,1,0.25"
    as_role(client, ws, Role.viewer)
    page = client.get(f"/campaigns/{sent}")
    assert page.status_code == 200
    assert 'id="results"' in page.text and 'id="trend-chart"' in page.text
    assert "Uplift vs holdout" in page.text and "+8.33 points" in page.text


def test_an_unsent_campaign_has_empty_results_and_no_card(ws, client):
    cid = _campaign(ws)
    r = results(ws, cid)
    assert (r["sent"], r["converted"], r["sent_at"], r["roi"]) == (0, 0, None, None)
    assert r["uplift"]["absolute"] is None
    as_role(client, ws, Role.viewer)
    page = client.get(f"/campaigns/{cid}")
    assert page.status_code == 200 and 'id="plan"' in page.text
    assert 'id="results"' not in page.text


def test_the_report_is_cached_until_a_delivery_changes_it_or_fresh(ws, sent, client, admin_headers):
    """A page view serves the computed report again (same ``computed_at``) while the outbox
    rows are unchanged; a delivery recomputes it, and so does ``?fresh=1``."""
    url = f"/api/campaigns/{sent}/results"
    first = client.get(url, headers=admin_headers).json()
    assert client.get(url, headers=admin_headers).json()["computed_at"] == first["computed_at"]
    _events(ws, [(5, "order_paid", SENT + timedelta(days=2), 10.0)])  # a conversion
    assert client.get(url, headers=admin_headers).json()["converted"] == 2  # cached: not yet
    fresh = client.get(url, params={"fresh": 1}, headers=admin_headers).json()
    assert fresh["converted"] == 3 and fresh["computed_at"] > first["computed_at"]
    with ws.db.begin() as conn:  # the pending message is delivered: the counts move
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.person_key == 9)
            .values(status="delivered", delivered_at=SENT + timedelta(hours=3))
        )
    moved = client.get(url, headers=admin_headers).json()
    assert (moved["delivered"], moved["pending"]) == (7, 1)
    as_role(client, ws, Role.viewer)
    page = client.get(f"/campaigns/{sent}")
    assert f"Computed at {moved['computed_at'][11:16]} UTC" in page.text
    assert f'href="/campaigns/{sent}?fresh=1#results"' in page.text
