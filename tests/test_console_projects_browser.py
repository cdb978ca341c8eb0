"""The project pages in headless Chromium, as their users see them, against the Temporal dev
server: the project manager (Peter Wang, project_manager on the example team) opens the
portfolio and a project, is refused a sign-off whose checklist is open (the workflow's reason
is the notice), checks an item, signs the go-live gate and sees it signed; a marketer has no
projects pages; a viewer sees a project without a single control. Screenshots of each page,
wide and narrow, go to test-artifacts/console/."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Browser, expect

from crmflow.contracts.projects import DoneInput, RiskAddInput, SignOffInput, StageInput
from crmflow.services import projects as service
from projects.state import RiskInput
from tests.console_helpers import ARTIFACTS, shoot
from tests.test_console_projects import ProjectConsole, project_console  # noqa: F401

# one database is enough here: the pages read Temporal, the HTTP tests cover both
pytestmark = [
    pytest.mark.devserver,
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
]


def seed(pc: ProjectConsole) -> tuple[str, str]:
    """A rollout five weeks in (late, with progress, sign-offs and risks) and one starting
    next Monday; their names."""
    rt, run = pc.runtime, pc.run
    tag = uuid.uuid4().hex[:4]
    today = datetime.now(UTC).date()
    late = f"Acme CRM rollout {tag}"
    fresh = f"Loyalty relaunch {tag}"
    pc.create(late, start=today - timedelta(weeks=5, days=today.weekday()))
    pc.create(fresh, start=today + timedelta(days=7 - today.weekday()))
    began = today - timedelta(weeks=5, days=today.weekday())
    run(service.start_stage(rt, late, StageInput(stage="requirements", by="Peter Wang", on=began)))
    pc.check(late, "stakeholder-interviews", "smart-goals", "kpi-baseline")
    pc.check(late, "process-map", by="Amy Xu")
    pc.check(late, "budget", by="Grace Chen")
    run(service.done(rt, late, DoneInput(milestone="kick-off", by="Peter Wang")))
    for who in ("Grace Chen", "Lily Zhao"):
        run(service.signoff(rt, late, SignOffInput(gate="requirements-approval", by=who)))
    pc.check(late, "rfp", "security-review", by="Ivan Sun")
    pc.check(late, "raci", "risk-register", by="Peter Wang")
    for title, owner, p, i in (
        ("POS vendor slow to deliver the integration API", "Ivan Sun", "high", "medium"),
        ("Legacy points balances do not reconcile", "Lily Zhao", "medium", "medium"),
    ):
        risk = RiskInput(title=title, owner=owner, probability=p, impact=i)
        run(service.add_risk(rt, late, RiskAddInput(risk=risk, by="Peter Wang")))
    return late, fresh


def test_project_manager_signs_a_gate_in_the_browser(
    project_console: ProjectConsole,  # noqa: F811
    browser: Browser,
) -> None:
    pc, server = project_console, project_console.server
    late, fresh = seed(pc)
    try:
        page = server.open(browser, "project_manager")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Projects").click()
        for _ in range(100):  # visibility lists a new workflow after a moment
            if (
                page.get_by_role("link", name=late).count()
                and page.get_by_role("link", name=fresh).count()
            ):
                break
            time.sleep(0.1)
            page.reload()
        expect(page.get_by_role("heading", name="Projects")).to_be_visible()
        late_row = page.locator("tr", has=page.get_by_role("link", name=late))
        expect(late_row).to_contain_text(re.compile(r"RED|AMBER"))
        expect(late_row).to_contain_text(re.compile(r"\d+ working days? late"))
        expect(page.locator("tr", has=page.get_by_role("link", name=fresh))).to_contain_text(
            "GREEN"
        )
        shoot(page, "projects-portfolio")
        page.set_viewport_size({"width": 390, "height": 844})
        shoot(page, "projects-portfolio-narrow")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.set_viewport_size({"width": 1280, "height": 900})

        page.get_by_role("link", name=late).click()
        expect(page.get_by_role("heading", name=late)).to_be_visible()
        expect(page.locator(".chart-scroll svg")).to_be_visible()
        gate = page.locator("tr#gate-go-live-approval")
        # Peter Wang holds project_manager, which the go-live gate needs; not the sponsor's
        expect(gate.get_by_role("button", name="Sign off")).to_be_visible()
        expect(page.locator("tr#gate-vendor-decision").get_by_role("button")).to_have_count(0)

        gate.get_by_role("button", name="Sign off").click()
        notice = page.locator("p.notice")
        expect(notice).to_contain_text(
            "gate 'Go-live approval' cannot be signed yet: required checklist items are "
            "still open: 'Test plan and UAT scripts' (project_manager)"
        )
        page.locator("#stage-testing > summary").click()
        page.get_by_role("button", name="Check Test plan and UAT scripts").click()
        expect(notice).to_contain_text(
            "checking 'Test plan and UAT scripts' would start stage 'Testing & UAT', which "
            "waits for 'System configuration', 'Data migration' to finish; to start it anyway, "
            "give the reason for the override"
        )
        page.locator("#stage-testing > summary").click()
        page.get_by_label("Override reason for Test plan and UAT scripts").fill(
            "the vendor's test window opens now"
        )
        page.get_by_role("button", name="Check Test plan and UAT scripts").click()
        expect(notice).to_contain_text("checked test-plan (Peter Wang); override (stage 'testing'")
        expect(notice).to_contain_text("the vendor's test window opens now")
        pc.check(late, "sit-passed", by="Ivan Sun")
        pc.check(late, "uat-passed")
        pc.check(late, "training", by="Amy Xu")
        page.reload()

        gate = page.locator("tr#gate-go-live-approval")
        gate.get_by_label("Comment on signing Go-live approval").fill("UAT signed off by stores")
        gate.get_by_role("button", name="Sign off").click()
        expect(notice).to_have_text("Peter Wang signed go-live-approval as project_manager")
        gate = page.locator("tr#gate-go-live-approval")
        expect(gate).to_contain_text("Peter Wang (project_manager)")
        expect(gate).to_contain_text("executive_sponsor, business_owner")  # still waiting
        expect(gate.get_by_role("button", name="Sign off")).to_have_count(0)
        shoot(page, "project-page")
        page.locator("#plan").screenshot(path=str(ARTIFACTS / "project-gantt.png"))
        page.set_viewport_size({"width": 390, "height": 844})
        shoot(page, "project-page-narrow")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
        page.screenshot(path=str(ARTIFACTS / "project-page-narrow-top.png"))
        page.locator("#gates").screenshot(path=str(ARTIFACTS / "project-gates-narrow.png"))
        page.context.close()

        # a marketer has no projects pages: no link, and the page itself is refused
        marketer = server.open(browser, "marketer")
        nav = marketer.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Projects")).to_have_count(0)
        answer = marketer.goto(f"{server.base}/console/projects")
        assert answer is not None and answer.status == 403
        expect(marketer.get_by_role("heading", name="Not allowed")).to_be_visible()
        marketer.context.close()

        # a viewer reads the project and has no control at all
        viewer = server.open(browser, "viewer")
        viewer.goto(f"{server.base}/console/projects")
        viewer.get_by_role("link", name=late).click()
        expect(viewer.locator("tr#gate-go-live-approval")).to_contain_text(
            "Peter Wang (project_manager)"
        )
        expect(viewer.locator("main button")).to_have_count(0)
        expect(viewer.locator("main form")).to_have_count(0)
        shoot(viewer, "project-page-viewer")
        viewer.context.close()
    finally:
        pc.close(late)
        pc.close(fresh)
