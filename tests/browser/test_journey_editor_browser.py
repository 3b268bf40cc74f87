"""The visual journey editor in a real browser against `rapport serve`: a marketer builds a
journey on the canvas (a wait, a branch, a send on each side), saves and makes it live, and
sees persons counted on its steps; the three seed journeys are drawn with no two boxes on top
of each other; a save the API refuses shows the error on the step it names; deleting a step
joins its parent to its child.
Screenshots: /tmp/rapport-console-journey-editor*.png.
"""

from __future__ import annotations

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
from rapport.journeys import seed
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser
PLAN = (Path(__file__).resolve().parents[2] / "examples" / "tracking-plan.yaml").read_text()


def _prepare(server) -> str:
    """The plan, a source (its write key is returned) and an SMS channel."""
    ws = Workspace(load_settings(home=server.home))
    try:
        import_plan(ws.db, PLAN)
        key = create_source(ws.db, "web", kind="client")["write_key"]
        spec = {"name": "sms", "kind": "sms", "config": {"url": "http://127.0.0.1:9/sms"}}
        create_channel(ws.db, ChannelSpec.model_validate({**spec, "allow_private": True}))
        return str(key)
    finally:
        ws.close()


def _sign_in(page, server, path: str) -> None:  # noqa: F811
    page.goto(path)
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")


def _add(page, after: str, kind: str) -> None:  # noqa: F811
    """Click the "+" under an open exit (``node:label``, "" for the first step), pick a kind."""
    page.click(f".je-plus[data-after='{after}']")
    page.click(f".je-menu [data-kind={kind}]")


def test_the_journey_editor(server, page):  # noqa: F811
    """One server for both (starting one takes most of a browser test's time)."""
    key = _prepare(server)
    _sign_in(page, server, "/journeys")
    _build_on_the_canvas(server, page, key)
    _seeds_draw_cleanly_and_errors_sit_on_their_step(server, page)


def _build_on_the_canvas(server, page, key: str) -> None:  # noqa: F811
    """A wait, a branch and a send on each side, built with clicks; saved, live, counted."""
    from playwright.sync_api import expect

    page.click("#new-visual")
    expect(page).to_have_url(re.compile(r"/journeys/new$"))
    page.fill("#je-panel input[name=entry]", "register")
    page.fill("#je-panel input[name=goal]", "order_paid")
    expect(page.locator("#je-entry")).to_contain_text("goal: order_paid")

    _add(page, "", "wait")
    page.fill("#je-panel input[name=duration-amount]", "2")
    expect(page.locator("#node-wait1")).to_contain_text("wait 2 days")
    page.select_option("#je-panel select[name=add-kind]", "branch")
    page.click("#je-add-step")
    page.fill("#je-panel textarea[name=condition]", "not did order_paid")
    expect(page.locator("#je-condition-check")).to_have_text("✓ valid condition")
    expect(page.locator("#node-branch1")).to_contain_text("if not did order_paid")
    _add(page, "branch1:yes", "send")
    page.fill("#je-panel textarea[name=content-text]", "Welcome! WELCOME10")
    _add(page, "branch1:no", "send")
    page.fill("#je-panel textarea[name=content-text]", "Thanks for your order")
    expect(page.locator("#node-send2")).to_contain_text("send sms: Thanks for your order")
    expect(page.locator(".je-edge-label[data-edge='branch1:yes']")).to_have_text("yes")
    expect(page.locator(".je-edge-label[data-edge='branch1:no']")).to_have_text("no")

    page.fill("#je-name", "onboarding")
    page.click("#je-save")
    expect(page).to_have_url(re.compile(r"/journeys/\d+$"))
    for nid in ("wait1", "branch1", "send1", "send2"):
        expect(page.locator(f"#node-{nid}")).to_be_visible()
    expect(page.locator(".stats")).to_contain_text("draft")
    page.click("button:has-text('Go live')")
    expect(page.locator("button:has-text('Pause')")).to_be_visible()

    now = datetime.now(UTC).replace(microsecond=0)
    batch = [
        {"type": "track", "userId": user, "event": "register", "timestamp": at.isoformat()}
        for user, at in [("u-1", now - timedelta(hours=2)), ("u-2", now - timedelta(hours=1))]
    ]
    sent = httpx.post(f"{server.url}/v1/batch", auth=(key, ""), json={"batch": batch})
    assert sent.status_code == 200, sent.text
    count = page.locator("#node-wait1 .node-count")
    for _ in range(60):  # the server's follower runs the journey
        page.reload()
        if count.inner_text() == "2":
            break
        time.sleep(0.5)
    expect(count).to_have_text("2")  # both wait their 2 days
    expect(page.locator("#node-send1 .node-count")).to_have_text("0")
    page.screenshot(path=SHOTS.format("journey-editor"), full_page=True)


def _seeds_draw_cleanly_and_errors_sit_on_their_step(server, page) -> None:  # noqa: F811
    """No two boxes overlap in the seed journeys; a refused save marks the step it names."""
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    try:
        seed.install(ws)
    finally:
        ws.close()
    for name in ("winback", "repurchase", "welcome"):
        page.goto(f"/journeys/{name}")
        boxes = [b.bounding_box() for b in page.locator(".je-node").all()]
        assert len(boxes) > 2
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = (
                    a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                    or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]
                )  # fmt: skip
                assert apart, f"{name}: two steps overlap: {a} {b}"
        page.screenshot(path=SHOTS.format(f"journey-editor-{name}"), full_page=True)

    expect(page.locator("#node-ordered")).to_contain_text("if not did order_paid")
    page.click("#node-ordered")
    page.fill("#je-panel textarea[name=condition]", "did no_such_event")
    expect(page.locator("#je-condition-check")).to_contain_text("no_such_event")
    page.click("#je-save")
    error = page.locator("#node-ordered .je-node-error")
    expect(error).to_contain_text("no_such_event")
    expect(page.locator("#je-errors")).to_contain_text("ordered")
    expect(page.locator("#je-panel .alert-error")).to_contain_text("no_such_event")
    page.screenshot(path=SHOTS.format("journey-editor-error"), full_page=True)
    page.click("#je-revert")
    expect(page.locator("#node-ordered")).to_contain_text("if not did order_paid")
    expect(page.locator("#je-errors")).to_have_count(0)

    page.click("#node-day4")  # deleting a step joins its parent to its only child
    page.click("#je-delete")
    expect(page.locator("#node-day4")).to_have_count(0)
    expect(page.locator("path[data-from=coupon][data-to=still]")).to_have_count(1)
    page.reload()  # nothing was saved
    expect(page.locator("#node-day4")).to_be_visible()
