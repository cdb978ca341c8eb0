"""The overview and automations pages in headless Chromium, as people use them, on a seeded
store (the example customers, events and rules, a month of recent events, journeys with
enrollments, automation runs) with Temporal away: an admin reads every panel and follows one
to its page; an operator finds a failed run's error, opens its schedule and presses Trigger
(refused with the reason: Temporal does not answer); a viewer sees no Trigger button; a
marketer sees only the panels of the areas it reads; with the Temporal dev server, an
operator triggers a schedule and sees its run complete. A screenshot of each page, wide and
narrow (test-artifacts/console/)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, insert

from crmflow.ingest import import_file
from crmflow.services import schedules as schedules_service
from store import kpi
from store.models import (
    AutomationRunRow,
    EnrollmentRow,
    JourneyRow,
    JourneyVersionRow,
    PointsLotRow,
)
from tests.conftest import free_port
from tests.console_helpers import ConsoleServer, shoot
from tests.rules_helpers import REPO, deploy_dir
from tests.test_console_automations import (  # noqa: F401  (console_on_dev: the fixture)
    TemporalThread,
    console_on_dev,
    schedules_file,
)
from tests.test_console_overview import run_row

NARROW = 390


WELCOME_WITH_GOAL = {
    **yaml.safe_load((REPO / "examples" / "journeys" / "winback.yaml").read_text()),
    "journey": "welcome",
    "goal": {"event": "purchase", "within_days": 30},
}


def seed_realistic(engine: Engine, tmp_path: Path) -> None:
    """The examples, plus what a running programme has: recent events, points about to
    expire, journeys' enrollments and a month of nightly runs (one failed, one retrying)."""
    now = datetime.now(UTC)
    deploy_dir(engine, REPO / "examples/rules")
    import_file(engine, REPO / "examples/customers.jsonl", "customers")
    import_file(engine, REPO / "examples/events.jsonl", "events")
    rnd = random.Random(15)
    ids = [f"C{n:04}" for n in range(1, 29)]
    recent = []
    for day in range(30):
        for k in range(rnd.randint(2, 9) + (6 if day % 7 in (5, 6) else 0)):
            at = now - timedelta(days=day, hours=rnd.randint(0, 20))
            kind = "purchase" if k % 3 == 0 else "sign_in"
            recent.append(
                {
                    "event_id": f"recent-{day}-{k}",
                    "customer_id": rnd.choice(ids),
                    "type": kind,
                    "occurred_at": at.isoformat(),
                    "properties": {"amount": float(rnd.choice([99, 199, 599])), "currency": "CNY"}
                    if kind == "purchase"
                    else {},
                }
            )
    path = tmp_path / "recent.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in recent))
    report = import_file(engine, path, "events")
    assert report.rejected == 0, report
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLotRow),
            [
                {
                    "customer_id": c,
                    "earned": Decimal(300),
                    "remaining": Decimal(120 + 40 * i),
                    "earned_at": now - timedelta(days=340),
                    "expires_at": now + timedelta(days=5 + 3 * i),
                    "source": "seed",
                }
                for i, c in enumerate(ids[:6])
            ],
        )
        journeys = {
            "welcome": ("active", [("active", 9), ("converted", 14), ("completed", 20)]),
            "winback": ("active", [("active", 5), ("converted", 3), ("held_out", 4)]),
            "points-expiring": ("paused", [("completed", 11), ("exited", 2)]),
        }
        for name, (status, counts) in journeys.items():
            conn.execute(
                insert(JourneyRow), [{"name": name, "status": status, "active_version": "v1"}]
            )
            # welcome's goal: a purchase within 30 days of entering (the others have none)
            definition = WELCOME_WITH_GOAL if name == "welcome" else {}
            conn.execute(
                insert(JourneyVersionRow),
                [{"journey": name, "version": "v1", "definition": definition, "source": ""}],
            )
            rows = []
            for s, n in counts:
                rows += [
                    {
                        "workflow_id": f"journey-{name}-{s}-{i}",
                        "journey": name,
                        "version": "v1",
                        "customer_id": ids[i % len(ids)],
                        "entry_no": i + 1,
                        "status": s,
                        "variant": "holdout" if s == "held_out" else None,
                        "entered_at": now - timedelta(days=i % 20),
                    }
                    for i in range(n)
                ]
            conn.execute(insert(EnrollmentRow), rows)
        runs = []
        for day in range(1, 15):
            d = (now - timedelta(days=day)).date().isoformat()
            started = now - timedelta(days=day, hours=-2)
            runs.append(
                run_row(
                    "t-expiry",
                    d,
                    1,
                    "completed",
                    started_at=started,
                    automation="points_expiry",
                    counts={"lots_expired": day * 3, "points_expired": day * 410.5, "warned": 7},
                )
            )
            runs.append(
                run_row(
                    "t-tags", d, 1, "completed", started_at=started, counts={"tags_removed": day}
                )
            )
        today = now.date().isoformat()
        runs += [
            run_row(
                "t-expiry",
                today,
                1,
                "failed",
                automation="points_expiry",
                step="expire",
                error="activity StartToClose timeout: the database did not answer within 12h "
                "(heartbeat lost at lot 18,200)",
            ),
            run_row("t-tags", today, 1, "failed", error="connection reset by peer"),
            run_row("t-tags", today, 2, "running", step="expire"),
        ]
        conn.execute(insert(AutomationRunRow), runs)


@pytest.fixture
def seeded(console_server: ConsoleServer, tmp_path: Path) -> ConsoleServer:
    settings = console_server.runtime.settings
    settings.schedules_file = schedules_file(tmp_path / "schedules.yaml")
    settings.temporal_address = f"127.0.0.1:{free_port()}"  # nothing listens: Temporal away
    seed_realistic(console_server.runtime.engine, tmp_path)
    return console_server


