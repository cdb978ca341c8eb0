"""What ProjectWorkflow and its callers pass each other: activity names, the workflow's
type and id, its query and update models, and the activities' requests and results.

The workflow (`workflows.project`), its activities (`activities.project_activities`) and
the projects service import these; this module imports nothing from `activities/`,
`store/` or `workflows/`, so the workflow sandbox never pulls database code in.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from pydantic import BaseModel, Field

from projects.kpi import KpiResult
from projects.models import MigrationSummary
from projects.reminders import Notice
from projects.state import ProjectState, RiskChange, RiskInput

SEND_PROJECT_NOTICES = "project_send_notices"
MEASURE_PROJECT_KPIS = "project_measure_kpis"
WORKFLOW_TYPE = "ProjectWorkflow"
REFUSED = "ProjectRuleError"  # the ApplicationError type of a refused update


def project_slug(name: str) -> str:
    """The project's id from its name: lower case, runs of other characters as one `-`."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().casefold()).strip("-")
    if not slug:
        raise ValueError(f"project name {name!r} has no letters or digits to make an id from")
    return slug[:100]


def workflow_id(name: str) -> str:
    return f"project-{project_slug(name)}"


class NoticeBatch(BaseModel):
    """Notices to send now; `at` is the workflow's time, kept with each message."""

    project_id: str
    notices: list[Notice]
    at: datetime


class KpiMeasureRequest(BaseModel):
    """Measure `metrics` over [before_from, before_to) and [after_from, after_to)."""

    metrics: list[str]
    before_from: datetime
    before_to: datetime
    after_from: datetime
    after_to: datetime


class KpiMeasurement(BaseModel):
    before: dict[str, float]
    after: dict[str, float]


class KpiReviewRecord(BaseModel):
    recorded_at: datetime
    go_live: date
    review_date: date
    before_window: tuple[date, date]
    after_window: tuple[date, date]
    results: list[KpiResult]

    @property
    def met(self) -> bool:
        return all(r.met for r in self.results)


class ProjectCarry(BaseModel):
    """What the workflow keeps beside the project's state (carried over continue-as-new)."""

    kpi_review: KpiReviewRecord | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    close_reason: str | None = None
    revision: int = Field(0, description="bumped by every accepted update")
    runs: int = Field(1, description="runs of this project's workflow (continue-as-new)")
    history_limit: int | None = Field(
        None, description="continue as new at this many history events (tests; else the server's)"
    )


class ProjectSnapshot(BaseModel):
    """The `project` query: everything the CLI draws and reports from."""

    state: ProjectState
    carry: ProjectCarry
    now: datetime


class ProjectOutcome(BaseModel):
    project_id: str
    finished: bool
    closed_at: datetime | None
    kpi_review: KpiReviewRecord | None


# Update inputs: `by` is a team member's name or e-mail.


class CheckInput(BaseModel):
    item: str
    by: str
    note: str | None = None
    override: str | None = Field(
        None,
        description="the project manager's reason for checking an item of another role, or "
        "for starting its stage before the stages it depends on have finished",
    )


class DoneInput(BaseModel):
    milestone: str
    by: str
    note: str | None = None


class SignOffInput(BaseModel):
    gate: str
    by: str
    comment: str | None = None
    role: str | None = None


class RiskAddInput(BaseModel):
    risk: RiskInput
    by: str


class RiskUpdateInput(BaseModel):
    risk_id: str
    change: RiskChange
    by: str


class RiskCloseInput(BaseModel):
    risk_id: str
    by: str
    comment: str | None = None


class RebaselineInput(BaseModel):
    by: str
    reason: str | None = None


class StageInput(BaseModel):
    stage: str
    by: str
    on: date | None = None
    override: str | None = Field(
        None,
        description="the project manager's reason for starting the stage before the stages "
        "it depends on have finished",
    )


class MigrationCheckInput(BaseModel):
    summary: MigrationSummary


class CloseInput(BaseModel):
    by: str
    reason: str | None = None


class ProjectChange(BaseModel):
    """What an accepted update recorded: the action, on what, by whom, when (on the team's
    clock), any override of a control and its reason, and the sentence a face prints."""

    action: str = Field(description="check, done, signoff, risk_add, … as the update's name")
    ref: str = Field(description="the item, milestone, gate, stage, risk or project id")
    by: str = Field(description="the team member's name")
    on: date = Field(description="the day it was recorded, on the team's clock")
    override: str | None = Field(None, description="the reason given for an override")
    passed: bool | None = Field(None, description="a sign-off: whether the gate has passed")
    message: str


class MigrationCheckResult(BaseModel):
    passed: bool
    failures: list[str]
