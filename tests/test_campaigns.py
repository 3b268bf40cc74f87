"""Campaigns end to end on the real stores: an audience bitmap, profiles in the warehouse,
consents and delivered messages in the metadata DB, the outbox and a dispatcher sending to
a local webhook receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from pyroaring import BitMap

from conftest import copy_home
from rapport import accounts
from rapport.campaigns import (
    CampaignError,
    CampaignForbidden,
    CampaignIn,
    approve,
    create_campaign,
    in_holdout,
    plan,
    preview,
    render_for,
    send,
)
from rapport.db.tables import campaign_recipients, outbox
from rapport.delivery import enqueue, guards
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.segments import audiences
from rapport.segments.bitmaps import put_segment
from rapport.settings import Settings
from rapport.workspace import Workspace
from test_delivery import Receiver, run_until, statuses

PERSONS = list(range(1, 201))


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(
        migrated_home, tmp_path, delivery_poll_interval=0.05, dispatcher_in_process=False
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture
def ws(settings: Settings, receiver: Receiver) -> Iterator[Workspace]:
    """Audience ``fans`` = persons 1..200 with a nickname; person 999 has none; an SMS
    channel to the receiver."""
    workspace = Workspace(settings)
    audiences.create_audience(workspace, "fans", None, mode="static")
    put_segment(workspace, "fans", {None: BitMap(PERSONS)})
    names = [f"fan{p}" for p in PERSONS] + [None]
    zones = ["Asia/Shanghai" if p % 2 else None for p in PERSONS] + [None]
    profiles = pa.table(
        {
            "person_key": pa.array([*PERSONS, 999], pa.int64()),
            "nickname": pa.array(names, pa.string()),
            "timezone": pa.array(zones, pa.string()),
        }
    )
    with workspace.warehouse.connect() as con:
        con.create_table("profiles", profiles, overwrite=True)
    spec = {"name": "sms", "kind": "sms", "config": {"url": receiver.url}, "allow_private": True}
    create_channel(workspace.db, ChannelSpec.model_validate(spec))
    yield workspace
    workspace.close()


def campaign(ws: Workspace, **changes: Any) -> int:
    body: dict[str, Any] = {
        "name": "coupon",
        "goal_event": "order_paid",
        "audience": "fans",
        "channel": "sms",
        "content": {"text": "{{ nickname }}, your coupon is waiting"},
        "holdout_share": 0.1,
        "cost_per_message": 0.05,
    }
    body.update(changes)
    return int(create_campaign(ws, CampaignIn.model_validate(body), "alice")["id"])


def roles(ws: Workspace, cid: int) -> dict[int, tuple[str, str | None]]:
    with ws.db.connect() as conn:
        rows = conn.execute(
            sa.select(
                campaign_recipients.c.person_key,
                campaign_recipients.c.role,
                campaign_recipients.c.reason,
            ).where(campaign_recipients.c.campaign_id == cid)
        )
        return {p: (r, why) for p, r, why in rows}


def test_holdout_is_deterministic_and_near_its_share():
    persons = range(10_000)
    first = [p for p in persons if in_holdout(7, p, 0.1)]
    assert first == [p for p in persons if in_holdout(7, p, 0.1)]
    assert 0.08 <= len(first) / 10_000 <= 0.12
    other = {p for p in persons if in_holdout(8, p, 0.1)}
    assert other != set(first)  # another campaign, another control group


def test_plan_counts_holdout_unsubscribed_and_capped(ws, receiver):
    cid = campaign(ws, content={"text": "{{ nickname|default('friend') }}, hello"})
    held = {p for p in PERSONS if in_holdout(cid, p, 0.1)}
    out = [p for p in PERSONS if p not in held][:2]  # two persons who are not held out
    guards.set_consent(ws.db, out[0], "sms", "unsubscribed", "test")
    with ws.db.begin() as conn:  # the other got an SMS today
        enqueue(conn, channel="sms", payload={"text": "hi"}, key="earlier", person_key=out[1])
    run_until(ws, lambda: statuses(ws) == {"delivered": 1})
    ws.settings = replace(ws.settings, delivery_frequency_caps="sms:1/day")

    summary = plan(ws, cid, "alice")
    assert summary["audience"] == 200 and summary["holdout"] == len(held)
    assert summary["suppressed_by_reason"] == {
        "the person unsubscribed from sms": 1,
        "frequency cap sms:1/day reached for this person": 1,
    }
    assert summary["to_send"] == 200 - len(held) - 2
    assert summary["estimated_cost"] == round(summary["to_send"] * 0.05, 2)
    assert summary["samples"][0]["message"]["text"].endswith(", hello")
    stored = roles(ws, cid)
    assert stored[out[0]] == ("suppressed", "the person unsubscribed from sms")
    assert {p for p, (r, _) in stored.items() if r == "holdout"} == held
    assert plan(ws, cid, "alice")["holdout"] == len(held)  # planned again: same control group
    assert {p for p, (r, _) in roles(ws, cid).items() if r == "holdout"} == held


def test_templates_refuse_internals_and_name_a_missing_variable(ws):
    with pytest.raises(CampaignError, match="may not use the attribute '__class__'"):
        campaign(ws, content={"text": "{{ ''.__class__ }}"})
    with pytest.raises(CampaignError, match="__class__"):  # the live preview renders unsaved
        render_for({"text": "{{ nickname.__class__ }}"}, 1, {"nickname": "x"})
    cid = campaign(ws, person_keys=[999], audience=None, holdout_share=0)
    with pytest.raises(CampaignError, match=r"'nickname' is undefined \(person 999\)") as err:
        plan(ws, cid, "alice")
    assert err.value.field == "content.text"
    shown = preview(ws, campaign(ws, name="ok", person_keys=[4], audience=None), 4)
    assert shown["message"] == {"text": "fan4, your coupon is waiting"}


def test_a_large_plan_needs_a_second_user(ws):
    ws.settings = replace(ws.settings, campaign_approval_threshold=100)
    cid = campaign(ws)
    assert plan(ws, cid, "alice")["needs_approval"]
    with pytest.raises(CampaignError, match="a second user must approve"):
        send(ws, cid)
    with pytest.raises(CampaignForbidden, match="alice planned this campaign"):
        approve(ws, cid, "alice")
    assert approve(ws, cid, "bob")["status"] == "approved"


def test_approval_over_the_api_is_403_for_the_planner(ws):
    from fastapi.testclient import TestClient

    from rapport.web.app import create_app

    ws.settings = replace(ws.settings, campaign_approval_threshold=100)
    headers = {
        who: {"Authorization": f"Bearer {accounts.create_token(ws.db, 'marketer', who)}"}
        for who in ("alice", "bob")
    }
    body = {"name": "api", "audience": "fans", "channel": "sms", "content": {"text": "hi"}}
    with TestClient(create_app(workspace=ws)) as client:
        made = client.post("/api/campaigns", json=body, headers=headers["alice"])
        assert made.status_code == 201, made.text
        bad = client.post("/api/campaigns", json={**body, "channel": "fax"}, headers=headers["bob"])
        assert bad.status_code == 422 and bad.json()["field"] == "channel"
        cid = made.json()["id"]
        planned = client.post(f"/api/campaigns/{cid}/plan", headers=headers["alice"]).json()
        assert planned["needs_approval"] and planned["to_send"] > 100
        refused = client.post(f"/api/campaigns/{cid}/approve", headers=headers["alice"])
        assert refused.status_code == 403
        assert "another user must approve" in refused.json()["detail"]
        ok = client.post(f"/api/campaigns/{cid}/approve", headers=headers["bob"])
        assert ok.status_code == 200 and ok.json()["approved_by"] == "token:bob"
        shown = client.get(f"/api/campaigns/{cid}/preview?person=5", headers=headers["bob"])
        assert shown.json()["message"] == {"text": "hi"}


def test_send_is_idempotent_and_the_dispatcher_delivers(ws, receiver):
    cid = campaign(ws, audience=None, person_keys=[1, 2, 4, 5, 6, 7, 8], holdout_share=0)
    summary = plan(ws, cid, "alice")
    assert summary["to_send"] == 7
    assert send(ws, cid) == {"enqueued": 7, "processed": 7, "total": 7, "occurrence": ""}
    with ws.db.begin() as conn:  # as if the send had stopped midway: run it again
        conn.execute(sa.text("UPDATE campaigns SET status = 'sending'"))
    assert send(ws, cid)["enqueued"] == 0
    with ws.db.connect() as conn:
        keys = conn.execute(sa.select(outbox.c.key, outbox.c.origin)).all()
    assert sorted(k for k, _ in keys) == sorted(
        f"campaign:{cid}:{p}" for p in [1, 2, 4, 5, 6, 7, 8]
    )
    assert {o for _, o in keys} == {f"campaign:{cid}"}

    run_until(ws, lambda: statuses(ws) == {"delivered": 7})
    bodies = {r["key"]: r["body"] for r in receiver.requests}
    assert len(receiver.applied) == 7
    first = json.loads(bodies[f"campaign:{cid}:1"])
    assert first["text"] == "fan1, your coupon is waiting"
    assert first["timezone"] == "Asia/Shanghai" and first["person_key"] == 1


def test_scheduled_and_recurring_campaigns_run_as_jobs(ws):
    from rapport.jobs.runner import run_now

    soon = datetime.now(UTC) + timedelta(hours=1)
    once = campaign(
        ws,
        name="once",
        person_keys=[1, 2],
        audience=None,
        holdout_share=0,
        schedule=f"at {soon.isoformat()}",
    )
    daily = campaign(
        ws, name="daily", person_keys=[4], audience=None, holdout_share=0, schedule="daily at 09:00"
    )
    plan(ws, once, "alice")
    plan(ws, daily, "alice")
    early = run_now(ws, "campaign:once", now=datetime.now(UTC))
    assert "skipped" in early["result"]
    done = run_now(ws, "campaign:once", now=soon + timedelta(minutes=1))
    assert done["result"]["enqueued"] == 2
    for day in (7, 8):
        run_now(ws, "campaign:daily", now=datetime(2026, 12, day, 1, tzinfo=UTC))
    with ws.db.connect() as conn:
        keys = set(conn.execute(sa.select(outbox.c.key)).scalars())
    assert keys == {
        f"campaign:{once}:1",
        f"campaign:{once}:2",
        f"campaign:{daily}:20261207T0100:4",
        f"campaign:{daily}:20261208T0100:4",
    }


def test_plan_and_send_on_postgresql(pg_url, tmp_path, receiver):
    """The metadata DB on PostgreSQL: bulk plan rows and bulk enqueue, still idempotent."""
    from rapport.settings import load_settings

    pg = Workspace(load_settings(home=tmp_path / "pg-home", database_url=pg_url))
    pg.init()
    try:
        spec = {"name": "sms", "kind": "sms", "config": {"url": receiver.url}}
        create_channel(pg.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
        cid = campaign(pg, audience=None, person_keys=list(range(1, 101)), content={"t": "hi"})
        summary = plan(pg, cid, "alice")
        assert send(pg, cid)["enqueued"] == summary["to_send"] > 80
        with pg.db.begin() as conn:
            conn.execute(sa.text("UPDATE campaigns SET status = 'sending'"))
        assert send(pg, cid)["enqueued"] == 0
        assert statuses(pg) == {"pending": summary["to_send"]}
    finally:
        pg.close()


def test_cli_plans_refuses_self_approval_and_sends(ws, monkeypatch):
    from typer.testing import CliRunner

    from rapport.campaigns.cli import cli
    from rapport.settings import get_settings

    cid = campaign(ws, audience=None, person_keys=[1, 2, 4])
    monkeypatch.setenv("RAPPORT_HOME", str(ws.settings.home))
    monkeypatch.setenv("RAPPORT_CAMPAIGN_APPROVAL_THRESHOLD", "1")
    get_settings.cache_clear()
    try:
        run = CliRunner().invoke
        planned = run(cli, ["plan", "coupon", "--as", "alice"])
        assert planned.exit_code == 0 and json.loads(planned.stdout)["needs_approval"]
        refused = run(cli, ["approve", str(cid), "--as", "alice"])
        assert refused.exit_code == 2 and "another user must approve" in refused.stderr
        assert run(cli, ["approve", "coupon", "--as", "bob"]).exit_code == 0
        sent = run(cli, ["send", "coupon"])
        assert json.loads(sent.stdout)["enqueued"] == json.loads(planned.stdout)["to_send"]
    finally:
        get_settings.cache_clear()
