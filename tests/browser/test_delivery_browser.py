"""The delivery log in a real browser against `rapport serve`: a message the receiver refused
(HTTP 400) shows as dead with its try; after the receiver is fixed, Replay delivers it.
Screenshots go to /tmp/rapport-console-delivery*.png.
"""

from __future__ import annotations

import time

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.delivery import enqueue
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_delivery import Receiver

pytestmark = pytest.mark.browser


def test_dead_message_replayed_from_the_log(server, page):  # noqa: F811
    from playwright.sync_api import expect

    receiver = Receiver().start()
    receiver.answer = lambda key, body: (400, b'{"error": "unknown store code"}', {})
    ws = Workspace(load_settings(home=server.home))
    try:
        spec = {
            "name": "crm",
            "kind": "webhook",
            "allow_private": True,
            "config": {"url": receiver.url},
        }
        create_channel(ws.db, ChannelSpec.model_validate(spec))
        with ws.db.begin() as conn:
            message_id = enqueue(
                conn,
                channel="crm",
                key="lead:7",
                origin="lead:7",
                person_key=7,
                payload={"lead": 7, "type": "high-value fridge viewer"},
            )
        deadline = time.monotonic() + 30
        while not receiver.requests:  # the server's in-process dispatcher sends it
            assert time.monotonic() < deadline, "the server never sent the message"
            time.sleep(0.1)

        page.goto("/delivery?status=dead")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", server.admin_password)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{server.url}/delivery?status=dead")
        row = page.locator(f"#message-{message_id}")
        expect(row).to_contain_text("dead")
        expect(row).to_contain_text("HTTP 400")
        page.screenshot(path=SHOTS.format("delivery-log"), full_page=True)

        row.locator(f"a:has-text('{message_id}')").click()
        expect(page.locator("#attempts")).to_contain_text("unknown store code")
        receiver.answer = lambda key, body: (200, b'{"ok": true}', {})
        page.click("#message-detail button:has-text('Replay')")
        expect(page.locator(".toast").last).to_contain_text("queued again")
        expect(page.locator("#attempts")).to_contain_text("replayed by admin")

        deadline = time.monotonic() + 30
        while not receiver.applied:
            assert time.monotonic() < deadline, "the replayed message was not delivered"
            time.sleep(0.1)
        page.reload()
        expect(page.locator("#message-detail h2")).to_contain_text("delivered")
        expect(page.locator("#attempts tbody tr")).to_have_count(3)
        page.screenshot(path=SHOTS.format("delivery-message"), full_page=True)
        assert receiver.applied == {"lead:7": 1}

        page.click("a:has-text('Delivery log')")
        page.click("a.btn:has-text('Channels')")
        expect(page.locator("#channel-crm")).to_contain_text("webhook")
        page.click("#channel-crm button:has-text('Send test')")
        expect(page.locator(".toast").last).to_contain_text("Test sent to crm: HTTP 200")

        # a new webhook from the form: its generated signing secret is shown once
        page.click("summary:has-text('New channel')")
        page.fill("#new-channel input[name=name]", "erp")
        page.fill("#new-channel textarea[name=config]", f'{{"url": "{receiver.url}"}}')
        page.check("#new-channel input[name=allow_private]")
        page.click("#new-channel button[type=submit]")
        expect(page.locator("#channel-erp")).to_contain_text("allowed")
        expect(page.locator("#channel-secret")).to_contain_text("whsec_")
        page.screenshot(path=SHOTS.format("delivery-channels"), full_page=True)
    finally:
        ws.close()
        receiver.stop()
