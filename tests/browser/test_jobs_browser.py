"""Scheduled jobs and an audience's size over time in a real browser against `rapport serve`:
an admin opens /jobs from the sidebar, runs a tag's job with "Run now" (the table and the
history update in place, a toast says how it went), and the audience page draws its size
chart. Screenshots go to /tmp/rapport-jobs-*.png."""

from __future__ import annotations

import httpx
import pytest

from browser.test_console_browser import page  # noqa: F401 - the Chromium fixture

pytestmark = pytest.mark.browser
SHOTS = "/tmp/rapport-jobs-{}.png"


def test_run_a_job_and_see_the_size_chart(server, page):  # noqa: F811
    from playwright.sync_api import expect

    token = server.cli("token", "create").strip()
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
    tag = {
        "name": "any_pay",
        "kind": "statistical",
        "schedule": "daily at 06:00",
        "definition": {"event": "pay", "agg": "count"},
    }
    assert api.post("/api/tags", json=tag).status_code == 201
    audience = {"name": "payers", "kind": "audience", "condition": {"kind": "tag", "tag": "x"}}
    assert api.post("/api/segments", json=audience).status_code == 201
    for _ in range(2):
        assert api.post("/api/segments/payers/refresh").status_code == 200

    page.goto("/login?next=/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    page.click("nav >> text=Scheduled jobs")
    row = page.locator("#jobs-table tr[data-key='tag:any_pay']")
    expect(row).to_contain_text("daily at 06:00")
    expect(row).to_contain_text("never")
    expect(page.locator("#jobs-table tr[data-key='segment:payers']")).to_contain_text("hourly")
    row.locator("button:has-text('Run now')").click()
    expect(page.locator(".toast").last).to_contain_text("tag:any_pay ran in")
    expect(page.locator("#jobs-table tr[data-key='tag:any_pay']")).to_contain_text("ok")
    expect(page.locator("#runs-table")).to_contain_text("manual")
    page.screenshot(path=SHOTS.format("list"), full_page=True)

    page.goto("/segments/payers")
    chart = page.locator("#sizes-chart")
    expect(chart.locator("canvas")).to_have_count(1)  # ECharts drew it
    page.screenshot(path=SHOTS.format("sizes"), full_page=True)
