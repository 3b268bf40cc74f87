"""The lead inbox in a real browser against `rapport serve`: a sales agent finds a new lead,
claims it, opens it and moves it to contacted with a note. Screenshots go to
/tmp/rapport-console-lead*.png.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport import accounts
from rapport.leads import fire, rules
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser

EVIDENCE = [
    {
        "event": "view_product",
        "message_id": "m-1",
        "timestamp": "2026-11-23T09:29:00Z",
        "properties": {"item_id": "F-100", "category": "fridge", "price": 6999, "duration_s": 75},
    }
]


def test_agent_claims_a_lead_and_reports_contact(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    try:
        accounts.create_user(ws.db, "wang.fang", "sales-password", accounts.Role.sales)
        body = rules.RuleIn(
            name="fridge_viewers",
            lead_type="high-value user viewing fridges in detail",
            trigger='event view_product where category = "fridge" and price >= 5000',
            status="live",
        )
        created = rules.create_rule(ws.db, body, None)
        with ws.db.begin() as conn:
            rule = rules.load(conn, created["id"])
            lead = fire(conn, rule, 42, EVIDENCE, datetime(2026, 11, 23, 9, 30, tzinfo=UTC), "m-1")
        assert lead is not None
    finally:
        ws.close()

    page.goto("/leads")
    page.fill("input[name=username]", "wang.fang")
    page.fill("input[name=password]", "sales-password")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/leads")
    # an agent's inbox opens on "my leads": the new one shows under "anyone"
    page.select_option("#lead-filters select[name=owner]", "")
    row = page.locator(f"#lead-{lead.id}")
    expect(row).to_contain_text("high-value user viewing fridges in detail")
    expect(row.locator(".lead-status")).to_have_text("new")
    page.screenshot(path=SHOTS.format("lead-inbox"), full_page=True)

    row.locator("button:has-text('Claim')").click()
    expect(row.locator(".lead-owner")).to_have_text("wang.fang")
    expect(row.locator(".lead-status")).to_have_text("assigned")
    expect(page.locator(".toast").last).to_contain_text(f"Lead {lead.id} is yours")

    row.locator(f"a:has-text('#{lead.id}')").click()
    expect(page).to_have_url(f"{server.url}/leads/{lead.id}")
    expect(page.locator("#evidence")).to_contain_text("price = 6999")
    expect(page.locator("#lead-person")).to_have_attribute("href", "/persons/42")
    page.select_option("#status-form select[name=status]", "contacted")
    page.fill("#status-form input[name=note]", "called, wants a delivery date")
    page.click("#status-form button[type=submit]")
    expect(page.locator("#lead-status")).to_have_text("contacted")
    expect(page.locator("#lead-history")).to_contain_text("called, wants a delivery date")
    page.screenshot(path=SHOTS.format("lead"), full_page=True)

    # the inbox filtered to my contacted leads still has it
    page.goto("/leads?owner=me&status=contacted")
    expect(page.locator(f"#lead-{lead.id} .lead-status")).to_have_text("contacted")

    # the rule editor checks the text as one types, through /api/leads/rules/validate
    page.click(".tabs >> text=Lead rules")
    expect(page.locator("#rules-table")).to_contain_text("fridge_viewers")
    page.click("#rules-table a:has-text('fridge_viewers')")
    expect(page.locator("#rule-check")).to_have_text("The rule is valid.")
    page.fill("#rule-form textarea[name=conditions]", "has tag vip")
    expect(page.locator("#rule-check")).to_contain_text("conditions ($.tag): unknown tag `vip`")
    page.fill("#rule-form textarea[name=trigger]", "event view_product where price >=")
    expect(page.locator("#rule-check")).to_contain_text("trigger (line 1, column")
    expect(page.locator("#backtest")).to_contain_text("BACKTEST PLACEHOLDER")
    expect(page.locator("#rule-form button[type=submit]")).to_have_count(0)  # sales: read only
    page.screenshot(path=SHOTS.format("lead-rule"), full_page=True)
