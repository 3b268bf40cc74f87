"""The lead inbox in a real browser against `rapport serve`: a sales agent finds a new lead,
claims it, opens it and moves it to contacted with a note. Screenshots go to
/tmp/rapport-console-lead*.png.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport import accounts
from rapport.leads import fire, rules
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser
PLAN = (Path(__file__).resolve().parents[2] / "examples" / "tracking-plan.yaml").read_text()

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
    page.wait_for_load_state()
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
    expect(page.locator("#backtest")).to_contain_text("Backtest")
    expect(page.locator("#backtest-form")).to_have_count(0)  # sales: no backtest
    expect(page.locator("#rule-form button[type=submit]")).to_have_count(0)  # sales: read only
    page.screenshot(path=SHOTS.format("lead-rule"), full_page=True)


def test_a_marketer_backtests_a_rule(server, page):  # noqa: F811
    """The rule editor's backtest card: the period's numbers, a bar per day, the sample with
    links to the 360° pages; then a dry-run of the live logic."""
    import time
    from datetime import timedelta

    import httpx
    from playwright.sync_api import expect

    from rapport.catalog import import_plan
    from rapport.ingest.sources import create_source

    now = datetime.now(UTC).replace(microsecond=0)
    ws = Workspace(load_settings(home=server.home))
    try:
        accounts.create_user(ws.db, "li.na", "marketer-password", accounts.Role.marketer)
        import_plan(ws.db, PLAN)
        key = create_source(ws.db, "web", kind="client")["write_key"]
        body = rules.RuleIn(
            name="fridge_viewers",
            lead_type="fridge view",
            trigger='event view_product where category = "fridge" and price >= 5000',
            cooldown={"amount": 1, "unit": "hours"},
        )
        rules.create_rule(ws.db, body, None)
        token = accounts.create_token(ws.db, accounts.Role.admin, "test")
    finally:
        ws.close()

    def view(user: str, at: datetime, price: int) -> dict:
        props = {"item_id": "F-1", "category": "fridge", "price": price}
        return {
            "type": "track",
            "userId": user,
            "event": "view_product",
            "properties": props,
            "timestamp": at.isoformat(),
        }

    batch = [
        view("u-1", now - timedelta(hours=20), 6999),  # (the collector's clock skew: < 24 h)
        view("u-1", now - timedelta(hours=20) + timedelta(minutes=5), 6999),  # cooldown
        view("u-2", now - timedelta(hours=3), 5999),
        view("u-3", now - timedelta(hours=2), 999),  # too cheap
        {
            "type": "track",
            "userId": "u-2",
            "event": "order_paid",
            "timestamp": now.isoformat(),
            "properties": {"order_id": "o-1", "amount": 5999},
        },
    ]
    sent = httpx.post(f"{server.url}/v1/batch", auth=(key, ""), json={"batch": batch})
    assert sent.status_code == 200, sent.text
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(60):  # the server's follower loads the events into the warehouse
        got = httpx.post(
            f"{server.url}/api/leads/rules/fridge_viewers/backtest",
            json={},
            headers=headers,
            timeout=60,
        ).json()
        if got["leads"] == 2:
            break
        time.sleep(0.5)
    assert got["leads"] == 2, got

    page.goto("/leads/rules/fridge_viewers")
    page.fill("input[name=username]", "li.na")
    page.fill("input[name=password]", "marketer-password")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/leads/rules/fridge_viewers")
    page.wait_for_load_state()  # HTMX attaches at load: a click before it submits a plain GET
    page.click("#backtest-run")  # empty dates: the last 7 days
    summary = "would have produced 2 leads, 50% of them never did order_paid within 7 days"
    expect(page.locator("#backtest-summary")).to_contain_text(summary, timeout=30_000)
    expect(page.locator("#bt-matches")).to_have_text("3")
    expect(page.locator("#bt-leads")).to_have_text("2")
    expect(page.locator("#backtest-chart canvas")).to_have_count(1)  # ECharts drew the bars
    expect(page.locator("#backtest-sample tbody tr")).to_have_count(2)
    link = page.locator("#backtest-sample a").first
    expect(link).to_have_attribute("href", re.compile(r"^/persons/\d+$"))
    page.screenshot(path=SHOTS.format("lead-backtest"), full_page=True)

    page.click("#dry-run")  # the live logic over the last 24 hours: the same leads
    expect(page.locator("#backtest-result")).to_have_attribute(
        "data-matcher", "stream", timeout=30_000
    )
    expect(page.locator("#backtest-summary")).to_contain_text(summary)
    expect(page.locator("#bt-leads")).to_have_text("2")
    link.click()
    expect(page).to_have_url(re.compile(r"/persons/\d+$"))
