"""The Rules pages in headless Chromium, as their users see them: a marketer opens Rules,
compares two versions, runs the tester on a purchase of an example customer and sees the
rules that fire with their effects and one that does not with its reason, is told which
field of a bad event is wrong, and activates the older version; a viewer sees the versions
and runs the tester but has no Activate button. Screenshots of every Rules page, wide and
narrow (390 px), go to test-artifacts/console/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy import Engine

from tests.console_helpers import ConsoleServer, shoot
from tests.test_console_rules import active, seed

# one database is enough here: the HTTP tests cover both
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

NARROW = 390
# the elements that stick out of the screen (a table may scroll inside its .table-wrap)
WIDER_THAN_SCREEN = """() => document.documentElement.scrollWidth <= window.innerWidth ? [] :
  [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
    && !(e.parentElement && e.parentElement.closest('.table-wrap, pre')))
  .slice(0, 5)
  .map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)
  .concat(['scrollWidth ' + document.documentElement.scrollWidth])"""


def fired_table(page: Page) -> Locator:
    return page.get_by_role("table", name="Fired", exact=True)


def not_fired_table(page: Page) -> Locator:
    return page.get_by_role("table", name="Not fired", exact=True)


def test_marketer_compares_versions_and_tests_a_purchase(
    console_server: ConsoleServer, browser: Browser, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    page = console_server.open(browser, "marketer")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Rules").click()
    expect(page.get_by_role("heading", name="Rules", exact=True)).to_be_visible()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text(v2)
    expect(rows.nth(0)).to_contain_text("active")
    expect(rows.nth(0)).to_contain_text("Acme Rewards")
    expect(rows.nth(1)).to_contain_text(v1)
    expect(page.get_by_role("button", name=f"Activate version {v1}")).to_be_visible()
    expect(page.get_by_role("button", name=f"Activate version {v2}")).to_have_count(0)
    shoot(page, "rules-versions")

    # compare: the picker offers the older version against the newer
    expect(page.get_by_label("From version")).to_have_value(v1)
    expect(page.get_by_label("To version")).to_have_value(v2)
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Rules added")).to_be_visible()
    added = page.locator("#added")
    expect(added).to_contain_text("vip-order")
    expect(added).to_contain_text("<script>alert(1)</script>")  # shown as text, not run
    expect(page.locator("#removed")).to_contain_text("lead-sla-48h")
    changed = page.locator("#changed")
    expect(changed).to_contain_text("big-spender")
    expect(changed.locator("pre.diff .del")).to_have_text("    - event.amount >= 1000")
    expect(changed.locator("pre.diff .add")).to_have_text("    - event.amount >= 1500")
    programme = page.locator("#programme")
    expect(programme).to_contain_text("points.earn_rate")
    expect(programme).to_contain_text("silver.qualify.threshold")
    shoot(page, "rules-diff")

    # the tester: pick the customer, then one of their purchases
    page.get_by_role("navigation", name="Rules").get_by_role("link", name="Tester").click()
    page.get_by_label("Customer id").fill("C0002")
    page.get_by_role("button", name="Show recent events").click()
    expect(page.get_by_role("heading", name="Recent events of C0002")).to_be_visible()
    page.get_by_role("link", name="Use event evt-00008").click()
    expect(page.get_by_label("Event (JSON)")).to_have_value(re.compile(r'"event_id": "evt-00008"'))
    expect(page.get_by_label("Rules version")).to_have_value(v2)
    page.get_by_role("button", name="Run the test").click()
    result = page.locator("#result")
    expect(result).to_contain_text("Nothing was changed")
    fired = fired_table(page)
    earn = fired.locator("tr", has_text="earn-on-purchase")
    expect(earn).to_contain_text("event.amount = 599")
    expect(earn).to_contain_text("earn")
    expect(earn).to_contain_text("points: 1,437")  # 599 at earn rate 2 and silver's 1.2, floored
    welcome = not_fired_table(page).locator("tr", has_text="welcome-bonus")
    expect(welcome).to_contain_text("not listening")
    expect(welcome).to_contain_text("listens to sign_up, not purchase")
    upgrade = not_fired_table(page).locator("tr", has_text="upgrade-on-spend")
    expect(upgrade).to_contain_text("condition false")
    expect(upgrade).to_contain_text("spend_365d >= 8000 was false")
    shoot(page, "rules-test")

    # a bad event: the page says which field is wrong
    page.get_by_label("Event (JSON)").fill(
        '{"event_id": "x", "type": "purchase", "occurred_at": "last tuesday"}'
    )
    page.get_by_role("button", name="Run the test").click()
    expect(page.get_by_role("alert")).to_contain_text("event.occurred_at")
    expect(page.locator("#result")).to_have_count(0)
    shoot(page, "rules-test-error")

    # roll back to the older version
    rules_nav = page.get_by_role("navigation", name="Rules")
    rules_nav.get_by_role("link", name="Versions", exact=True).click()
    page.get_by_role("button", name=f"Activate version {v1}").click()
    expect(page.get_by_role("status")).to_contain_text(f"rules version {v1} is active")
    expect(page.get_by_role("button", name=f"Activate version {v2}")).to_be_visible()
    assert active(engine) == v1
    shoot(page, "rules-activated")
    page.context.close()

    # every page on a narrow screen
    narrow = console_server.open(browser, "marketer", width=NARROW)
    for name, path in (
        ("rules-versions-narrow", "/console/rules"),
        ("rules-diff-narrow", f"/console/rules/diff?a={v1}&b={v2}"),
        ("rules-test-narrow", "/console/rules/test?customer=C0002&event=evt-00008"),
    ):
        narrow.goto(console_server.base + path)
        shoot(narrow, name)
        wide = narrow.evaluate(WIDER_THAN_SCREEN)
        assert not wide, f"{path}: wider than a {NARROW}px screen: {wide}"
    narrow.get_by_role("button", name="Run the test").click()
    expect(fired_table(narrow)).to_contain_text("earn-on-purchase")
    shoot(narrow, "rules-test-result-narrow")
    narrow.context.close()


def test_viewer_sees_versions_and_runs_the_tester_without_activate(
    console_server: ConsoleServer, browser: Browser, engine: Engine, tmp_path: Path
) -> None:
    v1, v2 = seed(engine, tmp_path)
    page = console_server.open(browser, "viewer")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Rules").click()
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Activate")).to_have_count(0)
    expect(page.get_by_role("button", name="Compare")).to_be_visible()
    shoot(page, "rules-versions-viewer")
    page.locator("tbody tr").nth(1).get_by_role("link", name="Test").click()
    expect(page.get_by_label("Rules version")).to_have_value(v1)
    page.get_by_label("Event (JSON)").fill(
        '{"event_id": "v-1", "customer_id": "NEW-1", "type": "sign_up",'
        ' "occurred_at": "2026-11-20T10:00:00+08:00"}'
    )
    page.get_by_role("button", name="Run the test").click()
    welcome = fired_table(page).locator("tr", has_text="welcome-bonus")
    expect(welcome).to_contain_text("points: 200")
    expect(welcome).to_contain_text("new-member")
    expect(page.locator("#result")).to_contain_text("not active")
    shoot(page, "rules-test-viewer")
    assert active(engine) == v2
    page.context.close()
