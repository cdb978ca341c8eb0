"""ProjectWorkflow on the time-skipping server: reminders and escalations on simulated days,
health over time, refused sign-offs, a worker restart, continue-as-new and the KPI review.

The project runs on a small template (three stages over two weeks, UTC, notices at 09:00) so
every notice can be named with its day. Time moves only through `env.sleep`: the test server
does not skip time while a client waits on an update.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.project_activities import ProjectActivities
from crmflow.contracts.projects import (
    CheckInput,
    CloseInput,
    DoneInput,
    ProjectCarry,
    ProjectOutcome,
    RiskAddInput,
    RiskUpdateInput,
    SignOffInput,
)
from crmflow.ingest import import_file
from projects.models import load_team, load_template
from projects.state import ProjectState, RiskChange, RiskInput, new_project
from store.models import OutboxMessageRow
from tests.conftest import write_lines
from workflows.project import ProjectWorkflow

TEMPLATE = """
template: mini-rollout
title: Mini rollout
stages:
  - id: kickoff
    name: Kick-off
    duration: 2
    checklist:
      - {id: charter, title: Project charter, owner: project_manager}
  - id: build
    name: Build
    duration: 3
    owner: crm_admin
    depends_on: [kickoff]
    checklist:
      - {id: configure, title: System configured, owner: crm_admin}
    gates:
      - {id: uat, name: UAT sign-off, at: end, sign_off: [business_owner]}
  - id: golive
    name: Go-live
    duration: 2
    depends_on: [build]
milestones:
  - {id: go-live, name: Go-live, stage: golive, at: start, owner: project_manager}
reminders:
  before_days: [1]
  send_at: "09:00"
  escalation:
    - {to: owner, after_days: 1}
    - {to: project_manager, after_days: 2}
    - {to: executive_sponsor, after_days: 3}
health:
  late_red_after_days: 2
kpis:
  after_milestone: go-live
  review_weeks: 2
  baseline_weeks: 2
  targets:
    - {metric: active_members, compare: absolute, direction: increase, target: 2}
    - {metric: repurchase_rate, compare: change, direction: increase, target: 0.1}
"""

TEAM = """
timezone: UTC
people:
  - {name: Pam Lee, email: pam@example.com, roles: [project_manager]}
  - {name: Sam Ode, email: sam@example.com, roles: [executive_sponsor]}
  - {name: Bea Kim, email: bea@example.com, roles: [business_owner]}
  - {name: Carl Fox, email: carl@example.com, roles: [crm_admin]}
  - {name: Ian Roe, email: ian@example.com, roles: [it_lead]}
