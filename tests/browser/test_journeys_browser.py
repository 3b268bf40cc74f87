"""A journey in a real browser against `rapport serve`: a marketer writes one in the console's
JSON editor, makes it live, persons register through the collector, and the journey page
shows how many persons wait at each step. Screenshot: /tmp/rapport-console-journey.png.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.catalog import import_plan
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.ingest.sources import create_source
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser
PLAN = (Path(__file__).resolve().parents[2] / "examples" / "tracking-plan.yaml").read_text()
DEFINITION = {
    "entry": {"event": "register"},
    "goal": {"event": "order_paid"},
    "nodes": [
        {"id": "day1", "kind": "wait", "params": {"duration": "1 days"}, "next": "hello"},
        {"id": "hello", "kind": "send",
         "params": {"channel": "sms", "content": {"text": "Welcome: WELCOME10"}}},
    ],
}  # fmt: skip


def test_a_journey_made_in_the_console_counts_persons_per_step(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    try:
        import_plan(ws.db, PLAN)
        key = create_source(ws.db, "web", kind="client")["write_key"]
        spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/sms"}}
        create_channel(ws.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
    finally:
        ws.close()

    page.goto("/journeys")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    page.click("#new-journey summary")
    page.fill("#new-journey input[name=name]", "welcome")
    page.fill("#new-journey textarea[name=definition]", json.dumps(DEFINITION, indent=2))
    page.click("#new-journey button[type=submit]")
    expect(page).to_have_url(re.compile(r"/journeys/\d+$"))
    expect(page.locator("#flow")).to_contain_text("day1")
    expect(page.locator(".stats")).to_contain_text("draft")
    page.click("button:has-text('Go live')")
    expect(page.locator("button:has-text('Pause')")).to_be_visible()
    expect(page.locator(".stats")).to_contain_text("live")

    now = datetime.now(UTC).replace(microsecond=0)
    batch = [
        {"type": "track", "userId": user, "event": event, "timestamp": at.isoformat()}
        for user, event, at in [
            ("u-1", "register", now - timedelta(hours=2)),
            ("u-2", "register", now - timedelta(hours=1)),
            ("u-3", "register", now - timedelta(hours=1)),
            ("u-3", "order_paid", now),  # the goal: u-3 leaves
        ]
    ]
    sent = httpx.post(f"{server.url}/v1/batch", auth=(key, ""), json={"batch": batch})
    assert sent.status_code == 200, sent.text
    count, stats = page.locator("#node-day1 .node-count"), page.locator(".stats")
    for _ in range(60):  # the server's follower runs the journey
        page.reload()
        if count.inner_text() == "2" and "Goal" in stats.inner_text():
            break
        time.sleep(0.5)
    expect(count).to_have_text("2")  # u-1 and u-2 wait a day; u-3 reached the goal
    expect(page.locator("#node-hello .node-count")).to_have_text("0")
    expect(stats).to_contain_text("Active")
    page.screenshot(path=SHOTS.format("journey"), full_page=True)
