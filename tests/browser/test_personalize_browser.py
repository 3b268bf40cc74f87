"""The placement editor in a real browser against `rapport serve`: create a banner with two
variants picked from existing audiences, then preview which one a person gets. Screenshots go
to /tmp/rapport-console-placement*.png.
"""

from __future__ import annotations

import pytest
from pyroaring import BitMap

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.segments.bitmaps import put_segment
from rapport.segments.store import insert_segment
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser


def test_placement_editor_and_preview(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    for name, keys in (("vip", [1, 2]), ("new_users", [2, 3])):
        insert_segment(ws, name, "audience", {"condition": None}, mode="static")
        put_segment(ws, name, {None: BitMap(keys)})

    page.goto("/placements")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page.locator("#placements")).to_contain_text("No placement yet")
    page.click("a:has-text('New placement')")
    expect(page).to_have_url(f"{server.url}/placements/new")
    page.wait_for_load_state()  # placements.js (deferred) handles "Add variant" from then on

    page.fill("input[name=name]", "home_banner")
    page.fill("input[name=description]", "the home page's hero")
    for audience, priority, title in (("new_users", "1", "First coupon"), ("vip", "5", "VIP")):
        page.click("#add-variant")
        row = page.locator("#variants tbody tr").last
        row.locator("select[name=v_audience]").select_option(audience)
        row.locator("input[name=v_priority]").fill(priority)
        row.locator("textarea[name=v_content]").fill(f'{{"title": "{title}"}}')
    page.fill("textarea[name=default]", '{"title": "Welcome"}')
    page.screenshot(path=SHOTS.format("placement-edit"), full_page=True)
    page.click("button:has-text('Create placement')")
    expect(page).to_have_url(f"{server.url}/placements/home_banner")
    expect(page.locator(".toast").last).to_contain_text("home_banner created")
    expect(page.locator("#variants tbody tr")).to_have_count(2)

    page.fill("#preview input[name=person]", "2")  # in both: the higher priority wins
    page.click("#preview button:has-text('Preview')")
    expect(page.locator("#preview-result")).to_contain_text("gets vip: member of vip")
    expect(page.locator("#preview-result")).to_contain_text('"VIP"')
    page.screenshot(path=SHOTS.format("placement-preview"), full_page=True)
    page.fill("#preview input[name=person]", "99")
    page.click("#preview button:has-text('Preview')")
    expect(page.locator("#preview-result")).to_contain_text("gets default")

    # a broken content is refused with the field named, and nothing changes
    page.locator("#variants tbody tr").first.locator("textarea[name=v_content]").fill("[1]")
    page.click("button:has-text('Save')")
    expect(page.locator(".toast").last).to_contain_text("variants.0.content")

    page.goto("/placements")
    expect(page.locator("#placement-home_banner")).to_contain_text("2")
    ws.close()
