"""The console for tests: a real uvicorn server with a user per role, signed-in HTTP clients,
and headless Chromium (Debian's, driven by Playwright) that saves a screenshot of each page.

(console_server and browser are fixtures of tests/conftest.py)

def test_x(console_server: ConsoleServer) -> None:
    with console_server.signed_in("marketer") as http:    # httpx, session cookie set
        page = http.get("/console/journeys")
        http.post("/console/…", data={..., "csrf_token": csrf_of(page.text)})

def test_y(console_server: ConsoleServer, browser: Browser) -> None:
    page = console_server.open(browser, "project_manager")  # signed in through the form
    page.goto(console_server.base + "/console/projects")
    shoot(page, "projects")                                # test-artifacts/console/projects.png
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import Engine

from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from crmflow.services.users import NewUser, create_user
from tests.api_helpers import make_settings, serve
from tests.conftest import free_port

PASSWORD = "correct horse battery staple"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# a team member for the project manager, so sign-offs by role can be tested
PEOPLE = {"project_manager": "Peter Wang", "admin": "Ada Admin"}

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a console page."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


@dataclass
class ConsoleServer:
    base: str
    runtime: Runtime

    def user(self, role: Role | str) -> str:
        """The name of the test user of `role` (made by the fixture)."""
        return f"test-{Role(role).value}"

    @contextmanager
    def signed_in(self, role: Role | str) -> Iterator[httpx.Client]:
        """An HTTP client signed in through the sign-in form as the user of `role`."""
        with httpx.Client(base_url=self.base, timeout=60, follow_redirects=False) as http:
            page = http.get("/console/login")
            r = http.post(
                "/console/login",
                data={
                    "name": self.user(role),
                    "password": PASSWORD,
                    "csrf_token": csrf_of(page.text),
                },
            )
            assert r.status_code == 303, r.text
            yield http

    def open(self, browser: Browser, role: Role | str, width: int = 1280) -> Page:
        """A new browser page signed in as the user of `role` (through the form)."""
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        page.goto(f"{self.base}/console/login")
        page.get_by_label("User name").fill(self.user(role))
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()
        return page


@pytest.fixture
def console_server(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConsoleServer]:
    """crmflow's API and console on the test database, a user per role (password PASSWORD)."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    runtime = Runtime(make_settings(tmp_path, f"http://127.0.0.1:{port}"), engine)
    for role in Role:
        create_user(
            runtime,
            NewUser(
                name=f"test-{role.value}",
                role=role,
                person=PEOPLE.get(role.value),
                password=PASSWORD,
            ),
        )
    for base in serve(runtime, port):
        yield ConsoleServer(base, runtime)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium (skipped nowhere: CI installs it; a missing one fails).

    Module-scoped: Playwright's sync API keeps an event loop running on the main thread
    while it is open, and an async test after it would find a loop already running."""
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def shoot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artefact; its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
