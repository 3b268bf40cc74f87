"""The console under its strict Content-Security-Policy (``script-src 'self'``, no eval) in a
real browser: the main pages of a demo workspace load without one CSP violation, console error
or uncaught exception, and the behaviours that used to be inline handlers (``onclick``,
``hx-on``, ``hx-vals="js:..."``, inline ``<script>``) still work from the static files.

One ``rapport demo`` (persons, events, quarantine, tags, segments, a live lead rule with leads,
a campaign, a placement, journeys) serves every test of the module; each test signs in with a
fresh browser, walks an area of the console and ends with ``console.assert_clean()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from browser.test_console_browser import ARGS, CHROMIUM, SHOTS
from conftest import Server, free_port
from rapport import accounts
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.browser
USER, PASSWORD = "csp.admin", "csp-admin-password"

#: every CSP violation, kept on the page (read before each navigation drops it)
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + e.blockedURI + " " + (e.sample || ""));
});
"""


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``rapport serve`` over a small ``rapport demo``, loaded before the server starts."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed: run `make browser`")
    home = tmp_path_factory.mktemp("csp") / "demo-home"
    home.mkdir()
    srv = Server(home=home, port=free_port())
    out = subprocess.run(
        [sys.executable, "-m", "rapport", "demo", "--persons", "150", "--seed", "7"]
        + ["--as-of", "2026-11-25", "--no-serve", "--workers", "1"],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ws = Workspace(load_settings(home=home))
    accounts.create_user(ws.db, USER, PASSWORD, accounts.Role.admin)
    ws.close()
    srv.start()
    yield srv
    srv.stop()


class Console:
    """A signed-in Chromium tab that records CSP violations, console errors (a failed request
    is one) and uncaught exceptions on every page it shows."""

    def __init__(self, page, url: str) -> None:
        self.page, self.url = page, url
        self.problems: list[str] = []
        self.violations: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught on {page.url}: {e}"))

    def _console(self, message) -> None:
        if message.type == "error":
            self.problems.append(f"console error on {self.page.url}: {message.text}")

    def _collect(self) -> None:
        if self.page.url != "about:blank":
            found = self.page.evaluate("window.__csp || []")
            self.violations += [f"{self.page.url}: {v}" for v in found]

    def visit(self, path: str) -> None:
        """Open ``path`` and wait for its ``load`` event: the deferred scripts (HTMX, the
        console's and the page's own) have run, so a click is handled, not a plain submit."""
        self._collect()
        self.page.goto(path)

    def follow(self, selector: str) -> None:
        """Open the first link matching ``selector``, as ``visit`` does."""
        href = self.page.locator(selector).first.get_attribute("href")
        assert href, selector
        self.visit(href)

    def assert_clean(self) -> None:
        self._collect()
        assert self.violations == [], "\n".join(self.violations)
        assert self.problems == [], "\n".join(self.problems)


def settle(page, path: str = "/events", wait: float = 300) -> None:
    """Wait until the server answers ``path`` (the warehouse follower, catching up on the demo
    after the start, can hold DuckDB's lock longer than a request waits for it)."""
    deadline = time.monotonic() + wait
    while not page.request.get(path).ok and time.monotonic() < deadline:
        time.sleep(2)


@pytest.fixture
def console(demo_server: Server) -> Iterator[Console]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 900}, base_url=demo_server.url
        )
        context.set_default_timeout(20_000)
        context.add_init_script(WATCH)
        tab = Console(context.new_page(), demo_server.url)
        tab.visit("/plan")  # the plan does not read the warehouse: safe while it catches up
        tab.page.fill("input[name=username]", USER)
        tab.page.fill("input[name=password]", PASSWORD)
        tab.page.click("button[type=submit]")
        expect(tab.page).to_have_url(f"{demo_server.url}/plan")
        tab.page.wait_for_load_state()
        settle(tab.page)
        yield tab
        browser.close()


def test_the_policy_is_strict_and_a_violation_is_seen(console):
    page = console.page
    policy = page.evaluate("fetch('/plan').then(r => r.headers.get('content-security-policy'))")
    assert policy.split("script-src")[1].split(";")[0].split() == ["'self'"]
    # the watch works: an injected inline handler does not run, and is reported
    ran = page.evaluate(
        """() => { const b = document.createElement('button');
                   b.setAttribute('onclick', 'window.__ran = 1');
                   document.body.append(b); b.click(); return window.__ran || 0; }"""
    )
    assert ran == 0
    page.wait_for_function("window.__csp.length > 0")
    assert "script-src" in page.evaluate("window.__csp[0]")