"""


def at(day: date, hour: int = 9, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def project_state(tmp_path: Path, now: datetime, name: str) -> tuple[ProjectState, date]:
    """The mini project, starting on the Monday at least a week after `now`."""
    (tmp_path / "mini.yaml").write_text(TEMPLATE, encoding="utf-8")
    template = load_template(tmp_path / "mini.yaml")
    (tmp_path / "team.yaml").write_text(TEAM, encoding="utf-8")
    team = load_team(tmp_path / "team.yaml")
    start = now.date() + timedelta(days=7 + (7 - now.weekday()) % 7)
    assert start.weekday() == 0
    return new_project(name, name, template, None, team, None, start, now), start


class Harness:
    """A project workflow on the time-skipping server and the workers that run it."""

    def __init__(self, env: WorkflowEnvironment, engine: Engine) -> None:
        self.env = env
        self.engine = engine
        self.queue = f"project-test-{uuid.uuid4()}"
        self.handle: WorkflowHandle[Any, Any] | None = None

    @asynccontextmanager
    async def worker(self, cache: bool = True) -> AsyncIterator[None]:
        """A worker; without `cache` it keeps no workflow in memory (and no sticky queue, which
        the test server does not hand back when a worker stops), so every task replays."""
        with ThreadPoolExecutor(4) as pool:
            async with Worker(
                self.env.client,
                task_queue=self.queue,
                workflows=[ProjectWorkflow],
                activities=ProjectActivities(self.engine).all(),
                activity_executor=pool,
                max_cached_workflows=1000 if cache else 0,
            ):
                yield

    async def start(self, state: ProjectState, carry: ProjectCarry | None = None) -> None:
        self.handle = await self.env.client.start_workflow(
            ProjectWorkflow.run,
            args=[state, carry],
            id=f"project-{state.project_id}",
            task_queue=self.queue,
        )

    @property
    def h(self) -> WorkflowHandle[Any, Any]:
        assert self.handle is not None
        return self.handle

    async def until(self, when: datetime) -> None:
        """Advance the server's clock to `when`."""
        now = await self.env.get_current_time()
        assert when > now, f"{when} is not after the server's {now}"
        await self.env.sleep(when - now)

    async def update(self, update: Any, arg: Any) -> Any:
        return await self.h.execute_update(update, arg)

    async def refused(self, update: Any, arg: Any) -> str:
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await self.h.execute_update(update, arg)
        cause = info.value.cause
        assert isinstance(cause, ApplicationError)
        return cause.message

    def rows(self) -> list[dict[str, Any]]:
        t = OutboxMessageRow.__table__
        with self.engine.connect() as conn:
            found = conn.execute(
                select(t.c.dedupe_key, t.c.address, t.c.headers).order_by(t.c.id)
            ).all()
        out = []
        for key, address, headers in found:
            h = headers if isinstance(headers, dict) else json.loads(headers)
            if h.get("X-Crmflow-Project") != self.h.id.removeprefix("project-"):
                continue
            out.append(
                {
                    "key": key,
                    "to": address,
                    "notice": h["X-Crmflow-Notice"],
                    "level": h["X-Crmflow-Level"],
                    # the workflow's time when it sent, to the minute (timers fire a few ms late)
                    "at": datetime.fromisoformat(h["X-Crmflow-Workflow-Time"]).replace(
                        second=0, microsecond=0
                    ),
                    "scheduled": datetime.fromisoformat(h["X-Crmflow-Scheduled-At"]),
                }
            )
        return out

    def bodies(self) -> dict[str, str]:
        """The outbox rows' text by dedupe key."""
        t = OutboxMessageRow.__table__
        with self.engine.connect() as conn:
            found = conn.execute(select(t.c.dedupe_key, t.c.body_text)).all()
        return {key: body or "" for key, body in found}

    async def wait_rows(self, n: int, seconds: float = 30) -> list[dict[str, Any]]:
        """The outbox rows once there are `n` (the worker runs in real time)."""
        deadline = time.monotonic() + seconds
        while True:
            rows = self.rows()
            if len(rows) >= n or time.monotonic() > deadline:
                assert len(rows) == n, rows
                return rows
            await asyncio.sleep(0.05)

    async def close(self) -> ProjectOutcome:
        """End the project by the `close` update (a terminated workflow's activity in flight
        would keep the test server from skipping time for the tests after this one)."""
        said = await self.update(ProjectWorkflow.close, CloseInput(by="Sam Ode", reason="done"))
        assert "closed by Sam Ode" in said.message and said.by == "Sam Ode"
        outcome: ProjectOutcome = await self.h.result()
        assert outcome.closed_at is not None and not outcome.finished
        return outcome

    async def status(self) -> Any:
        return await self.h.query(ProjectWorkflow.status)


def notice(rows: list[dict[str, Any]], ref: str, level: str) -> list[dict[str, Any]]:
    return [r for r in rows if f":{ref}:{level}:" in r["notice"]]


