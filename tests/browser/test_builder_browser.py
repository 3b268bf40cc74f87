"""The audience builder in a real browser against `rapport serve`: build "did book_hotel where
price > 2000 count >= 1 in last 30 days" with the pickers, watch the text form and the size
follow, save, and find the audience in the list; then edit it through the text box and see
the overlap with the saved version. Screenshots go to /tmp/rapport-console-builder*.png.
"""

from __future__ import annotations

import pytest

from browser.test_console_browser import SHOTS, page  # noqa: F401 - the Chromium fixture
from rapport.conditions.model import from_json
from rapport.conditions.text import to_text
from rapport.settings import load_settings
from rapport.workspace import Workspace
from test_builder_console import build_world

pytestmark = pytest.mark.browser


def test_build_save_and_edit_an_audience(server, page):  # noqa: F811
    from playwright.sync_api import expect

    ws = Workspace(load_settings(home=server.home))
    try:
        build_world(ws)
    finally:
        ws.close()

    page.goto("/segments/new")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", server.admin_password)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/segments/new")

    builder = page.locator("#builder")
    builder.locator("button.add-condition").click()
    row = builder.locator(".cond-row").first
    row.locator("select[data-f=kind]").select_option("did")
    row.locator("select[data-f=event]").select_option("book_hotel")
    row.locator("button.add-where").click()
    where = row.locator(".where-row")
    where.locator("select[data-f=field]").select_option("price")
    where.locator("select[data-f=op]").select_option(">")
    where.locator("input[data-f=value]").fill("2000")
    row.locator("select[data-f=agg]").select_option("count")
    row.locator("select[data-f=measure-op]").select_option(">=")
    row.locator("input[data-f=threshold]").fill("1")
    row.locator("select[data-f=window]").select_option("last")
    row.locator("input[data-f=window-amount]").fill("30")
    row.locator("select[data-f=window-unit]").select_option("days")

    # count >= 1 is the default measure: the printer leaves it out
    expect(page.locator("#builder-text")).to_have_value(
        "did book_hotel where price > 2000 in last 30 days"
    )
    expect(page.locator("#builder-size")).to_have_text("2")
    expect(page.locator("#builder-sample a.sample-person")).to_have_count(2)
    expect(page.locator("#builder-sample")).to_contain_text("#1")
    expect(page.locator("#builder-sample")).to_contain_text("#4")
    page.screenshot(path=SHOTS.format("builder"), full_page=True)

    page.fill("#builder-save input[name=name]", "hotel_2000")
    page.fill("#builder-save input[name=description]", "豪华酒店 bookers")
    page.click("#builder-save-button")
    expect(page).to_have_url(f"{server.url}/segments/hotel_2000")
    expect(page.locator("#definition-text")).to_have_text(
        "did book_hotel where price > 2000 in last 30 days"
    )
    expect(page.locator("#members-table")).to_contain_text("#4")
    page.click("nav >> text=Segments")
    expect(page.locator("#audiences-table")).to_contain_text("hotel_2000")
    expect(page.locator("#audiences-table tr:has-text('hotel_2000') td.num")).to_have_text("2")
    page.screenshot(path=SHOTS.format("builder-list"), full_page=True)

    # edit through the text box: a typo is shown at its position, a fix rebuilds the rows
    page.goto("/segments/hotel_2000/edit")
    expect(page.locator("#builder-size")).to_have_text("2")
    text = page.locator("#builder-text")
    text.fill("did book_hotel where price => 2000")
    expect(page.locator("#builder-text-error")).to_contain_text("line 1, column 28")
    expect(page.locator("#builder-text-error")).to_contain_text("did you mean `>=`?")
    text.fill('did book_hotel or gender = "F"')
    expect(page.locator("#builder-text-error")).to_be_hidden()
    expect(page.locator("#builder .cond-row")).to_have_count(2)
    expect(page.locator("#builder-size")).to_have_text("5")  # 1-4 booked; 1, 3, 5 are F
    expect(page.locator("#builder-overlap")).to_contain_text("Saved version: 2")
    expect(page.locator("#builder-overlap")).to_contain_text("in both: 2")
    page.screenshot(path=SHOTS.format("builder-edit"), full_page=True)

    # a negated group of a tag, a segment bucket and a sequence, added with the pickers
    page.locator("#builder > .bld-group > .bld-head button.add-group").click()
    group = page.locator("#builder .bld-group .bld-group")
    for kind in ("tag", "segment", "sequence"):
        group.locator("> .bld-head button.add-condition").click()
        group.locator(".cond-row").last.locator("select[data-f=kind]").select_option(kind)
    rows = group.locator(".cond-row")
    rows.nth(0).locator("select[data-f=tag]").select_option("value_tier")
    rows.nth(0).locator("input[data-f=values]").fill("gold")
    rows.nth(1).locator("select[data-f=segment]").select_option("gender")
    rows.nth(1).locator("select[data-f=bucket]").select_option("F")
    rows.nth(2).locator("select[data-f=step]").nth(0).select_option("view_product")
    rows.nth(2).locator("select[data-f=step]").nth(1).select_option("book_hotel")
    rows.nth(2).locator("input[data-f=within]").fill("2")
    group.locator("> .bld-head input[data-f=not]").check()
    expected = from_json(
        {
            "kind": "or",
            "any": [
                {"kind": "did", "event": "book_hotel"},
                {"kind": "attr", "field": "gender", "op": "=", "value": "F"},
                {
                    "kind": "not",
                    "cond": {
                        "kind": "and",
                        "all": [
                            {"kind": "tag", "tag": "value_tier", "values": ["gold"]},
                            {"kind": "segment", "segment": "gender", "bucket": "F"},
                            {
                                "kind": "sequence",
                                "steps": [{"event": "view_product"}, {"event": "book_hotel"}],
                                "within": {"amount": 2, "unit": "hours"},
                            },
                        ],
                    },
                },
            ],
        }
    )
    expect(page.locator("#builder-text")).to_have_value(to_text(expected))
    assert from_json(page.evaluate("window.rapportBuilder.condition()")) == expected

    # a segmentation with a planted overlap fails the MECE check; an "other" bucket fixes
    # the uncovered part, not the overlap
    page.goto("/segments/planted")
    expect(page.locator("#mece-fail")).to_contain_text("1 pair(s) of buckets overlap")
    expect(page.locator("#mece-buckets canvas")).to_have_count(1)
    page.screenshot(path=SHOTS.format("mece"), full_page=True)
    page.click("#add-other")
    expect(page.locator("#uncovered")).to_contain_text("the “other” bucket takes them")
    expect(page.locator("#buckets-table")).to_contain_text("other")

    # the lifecycle: refresh places everyone in a stage; the charts draw
    page.goto("/lifecycle")
    page.click("#refresh")
    expect(page.locator("#stages-table")).to_contain_text("retained")
    expect(page.locator("#lifecycle-stages canvas")).to_have_count(1)
    expect(page.locator("#funnel canvas")).to_have_count(1)
    page.wait_for_timeout(500)  # let ECharts animate in
    page.screenshot(path=SHOTS.format("lifecycle"), full_page=True)
