"""The project controls and notices of issue 17 on the time-skipping server, on the example
rollout (`examples/rollout/`, Asia/Shanghai) and the mini project of test_project_workflow.

Each control is tried as the issue found it bypassed — go-live marked done before testing,
an it_lead checking a business_owner item, a later stage started beside the one it depends
on, a critical risk closed by anyone without a reason — and refused with the reason, then
done the allowed way. The notices: a project created 64 weeks late sends one summary per
person (lateness in working days and days), and escalation levels found due at once keep
their policy days.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from crmflow.contracts.projects import (
    CheckInput,
    CloseInput,
    DoneInput,
    ProjectChange,
    RiskAddInput,
    RiskCloseInput,
    SignOffInput,
    StageInput,
)
from projects.models import load_holidays, load_team, load_template
from projects.state import ProjectState, RiskInput, new_project
from tests.test_project_workflow import Harness, at, notice, project_state
from workflows.project import ProjectWorkflow

ROLLOUT = Path(__file__).resolve().parents[1] / "examples" / "rollout"
W = ProjectWorkflow


def example(now: datetime, start: date | None = None) -> tuple[ProjectState, date]:
    """The example rollout, starting on the Monday at least a week after `now` (or `start`)."""
    if start is None:
        start = now.date() + timedelta(days=7 + (7 - now.weekday()) % 7)
    name = f"acme-{uuid.uuid4().hex[:8]}"
    state = new_project(
        name,
        name,
        load_template(ROLLOUT / "crm-rollout.yaml"),
        None,
        load_team(ROLLOUT / "team.yaml"),
        load_holidays(ROLLOUT / "holidays.yaml"),
        start,
        now,
    )
    return state, start


async def close(hx: Harness) -> None:
    """End an example project (its manager closes it) and wait for the workflow."""
    said = await hx.update(W.close, CloseInput(by="Peter Wang", reason="test over"))
    assert said.action == "close"
    await hx.h.result()


def shanghai(day: date, hour: int) -> datetime:
    """`hour` o'clock on `day` in Shanghai, as UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=hour - 8)


