"""Project health (red / amber / green, with the reasons) and what is due next, pure.

At `now`, on the team's clock:
- a milestone not done, or a gate not passed, past its due date: amber while late by up to
  `health.late_red_after_days` working days, red beyond;
- a required checklist item past its due date: amber (the gate or milestone it holds up turns
  red in its own right);
- an open risk at least `risk_amber_at` severe: amber; at least `risk_red_at`: red;
- the forecast finish (actual dates, nothing outstanding before today) past the latest
  baseline's finish: amber, red when by more than `slip_red_after_days` working days.

Due dates are the current plan's (`state.plan`, which follows actual dates): a milestone
moved by a predecessor that finished late is not overdue, but the slip shows against the
baseline.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from projects.models import SEVERITIES
from projects.plan import WorkCalendar, calendar_warnings
from projects.state import ProjectState, forecast, still_needed

Colour = Literal["green", "amber", "red"]
_RANK = {"green": 0, "amber": 1, "red": 2}
_KIND = {"milestone": 0, "gate": 1, "slip": 2, "risk": 3, "stage": 4, "item": 5}


class Reason(BaseModel):
    status: Literal["amber", "red"]
    kind: Literal["milestone", "gate", "item", "risk", "slip", "stage"]
    ref: str = Field(description="the milestone, gate, item or risk id; the project for a slip")
    message: str


class Health(BaseModel):
    status: Colour
    reasons: list[Reason] = Field(default_factory=list)


class DueItem(BaseModel):
    kind: Literal["item", "milestone", "gate"]
    id: str
    name: str
    stage: str
    due: date
    owners: list[str] = Field(description="roles that must act")
    late_days: int = Field(0, description="working days past due (0 when not late)")


def late_days(cal: WorkCalendar, due: date, today: date) -> int:
    """Working days after `due` up to and including `today` (0 when not past due)."""
    if today <= due:
        return 0
    return cal.count(due + timedelta(days=1), today + timedelta(days=1))


def _days(n: int) -> str:
    return f"{n} working day{'s' if n != 1 else ''}"


def health(state: ProjectState, now: datetime) -> Health:
    policy = state.template.health
    cal = state.work_calendar()
    today = state.today(now)
    reasons: list[Reason] = []

    def late(kind: Literal["milestone", "gate"], ref: str, what: str, due: date) -> None:
        n = late_days(cal, due, today)
        if n > 0:
            colour: Literal["amber", "red"] = "red" if n > policy.late_red_after_days else "amber"
            reasons.append(
                Reason(
                    status=colour,
                    kind=kind,
                    ref=ref,
                    message=f"{what} (due {due}) is {_days(n)} late",
                )
            )

    for m in state.plan.milestones:
        if not state.milestones[m.id].done:
            late("milestone", m.id, f"milestone {m.name!r}", m.due)
    for g in state.plan.gates:
        if state.gates[g.id].passed_at is None:
            waiting = ", ".join(still_needed(state, g.id))
            late("gate", g.id, f"gate {g.name!r} waiting for {waiting}", g.due)
    for i in state.plan.items:
        if i.required and not state.items[i.id].checked:
            n = late_days(cal, i.due, today)
            if n > 0:
                reasons.append(
                    Reason(
                        status="amber",
                        kind="item",
                        ref=i.id,
                        message=f"item {i.title!r} ({i.owner}, due {i.due}) is {_days(n)} late",
                    )
                )
    amber_at = SEVERITIES.index(policy.risk_amber_at)
    red_at = SEVERITIES.index(policy.risk_red_at)
    for r in state.risks:
        level = SEVERITIES.index(r.severity)
        if r.status == "open" and level >= amber_at:
            reasons.append(
                Reason(
                    status="red" if level >= red_at else "amber",
                    kind="risk",
                    ref=r.id,
                    message=f"open {r.severity} risk {r.id} {r.title!r} (owner {r.owner})",
                )
            )
    # a stage the project manager started before its dependencies finished: amber while
    # they are still open (its float is negative: it overlaps work it depends on)
    for s in state.plan.stages:
        st = state.stages[s.id]
        if st.override is None or st.actual_finish is not None:
            continue
        open_deps = [d.stage for d in s.depends_on if state.stages[d.stage].actual_finish is None]
        if open_deps:
            reasons.append(
                Reason(
                    status="amber",
                    kind="stage",
                    ref=s.id,
                    message=f"stage {s.name!r} started on {st.actual_start} before "
                    + ", ".join(repr(state.template.stage(w).name) for w in open_deps)
                    + f" finished (override: {st.override})",
                )
            )
    baseline = state.baseline()
    if baseline is not None:
        ahead = forecast(state, today)
        slip = late_days(cal, baseline.plan.finish, ahead.finish)
        if slip > 0:
            path = " → ".join(ahead.critical_path)
            reasons.append(
                Reason(
                    status="red" if slip > policy.slip_red_after_days else "amber",
                    kind="slip",
                    ref=state.project_id,
                    message=f"forecast finish {ahead.finish} is {_days(slip)} past baseline "
                    f"{baseline.number} ({baseline.plan.finish}); critical path: {path}",
                )
            )
    reasons.sort(key=lambda r: (-_RANK[r.status], _KIND[r.kind], r.ref))
    status: Colour = max((r.status for r in reasons), key=_RANK.__getitem__, default="green")
    return Health(status=status, reasons=reasons)


def due_next(state: ProjectState, now: datetime, k: int = 5) -> list[DueItem]:
    """The next `k` open items, milestones and gates by due date (overdue ones first)."""
    cal = state.work_calendar()
    today = state.today(now)
    out: list[DueItem] = []
    for m in state.plan.milestones:
        if not state.milestones[m.id].done:
            out.append(
                DueItem(
                    kind="milestone",
                    id=m.id,
                    name=m.name,
                    stage=m.stage,
                    due=m.due,
                    owners=[m.owner],
                    late_days=late_days(cal, m.due, today),
                )
            )
    for g in state.plan.gates:
        if state.gates[g.id].passed_at is None:
            out.append(
                DueItem(
                    kind="gate",
                    id=g.id,
                    name=g.name,
                    stage=g.stage,
                    due=g.due,
                    owners=list(still_needed(state, g.id)),
                    late_days=late_days(cal, g.due, today),
                )
            )
    for i in state.plan.items:
        if not state.items[i.id].checked:
            out.append(
                DueItem(
                    kind="item",
                    id=i.id,
                    name=i.title,
                    stage=i.stage,
                    due=i.due,
                    owners=[i.owner],
                    late_days=late_days(cal, i.due, today),
                )
            )
    order = {"milestone": 0, "gate": 1, "item": 2}
    out.sort(key=lambda d: (d.due, order[d.kind], d.id))
    return out[:k]


# --------------------------------------------------------------------------- status


class StageStatus(BaseModel):
    id: str
    name: str
    status: str
    planned_start: date
    planned_finish: date
    baseline_start: date | None
    baseline_finish: date | None
    actual_start: date | None
    actual_finish: date | None
    critical: bool
    total_float: int
    items_done: int
    items_total: int


class MilestoneStatus(BaseModel):
    id: str
    name: str
    stage: str
    due: date
    baseline_due: date | None
    done_at: datetime | None
    done_by: str | None
    late_days: int


class GateStatus(BaseModel):
    id: str
    name: str
    stage: str
    at: str
    due: date
    passed_at: datetime | None
    signed_by: list[str]
    still_needed: dict[str, int]


class StatusReport(BaseModel):
    project_id: str
    name: str
    today: date
    timezone: str = Field("UTC", description="the team's clock, on which dates are read")
    health: Health
    start: date
    forecast_finish: date
    baseline: int | None
    baseline_finish: date | None
    stages: list[StageStatus]
    milestones: list[MilestoneStatus]
    gates: list[GateStatus]
    open_risks: int
    due_next: list[DueItem]
    warnings: list[str] = Field(
        default_factory=list, description="e.g. a forecast that runs past the holiday calendar"
    )


def status_report(state: ProjectState, now: datetime, k: int = 5) -> StatusReport:
    """Plan against actual per stage and milestone, health and what is due next."""
    today = state.today(now)
    cal = state.work_calendar()
    base = state.baseline()
    bplan = base.plan if base else None
    ahead = forecast(state, today)
    stages = []
    for s in state.plan.stages:
        b = bplan.stage(s.id) if bplan else None
        st = state.stages[s.id]
        items = [i for i in state.plan.items if i.stage == s.id]
        stages.append(
            StageStatus(
                id=s.id,
                name=s.name,
                status=s.status,
                planned_start=s.start,
                planned_finish=s.finish,
                baseline_start=b.start if b else None,
                baseline_finish=b.finish if b else None,
                actual_start=st.actual_start,
                actual_finish=st.actual_finish,
                critical=s.critical,
                total_float=s.total_float,
                items_done=sum(1 for i in items if state.items[i.id].checked),
                items_total=len(items),
            )
        )
    milestones = []
    for m in state.plan.milestones:
        bm = bplan.milestone(m.id) if bplan else None
        ms = state.milestones[m.id]
        milestones.append(
            MilestoneStatus(
                id=m.id,
                name=m.name,
                stage=m.stage,
                due=m.due,
                baseline_due=bm.due if bm else None,
                done_at=ms.at,
                done_by=ms.by,
                late_days=0 if ms.done else late_days(cal, m.due, today),
            )
        )
    gates = [
        GateStatus(
            id=g.id,
            name=g.name,
            stage=g.stage,
            at=g.at,
            due=g.due,
            passed_at=state.gates[g.id].passed_at,
            signed_by=[f"{s.person} ({s.role})" for s in state.gates[g.id].sign_offs],
            still_needed=still_needed(state, g.id),
        )
        for g in state.plan.gates
    ]
    return StatusReport(
        project_id=state.project_id,
        name=state.name,
        today=today,
        timezone=state.team.timezone,
        health=health(state, now),
        start=state.plan.start,
        forecast_finish=ahead.finish,
        baseline=base.number if base else None,
        baseline_finish=bplan.finish if bplan else None,
        stages=stages,
        milestones=milestones,
        gates=gates,
        open_risks=sum(1 for r in state.risks if r.status == "open"),
        due_next=due_next(state, now, k),
        warnings=calendar_warnings(state.calendar, state.plan.start, ahead.finish),
    )
