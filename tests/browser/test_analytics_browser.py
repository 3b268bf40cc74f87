"""The funnel page in a real browser against `rapport serve`: build a three-step funnel with a
filter and a breakdown, run it, and download the CSV (same numbers as the table) and the PNG.
Screenshot: /tmp/rapport-console-analytics-funnel.png.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_analytics import write_world

pytestmark = pytest.mark.browser


def test_build_a_funnel_and_download_it(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    write_world(ws)
    ws.close()

    page.goto("/analytics/funnel")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/analytics/funnel")
    page.wait_for_load_state()  # analytics.js (deferred) handles "Add step" from then on

    page.click("#add-step")
    steps = page.locator(".step-row")
    expect(steps).to_have_count(3)
    for i, event in enumerate(("view", "cart", "pay")):
        steps.nth(i).locator("input[name=event]").fill(event)
    steps.nth(2).locator("input[name=where]").fill("amount >= 10")
    page.fill("input[name=start]", "2024-06-01")
    page.fill("input[name=end]", "2024-06-30")
    page.fill("input[name=breakdown]", "platform")
    page.click("#run")

    table = page.locator("#analysis-table tbody tr")
    expect(table.first).to_contain_text("(all)")
    expect(page.locator("#analysis-chart canvas")).to_have_count(1)
    page.screenshot(path=SHOTS.format("analytics-funnel"), full_page=True)
    shown = [[c.strip() for c in row.split("\t")] for row in table.all_inner_texts()]

    with page.expect_download() as got:
        page.click("#download-csv")
    rows = list(csv.reader(io.StringIO(Path(got.value.path()).read_text())))
    assert rows[0][:4] == ["breakdown", "step", "event", "persons"]
    assert [r[3] for r in rows[1:4]] == ["6", "3", "1"]
    assert [r[:4] for r in rows[1:]] == [r[:4] for r in shown]

    with page.expect_download() as png:
        page.click("#download-png")
    assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
