"""The console in a real browser (Debian's Chromium through Playwright) against `rapport serve`.

One journey, as an operator would do it: sign in, declare an event type with a property,
create a strict source, watch a tracked event arrive, fix the plan and replay what the
quarantine caught. A screenshot of every page goes to /tmp/rapport-console-*.png.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RAPPORT_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = "/tmp/rapport-console-{}.png"


@pytest.fixture
def page(server) -> Iterator:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed: run `make browser`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=server.url)
        context.set_default_timeout(15_000)
        tab = context.new_page()
        yield tab
        browser.close()


def test_operator_journey(server, page):
    from playwright.sync_api import expect

    page.goto("/plan")
    expect(page).to_have_url(f"{server.url}/login?next=/plan")
    page.screenshot(path=SHOTS.format("login"))
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".alert-error")).to_have_text("Wrong username or password.")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/plan")

    # tracking plan: an event type, then a property on it
    page.click("summary:has-text('New event type')")
    page.fill("#new-event input[name=name]", "view_product")
    page.fill("#new-event input[name=description]", "查看商品 (viewed a product page)")
    page.click("#new-event button[type=submit]")
    card = page.locator("#event-view_product")
    expect(card).to_contain_text("查看商品")
    card.locator("summary:has-text('Add property')").click()
    card.locator("input[name=name]").last.fill("price")
    card.locator("select[name=type]").last.select_option("number")
    card.locator("input[name=min]").last.fill("0")
    card.locator("button:has-text('Add property')").click()
    expect(page.locator("#event-view_product table")).to_contain_text("price")
    expect(page.locator(".toast").last).to_contain_text("Property price added")
    page.screenshot(path=SHOTS.format("plan"), full_page=True)

    # a strict source: its write key is shown once
    page.click("nav >> text=Sources")
    page.click("summary:has-text('New source')")
    page.fill("#new-source input[name=name]", "web")
    page.select_option("#new-source select[name=validation_mode]", "strict")
    page.click("#new-source button[type=submit]")
    key = page.locator("#write-key").inner_text()
    assert key.startswith("wk_")
    expect(page.locator("#sources-table")).to_contain_text("web")
    page.screenshot(path=SHOTS.format("sources"), full_page=True)

    # an event sent to the collector shows up in the explorer's live tail
    page.click("nav >> text=Event explorer")
    sent = httpx.post(
        f"{server.url}/v1/track",
        auth=(key, ""),
        json={"userId": "u-1001", "event": "view_product", "properties": {"price": 6999}},
    )
    assert sent.status_code == 200, sent.text
    expect(page.locator("#tail-body")).to_contain_text("view_product", timeout=10_000)
    expect(page.locator("#tail-body")).to_contain_text("u-1001")
    page.locator("#tail-body tr.expandable").first.click()
    expect(page.locator("#tail-body tr.detail").first).to_contain_text("6999")

    # an unplanned event from the strict source is quarantined ...
    caught = httpx.post(  # through /v1/batch, as the Segment libraries send
        f"{server.url}/v1/batch",
        auth=(key, ""),
        json={
            "batch": [
                {
                    "type": "track",
                    "userId": "u-1001",
                    "event": "add_to_cart",
                    "properties": {"sku": "BCD-520"},
                }
            ]
        },
    )
    assert caught.status_code == 200, caught.text
    page.click("nav >> text=Quarantine")
    expect(page.locator("#quarantine-list")).to_contain_text("add_to_cart")
    page.screenshot(path=SHOTS.format("quarantine"), full_page=True)

    # ... until the plan declares it; then a replay lets it through
    page.click("nav >> text=Tracking plan")
    page.click("summary:has-text('New event type')")
    page.fill("#new-event input[name=name]", "add_to_cart")
    page.click("#new-event button[type=submit]")
    card = page.locator("#event-add_to_cart")
    card.locator("summary:has-text('Add property')").click()
    card.locator("input[name=name]").last.fill("sku")
    card.locator("button:has-text('Add property')").click()
    expect(page.locator("#event-add_to_cart table")).to_contain_text("sku")
    page.click("nav >> text=Quarantine")
    page.locator("#quarantine-list input[name=ids]").first.check()
    page.click("button:has-text('Replay selected')")
    expect(page.locator(".toast").last).to_contain_text("Replayed 1")
    expect(page.locator("#quarantine-list")).to_contain_text("Nothing in quarantine")
    assert server.cli("events", "count", "--event", "add_to_cart").strip() == "1"

    # the overview and the users page, for the record
    page.click("nav >> text=Overview")
    expect(page.locator(".stat").first).to_be_visible()
    page.wait_for_timeout(500)  # let ECharts draw
    page.screenshot(path=SHOTS.format("overview"), full_page=True)
    page.click("nav >> text=Users")
    expect(page.locator("#users-table")).to_contain_text("admin")
    page.screenshot(path=SHOTS.format("users"), full_page=True)
    page.goto("/sources/web")
    page.screenshot(path=SHOTS.format("source-detail"), full_page=True)

    # the warehouse loader has stored the event: the filtered, paged explorer finds it
    page.goto("/events?source=web&event=view_product")
    for _ in range(20):
        if page.locator("#events-table").count():
            break
        page.wait_for_timeout(500)
        page.reload()
    expect(page.locator("#events-table")).to_contain_text("view_product")
    page.locator("#events-table tr.expandable").first.click()
    expect(page.locator("#events-table tr.detail").first).to_contain_text("6999")
    page.screenshot(path=SHOTS.format("events"), full_page=True)
