"""Clock skew in event timestamps, through the collector into the stream engine.

An event stamped more than ``max_clock_skew_hours`` away from its arrival (days in the
future or the past) is flagged ``FLAG_CLOCK_SKEW`` and takes its arrival time: it is kept and
counted, and it cannot drag the stream engine's watermark (event time) past real time, so
absence rules ("... then not order_paid within 30 minutes") do not fire early.

Within the allowed skew an event keeps its own time (its rules judge it there), but the
watermark moves only to ``min(event time, arrival)`` (``stream.engine.clock``): an event 20 h
ahead does not make absence timers fire early for everyone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import copy_home
from rapport.ingest.collector import Collector
from rapport.ingest.sources import create_source, source_by_name
from rapport.leads import rules
from rapport.log import FLAG_CLOCK_SKEW
from rapport.stream import engine, follow
from rapport.stream.engine import WATERMARK_KEY
from rapport.workspace import Workspace
from test_stream_workers import lead_rows

pytestmark = pytest.mark.long
ABANDONED = {
    "name": "cart_abandoned",
    "lead_type": "cart abandoned",
    "trigger": "sequence add_to_cart then not order_paid within 30 minutes",
    "cooldown": {"amount": 2, "unit": "hours"},
}


@pytest.fixture
def ws(migrated_home: Path, tmp_path: Path) -> Workspace:
    settings = copy_home(migrated_home, tmp_path, stream_idle_seconds=3600)
    workspace = Workspace(settings)
    create_source(workspace.db, "web", kind="server")
    rules.create_rule(workspace.db, rules.RuleIn(**ABANDONED, status="live"), None)
    yield workspace
    engine.forget(workspace)
    workspace.close()


def collect(ws: Workspace, *messages: dict) -> datetime:
    """Through the collector's checks into the log, as ``/v1/batch`` does; the arrival time."""
    received = datetime.now(UTC)
    collector = Collector(ws)
    source = source_by_name(ws.db, "web")
    assert source is not None
    checked = collector.check(source, list(messages), received=received)
    results = collector.submit_sync(checked)
    assert all(r["status"] == "accepted" for r in results), results
    return received


def track(anon: str, event: str, ts: datetime, mid: str) -> dict:
    return {"type": "track", "event": event, "anonymousId": anon, "timestamp": ts.isoformat(),
            "messageId": mid}  # fmt: skip


def watermark(ws: Workspace) -> datetime:
    with ws.warehouse.connect() as con:
        mark = ws.warehouse.get_state(con, WATERMARK_KEY)
    assert mark
    return datetime.fromisoformat(mark)


def test_skewed_events_are_flagged_and_do_not_move_the_watermark_past_real_time(ws):
    now = datetime.now(UTC)
    days = timedelta(days=3)
    sent = [
        track("a1", "add_to_cart", now, "cart"),  # its absence is due in 30 minutes
        track("a2", "view_product", now + days, "future"),
        track("a3", "view_product", now - days, "past"),
    ]
    received = collect(ws, *sent)
    records = {r.message_id: r for _, r in ws.log.tail(3)}
    for mid in ("future", "past"):
        r = records[mid]
        assert r.flags & FLAG_CLOCK_SKEW and r.timestamp == r.received_at, r
        assert json.loads(r.payload)["originalTimestamp"] != r.timestamp  # kept, for audit
    assert not records["cart"].flags & FLAG_CLOCK_SKEW
    follow.one_pass(ws)
    mark = watermark(ws)
    print(f"watermark {mark.isoformat()} at real time {received.isoformat()}")
    assert mark <= datetime.now(UTC), "the watermark is past real time"
    assert lead_rows(ws) == [], "the absence fired before its 30 minutes"
    report = f"skewed beyond {ws.settings.max_clock_skew_hours} h: acknowledged 3, found"
    print(report, sum(1 for _, r in ws.log.tail(3)))

    # within the allowed skew an event keeps its time, but the watermark stops at its arrival:
    # the absence above still waits for its 30 minutes
    ahead_at = now + timedelta(hours=20)
    arrived = collect(ws, track("a4", "view_product", ahead_at, "ahead"))
    ((_, rec),) = ws.log.tail(1)
    assert rec.timestamp.startswith(ahead_at.strftime("%Y-%m-%dT%H:%M"))
    assert not rec.flags & FLAG_CLOCK_SKEW
    follow.one_pass(ws)
    mark = watermark(ws)
    print(f"one event 20 h ahead: watermark {mark.isoformat()}, arrival {arrived.isoformat()},"
          f" leads {len(lead_rows(ws))}")  # fmt: skip
    assert mark <= arrived
    assert lead_rows(ws) == [], "a device clock 20 h ahead made the absence fire early"
