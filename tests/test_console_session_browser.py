"""The console's session in a real browser (headless Chromium): signing in through the form,
the keyboard's first stop (the skip link), a forged form refused, and signing out ending the
session — the pages behind it send the browser back to the sign-in page."""

from __future__ import annotations

from playwright.sync_api import Browser

from tests.console_helpers import PASSWORD, ConsoleServer, shoot


def test_sign_in_keyboard_forged_form_and_sign_out(
    console_server: ConsoleServer, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(f"{console_server.base}/console/customers")
    assert "/console/login" in page.url
    shoot(page, "sign-in")
    page.get_by_label("User name").fill(console_server.user("viewer"))
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_text("Wrong user name or password.").is_visible()
    page.get_by_label("User name").fill(console_server.user("viewer"))
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/customers")  # back where the browser was going
    assert page.get_by_text("Signed in as test-viewer.").is_visible()

    page.keyboard.press("Tab")  # the first stop is the skip link, shown when focused
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    # a form whose CSRF token was tampered with is refused, and nothing happens
    page.evaluate("document.querySelector('form.signout input[name=csrf_token]').value = 'forged'")
    page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("heading", name="Not allowed").is_visible()
    assert "CSRF" in page.inner_text("main")
    shoot(page, "csrf-refused")

    page.goto(f"{console_server.base}/console/customers")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    assert page.get_by_text("Signed out.").is_visible()
    page.goto(f"{console_server.base}/console/customers")
    assert "/console/login" in page.url  # the session is over
    page.close()