def _narrow(page: Page, name: str) -> None:
    page.set_viewport_size({"width": NARROW, "height": 800})
    shoot(page, name)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_an_admin_reads_the_overview_and_follows_a_panel(
    seeded: ConsoleServer, browser: Browser
) -> None:
    page = seeded.open(browser, "admin")
    page.goto(seeded.base + "/console/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for heading in (
        "Members by tier",
        "Points",
        "Customer events per day",
        "Journeys",
        "Automation runs needing attention",
    ):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    # the projects panel comes after the page, from Temporal: away, and it says so
    projects = page.locator("#projects-panel")
    expect(projects).to_contain_text("Temporal is not reachable")
    expect(page.locator("svg.chart")).to_have_count(2)
    expect(page.locator("svg.chart").last.locator("rect.bar")).to_have_count(30)
    journeys = page.get_by_role("table").filter(has_text="Converted")
    # a conversion is the goal event in time, whatever the enrollment's state (store.kpi)
    with seeded.runtime.engine.connect() as conn:
        welcome = kpi.journey_conversions(conn)["welcome"]
    assert 0 < welcome.converted < welcome.enrolled == 43
    rate = f"{100 * welcome.converted / welcome.enrolled:.1f}%"
    expect(journeys.get_by_role("row", name="welcome")).to_contain_text(rate)
    expect(page.get_by_role("link", name="t-tags")).to_be_visible()
    expect(page.get_by_text("heartbeat lost")).to_be_visible()
    shoot(page, "overview")
    _narrow(page, "overview-narrow")
    page.get_by_role("link", name="Automations →").click()
    expect(page).to_have_url(seeded.base + "/console/automations")
    expect(page.get_by_role("heading", name="Automations", exact=True)).to_be_visible()


def test_an_operator_opens_a_failed_run_and_presses_trigger(
    seeded: ConsoleServer, browser: Browser
) -> None:
    page = seeded.open(browser, "operator")
    page.goto(seeded.base + "/console/automations")
    expect(page.get_by_text("Temporal is not reachable.")).to_be_visible()
    schedules = page.get_by_role("table").first
    expect(schedules.get_by_role("row")).to_have_count(3)  # a header and two schedules
    expect(schedules.get_by_role("row", name="t-tags")).to_contain_text("retrying")
    runs = page.get_by_role("table").nth(1)
    expect(runs).to_contain_text("heartbeat lost")
    expect(page.get_by_text("Runs 1\N{EN DASH}31 of 31")).to_be_visible()
    shoot(page, "automations")
    _narrow(page, "automations-narrow")
    page.get_by_role("link", name="t-expiry").first.click()
    expect(page.get_by_role("heading", name="t-expiry", exact=True)).to_be_visible()
    expect(page.get_by_text("Unknown: Temporal did not answer.")).to_be_visible()
    expect(page.get_by_text("points expired")).to_have_count(14)
    shoot(page, "automation-schedule")
    page.get_by_role("button", name="Trigger t-expiry now").click()
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("t-expiry was not triggered")
    expect(notice).to_contain_text("cannot reach Temporal")
    expect(page).to_have_url(seeded.base + "/console/automations/t-expiry")
    shoot(page, "automation-trigger-refused")
    _narrow(page, "automation-schedule-narrow")


def test_a_viewer_has_no_trigger_and_a_marketer_only_its_panels(
    seeded: ConsoleServer, browser: Browser
) -> None:
    page = seeded.open(browser, "viewer")
    page.goto(seeded.base + "/console/automations")
    expect(page.get_by_text("heartbeat lost")).to_be_visible()
    expect(page.get_by_role("button", name="Trigger")).to_have_count(0)
    page.goto(seeded.base + "/console/automations/t-tags")
    expect(page.get_by_role("button", name="Trigger")).to_have_count(0)
    marketer = seeded.open(browser, "marketer")
    marketer.goto(seeded.base + "/console/")
    expect(marketer.get_by_role("heading", name="Journeys", exact=True)).to_be_visible()
    expect(marketer.get_by_role("heading", name="Automation runs needing attention")).to_have_count(
        0
    )
    expect(marketer.locator("#projects-panel")).to_have_count(0)
    expect(marketer.get_by_role("link", name="Automations")).to_have_count(0)
    shoot(marketer, "overview-marketer")


@pytest.mark.devserver
def test_an_operator_triggers_a_run_and_watches_it_complete(
    console_on_dev: tuple[ConsoleServer, TemporalThread],  # noqa: F811
    browser: Browser,
) -> None:
    console, temporal = console_on_dev
    rt = console.runtime
    temporal.run(schedules_service.apply(rt, rt.settings.schedules_file))
    page = console.open(browser, "operator")
    page.goto(console.base + "/console/automations")
    schedules = page.get_by_role("table").first
    expect(schedules.get_by_role("row", name="dev-tags")).to_contain_text("active")
    expect(page.get_by_text("Temporal is not reachable")).to_have_count(0)
    shoot(page, "automations-live")
    page.get_by_role("link", name="dev-tags").click()
    expect(page.get_by_role("heading", name="On the Temporal server")).to_be_visible()
    page.get_by_role("button", name="Trigger dev-tags now").click()
    expect(page.get_by_role("status").first).to_contain_text("dev-tags started now")
    runs = page.get_by_role("table").filter(has_text="Run date")
    for _ in range(100):  # the worker takes it within moments; the page shows it then
        if runs.count() and "completed" in runs.inner_text():
            break
        page.wait_for_timeout(200)
        page.reload()
    expect(runs.get_by_role("row").nth(1)).to_contain_text("completed")
    shoot(page, "automation-schedule-live")