async def test_go_live_passes_only_through_its_gate(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    state, start = example(await ts_env.get_current_time())
    async with hx.worker():
        await hx.start(state)
        await hx.until(shanghai(start, 10))
        reason = await hx.refused(W.done, DoneInput(milestone="go-live", by="Peter Wang"))
        assert reason.startswith(
            "milestone 'Go-live (pilot)' cannot be done yet: it starts stage 'Go-live pilot', "
            "which waits for 'Testing & UAT' to finish; gates before it have not passed: "
            "'Requirements approval' (needs executive_sponsor (1 more sign-off), "
            "business_owner (1 more sign-off))"
        )
        assert "'Go-live approval' (needs executive_sponsor" in reason
        # a milestone at the end of a stage that has not started
        reason = await hx.refused(W.done, DoneInput(milestone="vendor-chosen", by="Peter Wang"))
        assert reason.startswith(
            "milestone 'Vendor chosen' cannot be done yet: its stage 'Vendor selection' has "
            "not started; gates before it have not passed: 'Requirements approval'"
        )
        snap = await hx.h.query(W.project)
        assert not snap.state.milestones["go-live"].done
        assert (await hx.h.query(W.extras)).kpi_review is None
        # the kick-off starts the first stage, which waits for nothing: accepted
        said: ProjectChange = await hx.update(
            W.done, DoneInput(milestone="kick-off", by="Peter Wang")
        )
        assert (said.action, said.ref, said.by, said.on) == (
            "done",
            "kick-off",
            "Peter Wang",
            start,
        )
        await close(hx)


async def test_items_are_checked_by_their_role_or_the_pm_with_a_reason(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    state, start = example(await ts_env.get_current_time())
    async with hx.worker():
        await hx.start(state)
        await hx.until(shanghai(start, 10))
        reason = await hx.refused(W.check, CheckInput(item="stakeholder-interviews", by="Ivan Sun"))
        assert reason == (
            "Ivan Sun holds it_lead; item 'Stakeholder interviews held' is checked by its "
            "business_owner (Lily Zhao, Marco Liu); the project manager may check it for "
            "them, with a reason"
        )
        reason = await hx.refused(
            W.check, CheckInput(item="stakeholder-interviews", by="Ivan Sun", override="x")
        )
        assert "the project manager may check it for them" in reason  # an it_lead may not
        reason = await hx.refused(
            W.check, CheckInput(item="stakeholder-interviews", by="Peter Wang", override="  ")
        )
        assert reason.endswith("give the reason for the override")
        said: ProjectChange = await hx.update(
            W.check,
            CheckInput(item="stakeholder-interviews", by="Peter Wang", override="Lily is on leave"),
        )
        assert (said.by, said.override) == ("Peter Wang", "Lily is on leave")
        said = await hx.update(W.check, CheckInput(item="smart-goals", by="Marco Liu"))
        assert (said.by, said.override) == ("Marco Liu", None)
        snap = await hx.h.query(W.project)
        item = snap.state.items["stakeholder-interviews"]
        assert (item.by, item.override) == ("Peter Wang", "Lily is on leave")
        [o] = snap.state.overrides
        assert (o.by, o.action, o.reason) == (
            "Peter Wang",
            "check stakeholder-interviews",
            "Lily is on leave",
        )
        assert o.rule == "item 'stakeholder-interviews' is checked by its business_owner"
        await close(hx)


async def test_a_stage_starts_after_its_dependencies_unless_the_pm_overrides(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    state, start = example(await ts_env.get_current_time())
    async with hx.worker():
        await hx.start(state)
        await hx.until(shanghai(start, 10))
        # Lily holds business_owner, the item's role, but its stage waits for requirements
        reason = await hx.refused(W.check, CheckInput(item="demos", by="Lily Zhao"))
        assert reason == (
            "checking 'Scripted demos scored' would start stage 'Vendor selection', which "
            "waits for 'Requirements & SMART goals' to finish; only the project manager "
            "(Peter Wang, Amy Xu) may start it earlier, with a reason"
        )
        # the stage's owner may start it, but not before its dependencies
        reason = await hx.refused(
            W.start_stage, StageInput(stage="vendor-selection", by="Ivan Sun")
        )
        assert "only the project manager (Peter Wang, Amy Xu) may start it earlier" in reason
        reason = await hx.refused(
            W.start_stage, StageInput(stage="vendor-selection", by="Peter Wang")
        )
        assert reason.endswith("to start it anyway, give the reason for the override")
        snap = await hx.h.query(W.project)
        assert snap.state.stages["vendor-selection"].actual_start is None
        said: ProjectChange = await hx.update(
            W.start_stage,
            StageInput(stage="vendor-selection", by="Peter Wang", override="RFP is urgent"),
        )
        assert said.override == "RFP is urgent" and said.on == start
        # now the stage has started: its items take their role's checks
        await hx.update(W.check, CheckInput(item="demos", by="Lily Zhao"))
        snap = await hx.h.query(W.project)
        assert snap.state.stages["vendor-selection"].override == "RFP is urgent"
        assert [o.action for o in snap.state.overrides] == ["start vendor-selection"]
        # a start gate that passes does not start its stage before its dependencies
        for who in ("Lily Zhao", "Ivan Sun", "Victor Hale"):
            await hx.update(W.signoff, SignOffInput(gate="design-sign-off", by=who))
        snap = await hx.h.query(W.project)
        assert snap.state.gates["design-sign-off"].passed_at is not None
        assert snap.state.stages["configuration"].actual_start is None
        await close(hx)


async def test_a_severe_risk_is_closed_by_its_owner_or_the_pm_with_a_reason(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    state, start = example(await ts_env.get_current_time())
    async with hx.worker():
        await hx.start(state)
        await hx.until(shanghai(start, 10))
        for title, severity in (("Data quality", "critical"), ("Vendor slow", "low")):
            risk = RiskInput(title=title, owner="Ivan Sun", severity=severity)
            await hx.update(W.risk_add, RiskAddInput(risk=risk, by="Lily Zhao"))
        reason = await hx.refused(
            W.risk_close, RiskCloseInput(risk_id="R1", by="Lily Zhao", comment="fine now")
        )
        assert reason == (
            "risk R1 'Data quality' is critical: it is closed by its owner (Ivan Sun) or the "
            "project manager (Peter Wang, Amy Xu); Lily Zhao is neither"
        )
        reason = await hx.refused(W.risk_close, RiskCloseInput(risk_id="R1", by="Peter Wang"))
        assert reason == (
            "risk R1 'Data quality' is critical: closing it needs a reason (why it no longer "
            "threatens the project)"
        )
        said: ProjectChange = await hx.update(
            W.risk_close,
            RiskCloseInput(risk_id="R1", by="Ivan Sun", comment="legacy data cleaned"),
        )
        assert (said.action, said.ref, said.by) == ("risk_close", "R1", "Ivan Sun")
        # a low risk: anyone on the team, no reason needed
        await hx.update(W.risk_close, RiskCloseInput(risk_id="R2", by="Lily Zhao"))
        snap = await hx.h.query(W.project)
        assert [(r.id, r.status, r.history[-1].comment) for r in snap.state.risks] == [
            ("R1", "closed", "legacy data cleaned"),
            ("R2", "closed", None),
        ]
        await close(hx)


async def test_dates_of_actions_are_on_the_teams_clock(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    state, start = example(await ts_env.get_current_time())
    async with hx.worker():
        await hx.start(state)
        # 20:00 UTC on the Monday is 04:00 on Tuesday in Shanghai
        await hx.until(datetime(start.year, start.month, start.day, 20, tzinfo=UTC))
        said: ProjectChange = await hx.update(
            W.check, CheckInput(item="stakeholder-interviews", by="Lily Zhao")
        )
        tuesday = start + timedelta(days=1)
        assert said.on == tuesday
        reason = await hx.refused(
            W.check, CheckInput(item="stakeholder-interviews", by="Marco Liu")
        )
        assert reason == (
            f"item 'Stakeholder interviews held' was already checked by Lily Zhao on {tuesday}"
        )
        snap = await hx.h.query(W.project)
        assert snap.state.stages["requirements"].actual_start == tuesday
        await close(hx)


async def test_a_back_dated_project_sends_one_summary_per_person(
    ts_env: WorkflowEnvironment, engine: Engine
) -> None:
    hx = Harness(ts_env, engine)
    now = await ts_env.get_current_time()
    monday = now.date() - timedelta(days=now.weekday())
    state, _ = example(now, start=monday - timedelta(weeks=64))
    async with hx.worker():
        await hx.start(state)
        await hx.until(now + timedelta(minutes=5))
        rows = hx.rows()
        # one notice per person concerned, not one per overdue item and level
        assert all(":summary:" in r["notice"] for r in rows)
        assert sorted(r["to"] for r in rows) == sorted(p.email for p in state.team.people)
        snap = await hx.h.query(W.project)
        covered = [k for k in snap.state.sent if ":summary:" not in k]
        assert len(covered) > 100  # the escalations the summaries stand for
        # the PM's summary: the kick-off, 64 weeks late, counted in working days and days
        kick = next(m for m in snap.state.plan.milestones if m.id == "kick-off")
        today = state.today(now)
        cal = snap.state.work_calendar()
        working = cal.count(kick.due + timedelta(days=1), today + timedelta(days=1))
        days = (today - kick.due).days
        assert days > 440 and working > 300
        pm = [r for r in rows if r["to"] == "peter.wang@example.com"]
        assert len(pm) == 1
        body = hx.bodies()[pm[0]["key"]]
        assert (
            f"Milestone 'Project kick-off' (stage 'Requirements & SMART goals'): "
            f"{working} working days late ({days} days); escalation level 3 reached"
        ) in body
        # a week later: nothing more (every level was reached, and is covered)
        await hx.until(now + timedelta(days=7))
        assert len(hx.rows()) == len(rows)
        await close(hx)


async def test_escalation_levels_keep_their_policy_days(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """The charter's due date moves a week into the past (its stage started earlier than
    planned, recorded late): every level is due at once, yet they go out a working day apart
    as the policy says (after 1, 2, 3 working days), not the owner and the PM together."""
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    day = [d + timedelta(days=i) for i in range(30)]
    async with hx.worker():
        await hx.start(state)
        await hx.until(at(day[0], 10))
        await hx.wait_rows(1)  # the charter's reminder, Monday 09:00
        await hx.update(
            W.start_stage, StageInput(stage="kickoff", by="Pam Lee", on=day[0] - timedelta(days=7))
        )
        rows = await hx.wait_rows(2)
        [first] = notice(rows, "charter", "escalate-1")
        assert first["to"] == "pam@example.com"
        assert at(day[0], 10) <= first["at"] < at(day[0], 10, 5)
        body = hx.bodies()[first["key"]]
        # due the Tuesday before: Wednesday to Monday, 4 working days (6 days)
        assert "is 4 working days late (6 days)" in body
        await hx.until(at(day[2], 10))
        rows = hx.rows()
        assert [(r["to"], r["at"]) for r in notice(rows, "charter", "escalate-2")] == [
            ("pam@example.com", at(day[1]))
        ]
        assert [(r["to"], r["at"]) for r in notice(rows, "charter", "escalate-3")] == [
            ("sam@example.com", at(day[2]))
        ]
        await hx.close()
