"""The customer and tag pages in headless Chromium, as their users see them: an admin
searches, opens a customer's 360 page, adds a tag, credits points, redeems a reward and
erases a customer after the confirmation step; an operator downloads an export; a marketer
applies a tag from the tags page; a viewer on a phone-sized screen sees masked data and no
control. A screenshot of every page, wide and narrow, goes to test-artifacts/console/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.console_helpers import ConsoleServer, shoot
from tests.test_console_customers import seed

# one database is enough here: the HTTP tests cover both
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_admin_works_on_a_customer_in_the_browser(
    console_server: ConsoleServer, browser: Browser
) -> None:
    seed(console_server.runtime)
    page = console_server.open(browser, "admin")
    page.get_by_role("link", name="Customers", exact=True).click()
    expect(page.get_by_role("heading", name="All customers")).to_be_visible()
    shoot(page, "customers-list")
    page.get_by_label("Search", exact=True).fill("zhang")
    page.get_by_label("Search in").select_option("name")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Matching customers")).to_be_visible()
    expect(page.get_by_role("cell", name="Zhang Min")).to_be_visible()
    shoot(page, "customers-search")

    page.goto(console_server.base + "/console/customers/C0005")
    expect(page.locator("#points-title")).to_contain_text("Points")
    tags = page.locator("#tags")
    expect(tags.get_by_role("cell", name="rule big-spender")).to_be_visible()
    page.get_by_label("Add a tag by hand").fill("vip-event")
    page.get_by_role("button", name="Add tag").click()
    expect(page.get_by_role("status")).to_have_text("Tag vip-event added to C0005.")
    expect(tags.get_by_text("Ada Admin")).to_be_visible()  # who set it, by hand

    page.get_by_label("Amount (negative to debit)").fill("250")
    page.get_by_label("Reason", exact=True).fill("goodwill after a late delivery")
    page.get_by_role("button", name="Adjust").click()
    expect(page.get_by_role("status")).to_contain_text("250.00 points credited")
    page.get_by_label("Reward", exact=True).select_option("coffee-voucher")
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_role("status")).to_contain_text("Redeemed coffee-voucher for 500 points")
    expect(page.locator("#points").get_by_text("goodwill after a late delivery")).to_be_visible()
    shoot(page, "customer-360")

    page.goto(console_server.base + "/console/customers/C0001")
    expect(page.get_by_text("its last message was suppressed: frequency cap")).to_be_visible()
    shoot(page, "customer-360-journey")
    page.get_by_role("link", name="Erase…").click()
    expect(page.get_by_role("heading", name="Erase C0001?")).to_be_visible()
    shoot(page, "customer-erase-confirm")
    page.get_by_label("Type the customer id").fill("C0002")
    page.get_by_role("button", name="Erase personal data").click()
    expect(page.get_by_role("alert")).to_contain_text("type the customer's id exactly")
    page.get_by_label("Type the customer id").fill("C0001")
    page.get_by_role("button", name="Erase personal data").click()
    expect(page.get_by_role("status").first).to_contain_text("C0001 erased")
    expect(page.get_by_role("heading", name="C0001")).to_be_visible()  # no name any more
    shoot(page, "customer-erased")
    page.context.close()


def test_operator_downloads_an_export(
    console_server: ConsoleServer, browser: Browser, tmp_path: Path
) -> None:
    seed(console_server.runtime)
    page = console_server.open(browser, "operator")
    page.goto(console_server.base + "/console/customers/C0003")
    expect(page.get_by_role("link", name="Erase…")).to_have_count(0)
    expect(page.get_by_label("Add a tag by hand")).to_have_count(0)
    with page.expect_download() as info:
        page.get_by_role("button", name="Export data (JSON)").click()
    download = info.value
    assert download.suggested_filename == "customer-C0003.json"
    path = tmp_path / "export.json"
    download.save_as(path)
    doc = json.loads(path.read_text())
    assert doc["customer_id"] == "C0003" and doc["profile"]["name"] == "Zhang Min"
    page.context.close()


def test_marketer_applies_a_tag_on_the_tags_page(
    console_server: ConsoleServer, browser: Browser
) -> None:
    seed(console_server.runtime)
    page = console_server.open(browser, "marketer")
    page.get_by_role("link", name="Tags", exact=True).click()
    expect(page.get_by_role("heading", name="Every tag")).to_be_visible()
    churn = page.locator("tr", has_text="churn-risk")
    expect(churn.get_by_text("nobody carries it")).to_be_visible()
    page.get_by_label("Customer id").fill("C0009")
    page.get_by_label("Tag", exact=True).fill("churn-risk")
    page.get_by_label("Action").select_option("add")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Tag churn-risk added to C0009.")
    expect(churn.get_by_text("test-marketer")).to_be_visible()
    expect(churn.get_by_role("link", name="1")).to_be_visible()
    shoot(page, "tags")
    churn.get_by_role("link", name="1").click()
    expect(page.get_by_role("cell", name="C0009")).to_be_visible()
    page.context.close()


def test_viewer_on_a_phone_sees_masked_data_and_no_control(
    console_server: ConsoleServer, browser: Browser
) -> None:
    seed(console_server.runtime)
    page = console_server.open(browser, "viewer", width=390)
    base = console_server.base
    page.goto(base + "/console/customers")
    expect(page.get_by_text("masked for your role")).to_be_visible()
    shoot(page, "customers-list-narrow")
    page.get_by_role("link", name="C0001").click()
    expect(page.get_by_text("l***@example.com")).to_be_visible()
    for control in ("Adjust", "Redeem", "Add tag", "Export data (JSON)"):
        expect(page.get_by_role("button", name=control, exact=True)).to_have_count(0)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways on a phone"
    shoot(page, "customer-360-narrow")
    page.goto(base + "/console/tags")
    expect(page.get_by_role("heading", name="Every tag")).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "tags-narrow")
    page.context.close()
