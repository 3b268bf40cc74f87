"""The 360° profile page in a real browser against `rapport serve`: find a person in the
People list, read the identity graph, filter and page the behaviour timeline through HTMX.
Screenshots go to /tmp/rapport-console-person*.png.
"""

from __future__ import annotations

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_profile import LI, MOBILE, build_world

pytestmark = pytest.mark.browser


def test_profile_timeline_filter(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    try:
        build_world(ws, with_log=False)
    finally:
        ws.close()

    page.goto("/persons")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/persons")
    page.screenshot(path=SHOTS.format("people"), full_page=True)
    page.click(f"#persons-table a:has-text('#{LI}')")
    expect(page).to_have_url(f"{server.url}/persons/{LI}")
    expect(page.locator("#identities-table")).to_contain_text(MOBILE)
    expect(page.locator("#identity-graph canvas")).to_have_count(1)
    rows = page.locator("#timeline-table tbody tr.expandable")
    expect(rows).to_have_count(10)
    page.wait_for_timeout(500)  # let ECharts lay the graph out
    page.screenshot(path=SHOTS.format("person"), full_page=True)

    # filter the timeline: HTMX swaps the table in place, the page stays
    page.select_option("#timeline-filters select[name=event]", "order_paid")
    page.click("#timeline-filters button[type=submit]")
    expect(rows).to_have_count(4)
    expect(page.locator("#timeline")).not_to_contain_text("view_product")
    expect(page).to_have_url(f"{server.url}/persons/{LI}")
    rows.first.click()
    expect(page.locator("#timeline-table tr.detail").first).to_contain_text("amount")
    page.screenshot(path=SHOTS.format("person-timeline"), full_page=True)

    # clear the filters, then page to the older events
    page.click("#timeline-filters button:has-text('Clear')")
    expect(rows).to_have_count(10)
    page.click("#timeline a:has-text('Older')")  # 13 events: the log one is not in this world
    expect(rows).to_have_count(3)
    expect(page.locator("#timeline .pager")).to_contain_text("Events 11–13 of 13")
