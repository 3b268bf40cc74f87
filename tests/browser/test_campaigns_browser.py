"""The campaign wizard in a real browser against `rapport serve`: audience → channel and
content with a live preview for a sample person → schedule and holdout → plan → send.
Screenshots go to /tmp/rapport-console-campaign*.png.
"""

from __future__ import annotations

import pytest
from pyroaring import BitMap

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.segments.bitmaps import put_segment
from rapport.segments.store import insert_segment
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser


def test_campaign_wizard_plan_and_send(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    insert_segment(ws, "fans", "audience", {"condition": None}, mode="static")
    put_segment(ws, "fans", {None: BitMap(range(1, 51))})
    spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/sms"}}
    create_channel(ws.db, ChannelSpec.model_validate({**spec, "allow_private": True}))

    page.goto("/campaigns")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page.locator("#campaigns")).to_contain_text("No campaign yet")
    page.click("a:has-text('New campaign')")

    page.fill("input[name=name]", "double11")
    page.select_option("select[name=audience]", "fans")
    page.select_option("select[name=channel]", "sms")
    page.fill(
        "textarea[name=c_template]", "{{ nickname|default('friend') }}, coupon #{{ person_key }}"
    )
    page.fill("input[name=sample_person]", "7")
    expect(page.locator("#live-preview")).to_contain_text("friend, coupon #7")
    page.fill("textarea[name=c_template]", "{{ nickname }}, coupon")  # no nickname known
    expect(page.locator("#live-preview")).to_contain_text("'nickname' is undefined (person 7)")
    page.fill("textarea[name=c_template]", "{{ nickname|default('friend') }}, coupon")
    page.fill("input[name=holdout_percent]", "20")
    page.fill("input[name=cost_per_message]", "0.05")
    page.screenshot(path=SHOTS.format("campaign-wizard"), full_page=True)
    page.click("button:has-text('Save and continue')")
    expect(page.locator(".toast").last).to_contain_text("double11 saved as a draft")
    expect(page.locator("#status")).to_have_text("draft")

    page.click("#plan button:has-text('Plan')")
    expect(page.locator("#status")).to_have_text("planned")
    expect(page.locator("#n-audience")).to_have_text("50")
    to_send = int(page.locator("#n-to-send").inner_text())
    holdout = int(page.locator("#n-holdout").inner_text())
    assert to_send + holdout == 50 and 0 < holdout < 25
    expect(page.locator(".sample").first).to_contain_text("friend, coupon")
    page.screenshot(path=SHOTS.format("campaign-plan"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#plan button:has-text('Send')")
    expect(page.locator("#status")).to_have_text("sent")
    expect(page.locator("#progress")).to_contain_text(f"Enqueued {to_send}")
    page.goto("/campaigns")
    expect(page.locator("#campaigns")).to_contain_text("double11")
    ws.close()
