"""A sent campaign's report in a real browser against `rapport serve`: the Results card, the
7-day conversion trend chart, the uplift over the holdout, and the trend CSV. The campaign is
planned and sent through the real path to a call list, whose export delivers it; the goal
events come after. Screenshot: /tmp/rapport-console-campaign-report.png.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyroaring import BitMap

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.campaigns import CampaignIn, create_campaign, in_holdout, plan, send
from rapport.campaigns.results import TREND_COLUMNS
from rapport.delivery.calllist import take
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.segments.bitmaps import put_segment
from rapport.segments.store import insert_segment
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_campaign_results import _events

pytestmark = pytest.mark.browser

PERSONS = range(1, 81)
SHARE = 0.25


def _sent_campaign(ws: Workspace) -> tuple[int, list[int], list[int]]:
    """A campaign sent and delivered to a call list: its id, the treated and the holdout."""
    insert_segment(ws, "buyers", "audience", {"condition": None}, mode="static")
    put_segment(ws, "buyers", {None: BitMap(PERSONS)})
    create_channel(ws.db, ChannelSpec.model_validate({"name": "calls", "kind": "call_list"}))
    body = {
        "name": "spring",
        "goal_event": "order_paid",
        "audience": "buyers",
        "channel": "calls",
        "content": {"text": "10% off this week"},
        "holdout_share": SHARE,
    }
    cid = int(create_campaign(ws, CampaignIn.model_validate(body), "admin")["id"])
    plan(ws, cid, "admin")
    send(ws, cid)
    take(ws.db, "calls")  # the export delivers the list
    holdout = [p for p in PERSONS if in_holdout(cid, p, SHARE)]
    treated = [p for p in PERSONS if p not in holdout]
    return cid, treated, holdout


def test_sent_campaign_report(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    cid, treated, holdout = _sent_campaign(ws)
    assert len(holdout) >= 4
    soon = datetime.now(UTC) + timedelta(hours=1)
    events = [
        (p, "order_paid", soon + timedelta(days=i % 3), 100.0) for i, p in enumerate(treated[:12])
    ]
    events += [(holdout[0], "order_paid", soon + timedelta(days=1), 100.0)]
    events += [(treated[12], "order_paid", soon + timedelta(days=8), 100.0)]  # after 7 days
    _events(ws, events)
    ws.close()

    page.goto(f"/campaigns/{cid}")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    card = page.locator("#results")
    expect(card).to_be_visible()
    expect(page.locator("#r-delivered")).to_have_text(str(len(treated)))
    expect(page.locator("#r-converted")).to_contain_text("12 (")
    expect(page.locator("#r-holdout-converted")).to_contain_text(f"1 of {len(holdout)}")
    treated_rate, holdout_rate = 12 / len(treated), 1 / len(holdout)
    expect(page.locator("#uplift")).to_contain_text(
        f"{100 * (treated_rate - holdout_rate):+.2f} points (95 % CI"
    )
    expect(page.locator("#trend-chart canvas")).to_have_count(1)  # ECharts drew it
    page.screenshot(path=SHOTS.format("campaign-report"), full_page=True)

    with page.expect_download() as got:
        card.locator("a:has-text('Trend CSV')").click()
    rows = list(csv.reader(io.StringIO(Path(got.value.path()).read_text())))
    assert rows[0] == TREND_COLUMNS
    assert [r[0] for r in rows[1:]] == [str(d) for d in range(1, 8)]
    by_day = {int(r[0]): int(r[2]) for r in rows[1:]}  # treated converted, cumulative
    assert by_day[1] == 4 and by_day[3] == by_day[7] == 12
    assert [int(r[5]) for r in rows[1:]] == [0] + [1] * 6  # the holdout converter, on day 2
