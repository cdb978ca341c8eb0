"""What crosses the Temporal boundary for scheduled automations: the workflow's input, the
activities' requests and results, and each automation's steps. Plain data, no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

AUTOMATION_BEGIN = "automation_begin"
AUTOMATION_STEP = "automation_step"
AUTOMATION_FINISH = "automation_finish"

# The steps of each automation, in order. A step works through its rows chunk by chunk,
# committing each chunk with the run's cursor, so a crashed step resumes after its last chunk.
STEPS: dict[str, tuple[str, ...]] = {
    # "activate" last: runs started before it existed replay without it (a workflow patch)
    "points_expiry": ("expire", "notify", "activate"),
    "tier_review": ("review",),
    "tag_expiry": ("expire",),
    "churn_scan": ("scan",),
    "lead_sla": ("scan", "notify"),
    "date_events": ("scan",),
    "kpi_digest": ("report",),
    "model_fit": ("fit",),
}


def schedule_id(name: str) -> str:
    """The Temporal Schedule id of a schedule in the file."""
    return f"automation:{name}"


class AutomationInput(BaseModel):
    """What a Temporal Schedule starts `AutomationWorkflow` with."""

    schedule: str
    automation: str
    timezone: str = "UTC"
    params: dict[str, Any] = Field(default_factory=dict)
    as_of: datetime | None = Field(
        None, description="run as of this time; default: the scheduled time (or now)"
    )
    heartbeat_seconds: float = Field(
        30, gt=0, description="a step's worker silent this long is presumed dead; retried"
    )


class BeginRequest(BaseModel):
    input: AutomationInput
    as_of: datetime
    workflow_id: str


class RunStart(BaseModel):
    run_id: int
    run_date: str
    attempt: int
    step: str | None = Field(None, description="the step a resumed attempt got to")
    resumed: bool = False


class StepRequest(BaseModel):
    run_id: int
    step: str
    input: AutomationInput


class StepResult(BaseModel):
    chunks: int = 0
    counts: dict[str, float] = Field(default_factory=dict)


class FinishRequest(BaseModel):
    run_id: int
    error: str | None = None


class RunSummary(BaseModel):
    schedule: str
    automation: str
    run_date: str
    attempt: int
    status: str
    counts: dict[str, float] = Field(default_factory=dict)


def add_counts(into: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v
    return into
