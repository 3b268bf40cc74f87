"""Benchmark: a campaign's report at 200,000 recipients (issue 6), cold and cached.

Run: ``.venv/bin/pytest -m bench -s bench/campaigns/test_results_bench.py`` (``PERSONS``
scales it). The world is written directly, as a plan, a send and a dispatcher would leave it:
90 % of the persons got a delivered SMS (outbox rows with ``origin = campaign:<id>``), 10 %
are the holdout, and 10 % of everyone paid an order in the warehouse in the week after. The
report is timed without the ``outbox.origin`` index (as before issue 6's fix), with it, and
served from the per-campaign cache (``report``), on the default SQLite metadata DB.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from rapport import catalog
from rapport.campaigns import CampaignIn, create_campaign
from rapport.campaigns.results import report, results
from rapport.db.tables import campaign_recipients, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.settings import load_settings
from rapport.warehouse import layout
from rapport.workspace import Workspace

PERSONS = int(os.environ.get("PERSONS", "200000"))
SENT = datetime(2026, 11, 1, 10, tzinfo=UTC)
pytestmark = pytest.mark.bench


def _world(home: Path) -> tuple[Workspace, int]:
    ws = Workspace(load_settings(home=home))
    ws.init()
    spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/"}}
    create_channel(ws.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    amount = catalog.PropertyBody(name="amount", type=catalog.DataType.number)
    catalog.create_event_type(ws.db, catalog.EventTypeBody(name="order_paid", properties=[amount]))
    keys = list(range(1, PERSONS + 1))
    body = {"name": "big", "goal_event": "order_paid", "person_keys": keys, "channel": "sms",
            "content": {"text": "hi"}, "cost_per_message": 0.05}  # fmt: skip
    cid = int(create_campaign(ws, CampaignIn.model_validate(body), "bench")["id"])
    holdout = set(keys[::10])
    plan = [{"campaign_id": cid, "person_key": p, "role": "holdout" if p in holdout else "send"}
            for p in keys]  # fmt: skip
    msgs = [
        {"key": f"campaign:{cid}:{p}", "channel": "sms", "person_key": p,
         "origin": f"campaign:{cid}", "payload": {"text": "hi"}, "status": "delivered",
         "attempts": 1, "next_attempt_at": SENT, "created_at": SENT, "queued_at": SENT,
         "delivered_at": SENT + timedelta(seconds=p % 600)}
        for p in keys if p not in holdout
    ]  # fmt: skip
    noise = [  # another origin's messages, as a busy outbox has
        {**m, "key": f"lead:{m['person_key']}", "origin": "lead:1", "status": "pending"}
        for m in msgs[: len(msgs) // 2]
    ]
    with ws.db.begin() as conn:
        conn.execute(sa.insert(campaign_recipients), plan)
        conn.execute(sa.insert(outbox), msgs + noise)
    buyers = keys[::10]
    n = len(buyers)
    ts = pa.array([SENT + timedelta(days=1 + p % 6) for p in buyers], pa.timestamp("us", "UTC"))
    events = pa.table(
        {
            "event_id": [f"e{p}" for p in buyers],
            "source": ["shop"] * n,
            "type": ["track"] * n,
            "event": ["order_paid"] * n,
            "user_id": pa.array([None] * n, pa.string()),
            "anonymous_id": pa.array([None] * n, pa.string()),
            "ts": ts,
            "day": pa.array([t.as_py().date() for t in ts], pa.date32()),
            "received_at": ts,
            "log_offset": pa.array([None] * n, pa.int64()),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array(buyers, pa.int64()),
            "properties": [json.dumps({"amount": 100.0}) for _ in buyers],
            "context": ["{}"] * n,
        }
    )
    with ws.warehouse.connect() as con:
        con.insert("events", events.cast(pa.schema(layout.EVENTS.to_pyarrow())))
        ws.warehouse.add_prop_columns(con)
    return ws, cid


def _best(fn: object, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def test_campaign_report_at_200k(tmp_path: Path) -> None:
    ws, cid = _world(tmp_path / "home")
    with ws.db.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_outbox_origin_status"))
    without = _best(lambda: results(ws, cid))
    with ws.db.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_outbox_origin_status ON outbox (origin, status)"))
    indexed = _best(lambda: results(ws, cid))
    report(ws, cid, fresh=True)
    cached = _best(lambda: report(ws, cid), runs=20)
    r = report(ws, cid)
    assert r["delivered"] == PERSONS - len(range(1, PERSONS + 1, 10))
    print(
        f"\ncampaign report, {PERSONS:,} recipients: no origin index {without:.3f} s, "
        f"indexed {indexed:.3f} s, cached {cached * 1000:.1f} ms"
    )
    ws.close()
