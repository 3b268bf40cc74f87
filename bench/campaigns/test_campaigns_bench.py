"""Benchmark: plan, enqueue and deliver a campaign to 1 M persons (issue 6).

Run: ``.venv/bin/pytest -m bench -s bench/campaigns`` (``PERSONS`` scales it,
``BENCH_DELIVER`` the sample delivered). The audience
is every person, written to the bitmap index as a refresh would; profiles (``nickname``,
``timezone``) are in the warehouse; 1 % of the persons unsubscribed from SMS and a frequency
cap is set, so the plan runs the guards' consent and cap queries for everyone. The plan
(holdout hash, guards, per-person rows inserted in bulk) and the send (render each message,
``enqueue`` into the outbox in chunks) are timed apart, on the default SQLite metadata DB.
Then a dispatcher in this process delivers the first ``BENCH_DELIVER`` messages of the outbox
(send-time guards, one HTTP POST each, the outcome recorded) to the delivery benchmark's
receiver (``bench/delivery/receiver.py``, its own process) standing in for the SMS gateway.
SMS requests carry no webhook signature, so the receiver counts requests, not verified ones.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from rapport.campaigns import CampaignIn, create_campaign, plan, send
from rapport.db.tables import consents, outbox
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.delivery.dispatcher import Dispatcher
from rapport.segments.bitmaps import from_keys, put_segment
from rapport.segments.store import insert_segment
from rapport.settings import load_settings
from rapport.workspace import Workspace

PERSONS = int(os.environ.get("PERSONS", "1000000"))
DELIVER = int(os.environ.get("BENCH_DELIVER", "100000"))
RECEIVER = Path(__file__).parent.parent / "delivery" / "receiver.py"
pytestmark = pytest.mark.bench


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _world(home: Path, port: int) -> Workspace:
    ws = Workspace(load_settings(home=home, delivery_frequency_caps="sms:1/day"))
    ws.init()
    keys = np.arange(1, PERSONS + 1, dtype=np.int64)
    insert_segment(ws, "everyone", "audience", {"condition": None}, mode="static")
    put_segment(ws, "everyone", {None: from_keys(keys)})
    profiles = pa.table(
        {
            "person_key": pa.array(keys),
            "nickname": pa.array([f"fan{k}" for k in keys], pa.string()),
            "timezone": pa.array(["Asia/Shanghai"] * PERSONS, pa.string()),
        }
    )
    with ws.warehouse.connect() as con:
        con.create_table("profiles", profiles, overwrite=True)
    rows = [
        {"person_key": int(k), "channel": "sms", "status": "unsubscribed", "source": "bench"}
        for k in keys[::100]
    ]
    with ws.db.begin() as conn:
        conn.execute(sa.insert(consents).values(at=sa.func.current_timestamp()), rows)
    spec = {"name": "sms", "kind": "sms", "config": {"url": f"http://127.0.0.1:{port}/sms"}}
    create_channel(ws.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    return ws


def _deliver(ws: Workspace, n: int) -> int:
    """Dispatch batch after batch until ``n`` messages went (or the outbox is empty)."""

    async def run() -> int:
        settings = replace(ws.settings, delivery_batch=1000, delivery_concurrency=64)
        dispatcher = Dispatcher(ws.db, settings)
        done = 0
        while done < n and (claimed := await dispatcher.run_once()):
            done += claimed
        await dispatcher.aclose()
        return done

    return asyncio.run(run())


def _requests(port: int) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
        return int(json.load(answer)["requests"])


@pytest.fixture
def receiver() -> Iterator[int]:
    """The delivery benchmark's receiver on a free port (its own process)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(RECEIVER), str(port), "unused"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    yield port
    proc.terminate()
    proc.wait(10)


def test_plan_enqueue_and_deliver_a_million(tmp_path: Path, receiver: int) -> None:
    ws = _world(tmp_path / "home", receiver)
    body = {
        "name": "bench",
        "audience": "everyone",
        "channel": "sms",
        "content": {"text": "{{ nickname }}, your coupon expires Friday"},
        "cost_per_message": 0.05,
    }
    cid = create_campaign(ws, CampaignIn.model_validate(body), "alice")["id"]
    ws.settings = replace(ws.settings, campaign_approval_threshold=PERSONS)  # one user here

    t0 = time.perf_counter()
    summary = plan(ws, cid, "alice")
    planned = time.perf_counter() - t0
    t0 = time.perf_counter()
    progress = send(ws, cid)
    sent = time.perf_counter() - t0

    assert summary["audience"] == PERSONS
    assert 0 < summary["suppressed"] <= len(range(1, PERSONS + 1, 100))
    assert progress["enqueued"] == summary["to_send"]
    print(
        f"\n{PERSONS:,} persons: plan {planned:.1f} s = {PERSONS / planned:,.0f} persons/s "
        f"(holdout {summary['holdout']:,}, suppressed {summary['suppressed']:,}); "
        f"enqueue {sent:.1f} s = {progress['enqueued'] / sent:,.0f} messages/s "
        f"({progress['enqueued']:,} messages) load {os.getloadavg()[0]:.2f}"
    )

    t0 = time.perf_counter()
    went = _deliver(ws, min(DELIVER, progress["enqueued"]))
    delivering = time.perf_counter() - t0
    with ws.db.connect() as conn:
        delivered = conn.execute(
            sa.select(sa.func.count()).where(outbox.c.status == "delivered")
        ).scalar_one()
    assert delivered == went == _requests(receiver) >= min(DELIVER, progress["enqueued"])
    print(
        f"deliver {delivered:,} of them to the receiver: {delivering:.1f} s = "
        f"{delivered / delivering:,.0f} messages/s delivered, load {os.getloadavg()[0]:.2f}"
    )
    ws.close()
