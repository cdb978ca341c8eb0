"""The journey pages in headless Chromium, as their users see them: a marketer finds a
journey's graph and the counts on its steps, opens the enrollments at a step, pauses and
resumes the journey, and never sees a project sign-off button; a viewer sees the graph and
no pause/resume. A screenshot of every journey page, wide and narrow."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.console_helpers import ConsoleServer, shoot
from tests.test_console_journeys import seed_journeys

SIGN_OFF = re.compile(r"sign.?off", re.I)
PAUSE_OR_RESUME = re.compile(r"pause|resume", re.I)


def no_sign_off(page: Page) -> None:
    expect(page.get_by_role("button", name=SIGN_OFF)).to_have_count(0)
    expect(page.get_by_role("link", name=SIGN_OFF)).to_have_count(0)


def test_a_marketer_finds_the_graph_and_its_counts(
    console_server: ConsoleServer, browser: Browser, tmp_path: Path
) -> None:
    seed_journeys(console_server.runtime, tmp_path)
    page = console_server.open(browser, "marketer")
    page.goto(f"{console_server.base}/console/journeys")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Journeys").click()
    expect(page.get_by_role("heading", name="Journeys")).to_be_visible()
    no_sign_off(page)
    shoot(page, "journeys-list")

    page.get_by_role("link", name="winback", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile(r"^winback"))).to_be_visible()
    graph = page.locator("svg.journey-graph")
    expect(graph).to_be_visible()
    mail = graph.locator('g[data-node="discount_email"]')
    expect(mail).to_be_visible()
    expect(mail).to_contain_text("sent 170")
    expect(mail).to_contain_text("suppressed 10")
    expect(graph.locator('g[data-node="wait_purchase"]')).to_contain_text("waiting 88")
    expect(graph.locator('g[data-node="~holdout~offer_test"]')).to_contain_text("held out 40")
    conversions = page.locator("#conversions")
    expect(conversions).to_contain_text("30.0%")
    expect(conversions).to_contain_text("no clear difference")
    no_sign_off(page)
    shoot(page, "journey-winback")

    # a step is a link to the enrollments there
    graph.get_by_role("link", name=re.compile(r"^wait_purchase:")).click()
    expect(
        page.get_by_role("heading", name=re.compile("Enrollments at wait_purchase"))
    ).to_be_visible()
    expect(page.get_by_text("210 enrollments")).to_be_visible()
    no_sign_off(page)
    shoot(page, "journey-enrollments")
    page.get_by_label("Status").select_option("active")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("88 enrollments")).to_be_visible()
    page.get_by_role("link", name="Older →").click()
    expect(page.get_by_text("page 2 of 2")).to_be_visible()
    first = page.locator("tbody a").first
    customer = first.inner_text()
    assert first.get_attribute("href") == f"/console/customers/{customer}"

    # pause and resume
    page.goto(f"{console_server.base}/console/journeys/winback")
    page.get_by_role("button", name="Pause journey").click()
    expect(page.get_by_role("status")).to_contain_text("Journey winback paused")
    expect(page.get_by_role("heading", name=re.compile("winback"))).to_contain_text("paused")
    shoot(page, "journey-winback-paused")
    page.get_by_role("button", name="Resume journey").click()
    expect(page.get_by_role("status")).to_contain_text("resumed")

    # the small sample and a journey without a goal
    page.goto(f"{console_server.base}/console/journeys/points-expiring")
    expect(page.locator("#conversions")).to_contain_text("small sample")
    expect(page.locator("#conversions")).not_to_contain_text(" pp")
    no_sign_off(page)
    shoot(page, "journey-points-expiring")
    page.goto(f"{console_server.base}/console/journeys/welcome")
    expect(page.locator("svg.journey-graph")).to_be_visible()
    shoot(page, "journey-welcome")
    page.context.close()


def test_a_viewer_sees_the_graph_but_no_pause(
    console_server: ConsoleServer, browser: Browser, tmp_path: Path
) -> None:
    seed_journeys(console_server.runtime, tmp_path)
    page = console_server.open(browser, "viewer")
    page.goto(f"{console_server.base}/console/journeys/winback")
    expect(page.locator("svg.journey-graph")).to_be_visible()
    expect(page.locator('g[data-node="reminder"]')).to_contain_text("failed 4")
    expect(page.get_by_role("button", name=PAUSE_OR_RESUME)).to_have_count(0)
    no_sign_off(page)
    page.context.close()


def test_narrow_screens(console_server: ConsoleServer, browser: Browser, tmp_path: Path) -> None:
    seed_journeys(console_server.runtime, tmp_path)
    page = console_server.open(browser, "marketer", width=390)
    for path, name in (
        ("journeys", "journeys-list-narrow"),
        ("journeys/winback", "journey-winback-narrow"),
        ("journeys/winback/enrollments?node=wait_purchase", "journey-enrollments-narrow"),
    ):
        page.goto(f"{console_server.base}/console/{path}")
        # nothing but the graph's and tables' own scrollers is wider than the screen
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390, f"{path} is {overflow}px wide"
        shoot(page, name)
    graph = page.goto(f"{console_server.base}/console/journeys/winback")
    assert graph is not None
    expect(page.locator("svg.journey-graph")).to_be_visible()
    page.context.close()