def test_data_pages(console):
    """Overview, tracking plan, sources, event explorer with its live tail, quarantine."""
    from playwright.sync_api import expect

    page = console.page
    console.visit("/")  # ECharts draws without eval
    expect(page.locator("[data-chart] canvas").first).to_be_visible()

    # tracking plan: a property's Edit button opens its form row
    console.visit("/plan")
    edit = page.locator("button[data-toggle-next]").first
    form_row = edit.locator("xpath=ancestor::tr[1]/following-sibling::tr[1]")
    expect(form_row).to_be_hidden()
    edit.click()
    expect(form_row).to_be_visible()
    edit.click()
    expect(form_row).to_be_hidden()

    # sources: the new-source form (HTMX) shows the key, then empties and closes itself
    console.visit("/sources")
    page.click("summary:has-text('New source')")
    page.fill("#new-source input[name=name]", "csp_web")
    page.click("#new-source button[type=submit]")
    expect(page.locator("#write-key")).not_to_be_empty()
    expect(page.locator("#new-source")).not_to_have_attribute("open", "")
    expect(page.locator("#new-source input[name=name]")).to_have_value("")
    console.follow("#sources-table a[href^='/sources/']")

    # event explorer: a row expands, and the live tail asks "after the newest offset"
    console.visit("/events")
    row = page.locator("#events-table tr.expandable").first
    detail = page.locator("#events-table tr.detail").first
    row.click()
    expect(detail).to_be_visible()
    row.click()
    expect(detail).to_be_hidden()
    with page.expect_request(lambda r: "/events/tail?" in r.url, timeout=15_000) as tail:
        pass
    after = tail.value.url.split("after=")[1].split("&")[0]
    assert after.isdigit(), tail.value.url
    page.screenshot(path=SHOTS.format("csp-events"), full_page=True)

    # quarantine: a row expands; ticking its checkbox does not
    console.visit("/quarantine")
    row = page.locator("#quarantine-list tr.expandable").first
    detail = page.locator("#quarantine-list tr.detail").first
    row.locator("td").nth(1).click()
    expect(detail).to_be_visible()
    box = row.locator("input[type=checkbox]")
    if box.count():
        box.check()
        expect(detail).to_be_visible()
    row.locator("td").nth(1).click()
    expect(detail).to_be_hidden()
    console.assert_clean()


def test_people_pages(console):
    """Persons, a person's 360 page, tags, segments and the audience builder."""
    from playwright.sync_api import expect

    page = console.page
    console.visit("/persons")
    person = page.evaluate(  # the person with the most events
        """() => [...document.querySelectorAll('#persons-table tbody tr')]
             .map(r => [r.querySelector('a').getAttribute('href'),
                        Number(r.cells[4].textContent.replace(/\\D/g, ''))])
             .sort((a, b) => b[1] - a[1])[0][0]"""
    )
    console.visit(person)
    first = page.locator("#timeline-table tr.expandable").first
    detail = page.locator("#timeline-table tr.detail").first
    expect(detail).to_be_hidden()
    first.click()
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("event_id")
    first.click()
    expect(detail).to_be_hidden()
    filters = page.locator("#timeline-filters")
    filters.locator("select[name=event]").select_option(index=1)
    picked = filters.locator("select[name=event]").input_value()
    assert picked
    with page.expect_response(lambda r: "/timeline?" in r.url and f"event={picked}" in r.url):
        filters.locator("button[type=submit]").click()
    with page.expect_response(lambda r: "/timeline?" in r.url and "event=&" in r.url):
        filters.locator("button[data-clear-form]").click()
    expect(filters.locator("select[name=event]")).to_have_value("")
    expect(filters.locator("select[name=source]")).to_have_value("")

    # tags: choosing a kind fills the definition with its example; a tag's page draws
    console.visit("/tags")
    page.click("summary:has-text('New tag')")
    page.select_option("#new-tag select[name=kind]", "statistical")
    definition = page.locator("#new-tag textarea[name=definition]").input_value()
    assert json.loads(definition) == {"event": "order_paid", "agg": "count", "window_days": 30}
    console.follow("a[href^='/tags/']")

    # segments: the list, a segment, the lifecycle; the builder's save form stays on the page
    console.visit("/segments")
    console.follow("a[href^='/segments/']:not([href$='/new']):not([href$='/edit'])")
    console.visit("/lifecycle")
    expect(page.locator("[data-chart] canvas").first).to_be_visible()
    console.visit("/segments/new")
    page.fill("#builder-save input[name=name]", "csp_probe")
    page.click("#builder-save-button")
    expect(page.locator("#builder-save-error")).to_contain_text("Add at least one")
    expect(page).to_have_url(f"{console.url}/segments/new")
    console.assert_clean()