async def test_whole_project_from_kick_off_to_kpi_review(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    day = [d + timedelta(days=i) for i in range(30)]  # day[0] Monday, day[5] Saturday
    async with hx.worker():
        await hx.start(state)
        assert (await hx.status()).health.status == "green"

        # Monday 09:00: the reminder one working day before the charter is due (Tuesday)
        await hx.until(at(day[0], 10))
        rows = await hx.wait_rows(1)
        assert rows[0]["to"] == "pam@example.com"
        assert rows[0]["notice"] == f"{state.project_id}:charter:remind-1:{day[1]}"
        assert rows[0]["at"] == rows[0]["scheduled"] == at(day[0])

        # the charter is late: Wednesday 09:00 escalates to its owner, health turns amber
        await hx.until(at(day[2], 10))
        rows = await hx.wait_rows(2)
        esc = notice(rows, "charter", "escalate-1")
        assert [r["at"] for r in esc] == [at(day[2])]
        report = await hx.status()
        assert report.health.status == "amber"
        assert any(r.kind == "item" and r.ref == "charter" for r in report.health.reasons)

        # checked on Wednesday: kick-off finishes, build moves to Thu-Mon, go-live to Tuesday
        await hx.update(ProjectWorkflow.check, CheckInput(item="charter", by="Pam Lee"))
        report = await hx.status()
        build = next(s for s in report.stages if s.id == "build")
        assert (build.planned_start, build.planned_finish) == (day[3], day[7])

        # Friday 09:00: reminders for the configuration (crm_admin) and the UAT gate (business
        # owner), both due on the new date, Monday
        await hx.until(at(day[4], 10))
        rows = await hx.wait_rows(4)
        assert [(r["to"], r["at"]) for r in notice(rows, "configure", "remind-1")] == [
            ("carl@example.com", at(day[4]))
        ]
        assert [(r["to"], r["at"]) for r in notice(rows, "uat", "remind-1")] == [
            ("bea@example.com", at(day[4]))
        ]

        await hx.update(ProjectWorkflow.check, CheckInput(item="configure", by="carl@example.com"))
        reason = await hx.refused(ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Ian Roe"))
        assert reason == (
            "Ian Roe holds it_lead; gate 'UAT sign-off' needs business_owner (1 more sign-off)"
        )
        await hx.update(
            ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Bea Kim", comment="all green")
        )
        # build finished on Friday: go-live moves to Monday, and its reminder (Friday 09:00,
        # already past) goes out at once
        rows = await hx.wait_rows(5)
        live = notice(rows, "go-live", "remind-1")
        assert len(live) == 1 and live[0]["notice"].endswith(str(day[7]))
        assert at(day[4], 10) <= live[0]["at"] < at(day[4], 10, 5)

        # go-live is not marked on Monday: Tuesday 09:00 escalates to the owner (the PM)
        await hx.until(at(day[8], 10))
        rows = await hx.wait_rows(6)
        assert [(r["to"], r["at"]) for r in notice(rows, "go-live", "escalate-1")] == [
            ("pam@example.com", at(day[8]))
        ]
        await hx.update(ProjectWorkflow.done, DoneInput(milestone="go-live", by="Pam Lee"))
        report = await hx.status()
        assert all(s.actual_finish is not None for s in report.stages)

        # purchases two weeks before and two weeks after go-live (Tuesday day[8])
        seed_purchases(
            engine,
            tmp_path,
            state.project_id,
            before=[("A", day[1])],
            after=[("A", day[9]), ("A", day[10]), ("B", day[11])],
        )
        # the review falls due two weeks after go-live; the workflow then ends
        outcome: ProjectOutcome = await hx.h.result()
    assert outcome.finished and outcome.closed_at is None
    review = outcome.kpi_review
    assert review is not None
    assert (review.go_live, review.review_date) == (day[8], day[22])
    assert review.recorded_at.replace(second=0, microsecond=0) == at(day[22])
    results = {r.metric: r for r in review.results}
    assert (results["active_members"].before, results["active_members"].after) == (1.0, 2.0)
    assert results["active_members"].met is True
    assert (results["repurchase_rate"].before, results["repurchase_rate"].after) == (0.0, 0.5)
    assert results["repurchase_rate"].met is True
    # nothing was sent twice, and nothing else was sent
    rows = hx.rows()
    assert len(rows) == len({r["key"] for r in rows}) == 6


def seed_purchases(
    engine: Engine,
    tmp_path: Path,
    tag: str,
    before: list[tuple[str, date]],
    after: list[tuple[str, date]],
) -> None:
    customers = sorted({c for c, _ in before + after})
    write_lines(
        tmp_path / "c.jsonl",
        [json.dumps({"customer_id": f"{tag}-{c}", "lifecycle_stage": "member"}) for c in customers],
    )
    write_lines(
        tmp_path / "e.jsonl",
        [
            json.dumps(
                {
                    "event_id": f"{tag}-{i}",
                    "customer_id": f"{tag}-{c}",
                    "type": "purchase",
                    "occurred_at": at(d, 12).isoformat(),
                    "properties": {"amount": 10.0},
                }
            )
            for i, (c, d) in enumerate(before + after)
        ],
    )
    import_file(engine, tmp_path / "c.jsonl", "customers")
    import_file(engine, tmp_path / "e.jsonl", "events")


async def test_late_milestone_turns_amber_then_red(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    day = [d + timedelta(days=i) for i in range(30)]
    async with hx.worker():
        await hx.start(state)
        await hx.until(at(day[0], 10))
        await hx.update(ProjectWorkflow.check, CheckInput(item="charter", by="Pam Lee"))
        await hx.until(at(day[1], 10))
        await hx.update(ProjectWorkflow.check, CheckInput(item="configure", by="Carl Fox"))
        await hx.update(ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Bea Kim"))
        # kick-off finished Monday, build Tuesday: go-live is due Wednesday
        report = await hx.status()
        live = next(m for m in report.milestones if m.id == "go-live")
        assert live.due == day[2]
        await hx.until(at(day[2], 10))
        report = await hx.status()
        assert report.health.status == "green", report.health
        # one working day late: amber, for the milestone alone
        await hx.until(at(day[3], 10))
        report = await hx.status()
        assert report.health.status == "amber"
        assert [(r.kind, r.ref, r.status) for r in report.health.reasons] == [
            ("milestone", "go-live", "amber")
        ]
        assert "1 working day late" in report.health.reasons[0].message
        # Monday is three working days late, more than late_red_after_days (2): red
        await hx.until(at(day[7], 10))
        report = await hx.status()
        assert report.health.status == "red"
        assert [(r.kind, r.ref, r.status) for r in report.health.reasons] == [
            ("milestone", "go-live", "red")
        ]
        assert next(m for m in report.milestones if m.id == "go-live").late_days == 3
        # the escalations went out one working day apart, to the owner, the PM, the sponsor
        rows = hx.rows()
        esc = sorted(
            (r["level"], r["to"], r["at"]) for r in rows if ":go-live:escalate" in r["notice"]
        )
        assert esc == [
            ("escalate-1", "pam@example.com", at(day[3])),
            ("escalate-2", "pam@example.com", at(day[4])),
            ("escalate-3", "sam@example.com", at(day[7])),
        ]
        await hx.close()


async def test_wrong_role_sign_off_is_refused_and_leaves_no_trace(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    async with hx.worker():
        await hx.start(state)
        await hx.until(at(d, 10))
        await hx.update(ProjectWorkflow.check, CheckInput(item="charter", by="Pam Lee"))
        await hx.update(ProjectWorkflow.check, CheckInput(item="configure", by="Carl Fox"))
        reason = await hx.refused(ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Carl Fox"))
        assert "Carl Fox holds crm_admin" in reason and "needs business_owner" in reason
        reason = await hx.refused(ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Nobody"))
        assert "'Nobody' is not on the project's team" in reason
        reason = await hx.refused(ProjectWorkflow.check, CheckInput(item="charterr", by="Pam Lee"))
        assert "did you mean 'charter'" in reason
        snap = await hx.h.query(ProjectWorkflow.project)
        assert snap.state.gates["uat"].sign_offs == []
        ok = await hx.update(
            ProjectWorkflow.signoff, SignOffInput(gate="uat", by="Bea Kim", comment="signed")
        )
        assert "the gate has passed" in ok.message and ok.passed
        snap = await hx.h.query(ProjectWorkflow.project)
        [rec] = snap.state.gates["uat"].sign_offs
        assert (rec.person, rec.role, rec.comment) == ("Bea Kim", "business_owner", "signed")
        assert rec.at == snap.state.gates["uat"].passed_at
        await hx.close()


async def test_worker_restart_keeps_state_and_sends_nothing_twice(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    day = [d + timedelta(days=i) for i in range(30)]
    async with hx.worker(cache=False):
        await hx.start(state)
        await hx.until(at(day[0], 10))
        await hx.wait_rows(1)
        risk = RiskInput(title="Vendor late", owner="Ian Roe", severity="high")
        await hx.update(ProjectWorkflow.risk_add, RiskAddInput(risk=risk, by="Pam Lee"))
        await hx.update(
            ProjectWorkflow.risk_update,
            RiskUpdateInput(
                risk_id="R1", change=RiskChange(mitigation="weekly call"), by="Pam Lee"
            ),
        )
    # the worker is gone (its cache with it); a new one replays the history from the start
    # (the test server does not move its clock while a workflow task waits for a worker)
    assert len(hx.rows()) == 1
    async with hx.worker(cache=False):
        snap = await hx.h.query(ProjectWorkflow.project)
        assert set(snap.state.sent) == {f"{state.project_id}:charter:remind-1:{day[1]}"}
        await hx.until(at(day[2], 10))
        rows = await hx.wait_rows(2)
        snap = await hx.h.query(ProjectWorkflow.project)
    assert [r["notice"] for r in rows] == [
        f"{state.project_id}:charter:remind-1:{day[1]}",
        f"{state.project_id}:charter:escalate-1:{day[1]}",
    ]
    assert rows[1]["scheduled"] == rows[1]["at"] == at(day[2])
    assert set(snap.state.sent) == {r["notice"] for r in rows}
    assert [r.title for r in snap.state.risks] == ["Vendor late"]
    [kept] = snap.state.risks
    assert kept.mitigation == "weekly call"
    assert [e.action for e in kept.history] == ["added", "updated"]
    async with hx.worker(cache=False):  # and once more: still nothing new, nothing twice
        await hx.until(at(day[2], 12))
        report = await hx.status()
        assert report.open_risks == 1
        assert len(hx.rows()) == 2
        await hx.close()


async def test_long_project_continues_as_new_with_its_state(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    hx = Harness(ts_env, engine)
    state, d = project_state(tmp_path, await ts_env.get_current_time(), f"p{uuid.uuid4().hex[:8]}")
    day = [d + timedelta(days=i) for i in range(30)]
    async with hx.worker():
        await hx.start(state, ProjectCarry(history_limit=40))
        first_run = (await hx.h.describe()).run_id
        for n in range(8):
            risk = RiskInput(title=f"Risk {n}", owner="Ian Roe", severity="low")
            await hx.update(ProjectWorkflow.risk_add, RiskAddInput(risk=risk, by="Pam Lee"))
        await hx.update(ProjectWorkflow.check, CheckInput(item="charter", by="Pam Lee"))
        await hx.until(at(day[0], 12))
        await hx.update(ProjectWorkflow.check, CheckInput(item="configure", by="Carl Fox"))
        for n in range(8, 12):
            risk = RiskInput(title=f"Risk {n}", owner="Ian Roe", severity="low")
            await hx.update(ProjectWorkflow.risk_add, RiskAddInput(risk=risk, by="Pam Lee"))
        await hx.until(at(day[3], 12))
        carry = await hx.h.query(ProjectWorkflow.extras)
        snap = await hx.h.query(ProjectWorkflow.project)
        latest = await ts_env.client.get_workflow_handle(hx.h.id).describe()
        assert carry.runs > 1 and latest.run_id != first_run
        assert [r.id for r in snap.state.risks] == [f"R{n}" for n in range(1, 13)]
        assert snap.state.items["charter"].checked and snap.state.items["configure"].checked
        assert snap.state.baselines[0].number == 1 and len(snap.state.baselines) == 1
        # the notices sent before and after the runs changed: each once
        rows = hx.rows()
        assert len(rows) == len({r["key"] for r in rows})
        assert set(snap.state.sent) == {r["notice"] for r in rows}
        assert notice(rows, "uat", "remind-1")  # sent on the last run
        report = await hx.status()
        assert report.open_risks == 12
        hx.handle = ts_env.client.get_workflow_handle(hx.h.id, result_type=ProjectOutcome)
        await hx.close()