def test_lead_pages(console):
    """The inbox and a lead, then the rule editor: live validation and a backtest."""
    from playwright.sync_api import expect

    page = console.page
    console.visit("/leads")
    console.follow("#leads-table a[href^='/leads/']")
    expect(page.locator("#lead-history")).to_be_visible()
    console.visit("/leads")  # a filter change refreshes the rows through HTMX
    with page.expect_response(lambda r: "/leads/rows?" in r.url and "status=new" in r.url):
        page.select_option("#lead-filters select[name=status]", "new")

    console.visit("/leads/rules")
    console.follow("#rules-table a[href^='/leads/rules/']")
    # live validation posts with the CSRF token from <body hx-headers>
    expect(page.locator("#rule-check")).to_have_text("The rule is valid.")
    trigger = page.locator("#rule-form textarea[name=trigger]")
    saved = trigger.input_value()
    trigger.fill("event where")
    expect(page.locator("#rule-check")).to_have_class("alert alert-error")
    trigger.fill(saved)
    expect(page.locator("#rule-check")).to_have_text("The rule is valid.")
    # a backtest over the demo's month: the answer is swapped in and its chart drawn
    page.fill("#backtest-form input[name=start]", "2026-10-26T00:00")
    page.fill("#backtest-form input[name=end]", "2026-11-25T00:00")
    page.click("#backtest-run")
    expect(page.locator("#backtest-summary")).to_contain_text("This rule", timeout=60_000)
    assert "?" not in page.url  # HTMX posted it: not a plain GET of the page
    expect(page.locator("#backtest-chart canvas")).to_have_count(1)
    page.screenshot(path=SHOTS.format("csp-backtest"), full_page=True)
    console.assert_clean()


def test_marketing_pages(console):
    """Journeys editor, campaigns, placements, delivery channels and analytics."""
    from playwright.sync_api import expect

    page = console.page
    console.visit("/journeys")
    console.follow("a[href^='/journeys/']:not([href$='/new'])")
    nodes = page.locator(".je-node")
    expect(nodes.first).to_be_visible()
    assert nodes.count() > 2

    console.visit("/campaigns")
    console.follow("a[href^='/campaigns/']:not([href$='/new'])")
    console.visit("/campaigns/new")

    # placements edit: add a variant row and remove it
    console.visit("/placements")
    console.follow("a[href^='/placements/']:not([href$='/new'])")
    rows = page.locator("#variants tbody tr")
    before = rows.count()
    page.click("#add-variant")
    expect(rows).to_have_count(before + 1)
    rows.last.locator(".remove-variant").click()
    expect(rows).to_have_count(before)

    # delivery: the log, then a new channel (the form empties and closes after it)
    console.visit("/delivery")
    console.visit("/delivery/channels")
    page.click("summary:has-text('New channel')")
    page.fill("#new-channel input[name=name]", "csp_calls")
    page.select_option("#new-channel select[name=kind]", "call_list")
    page.fill("#new-channel textarea[name=config]", "{}")
    page.click("#new-channel button[type=submit]")
    expect(page.locator("#channels-list")).to_contain_text("csp_calls")
    expect(page.locator("#new-channel")).not_to_have_attribute("open", "")
    expect(page.locator("#new-channel input[name=name]")).to_have_value("")

    # analytics funnel: "Add step" copies the last step row; a run draws its chart
    console.visit("/analytics/funnel")
    steps = page.locator(".step-row")
    before = steps.count()
    page.click("#add-step")
    expect(steps).to_have_count(before + 1)
    console.visit("/analytics/trends?event=order_paid&start=2026-10-26&end=2026-11-25")
    expect(page.locator("#analysis-chart canvas")).to_have_count(1)
    console.assert_clean()


def test_admin_pages(console):
    """Users (the new-user form resets after a create), identity, jobs, audit and the rest."""
    from playwright.sync_api import expect

    page = console.page
    console.visit("/users")
    page.click("summary:has-text('New user')")
    page.fill("details input[name=username]", "csp.viewer")
    page.fill("details input[name=password]", "viewer-password")
    page.locator("details button[type=submit]").click()
    expect(page.locator("#users-table")).to_contain_text("csp.viewer")
    expect(page.locator("details.inline-form")).not_to_have_attribute("open", "")
    expect(page.locator("details input[name=username]")).to_have_value("")
    for path in ("/identity", "/coupons", "/recommendations", "/jobs", "/audit", "/leads/teams"):
        console.visit(path)
        expect(page.locator("main")).to_be_visible()
    console.assert_clean()
