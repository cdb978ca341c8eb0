"""The schedules file (`examples/schedules.yaml`), as pydantic models: the single description
of the format. The loader validates with them, `crmflow schedules schema` publishes their
JSON Schema, and the workflow takes an automation's parameters as the same models.

    timezone: Asia/Shanghai           # default for every schedule
    schedules:
      - name: nightly-points-expiry
        cron: "0 2 * * *"             # 02:00 every day, in the schedule's time zone
        automation: points_expiry
        params: {notice_days: 30}
        overlap: skip                 # what a run due while the last one still runs does
        catchup_window: 1d            # missed runs (server down) younger than this still run
        paused: false
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from automations.cron import check_cron, check_timezone
from journeys.timing import parse_duration

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$", description="lower case")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _duration(v: str) -> str:
    parse_duration(v)
    return v


Duration = Annotated[str, AfterValidator(_duration), Field(description="e.g. 1d, 12h, 90m")]
Stage = Literal["lead", "prospect", "customer", "member"]
DateEvent = Literal["birthday", "membership_anniversary"]
ChunkSize = Annotated[int, Field(ge=1, le=1_000_000, description="rows per transaction")]


# --------------------------------------------------------------------------- parameters


class PointsExpiryParams(Strict):
    """Expire lots past their date as ledger entries; warn `notice_days` ahead."""

    notice_days: int = Field(
        30, ge=0, le=365, description="emit points_expiring this many days ahead; 0: never"
    )
    chunk_size: ChunkSize = 50_000


class TierReviewParams(Strict):
    """Move members up and down by the programme's tier policy (window, grace, anniversary)."""

    chunk_size: ChunkSize = 5_000


class TagExpiryParams(Strict):
    """Remove tags whose time to live has run out."""

    tags: list[Name] = Field(
        default_factory=list, description="only these tags; empty: every tag with a ttl"
    )
    chunk_size: ChunkSize = 20_000


class ChurnScanParams(Strict):
    """Send members whose last purchase is long past a `churn_scan` event: the rule pack's
    churn rules decide (gap against the member's usual gap) and start the retention action."""

    min_days_since_purchase: int = Field(
        30, ge=1, le=3650, description="only members this long without a purchase are checked"
    )
    stages: list[Stage] = Field(
        default_factory=lambda: list[Stage](["member"]), description="lifecycle stages to scan"
    )
    trigger: Literal["purchase_gap", "p_alive"] = Field(
        "purchase_gap",
        description="purchase_gap: every member past min_days_since_purchase gets the event "
        "(the rules compare the gap with their usual gap); p_alive: only members the customer "
        "model scores below max_p_alive (and past min_days_since_purchase)",
    )
    max_p_alive: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="with trigger p_alive: the probability of being alive below "
        "which a member is sent the event",
    )
    chunk_size: ChunkSize = 2_000


class ModelFitParams(Strict):
    """Refit the customer-base model (BG/NBD + Gamma-Gamma) on every purchase up to the run
    and score every customer with it: the p_alive, expected_purchases_*, clv_365d facts."""

    unit: Literal["days", "weeks"] = Field("weeks", description="time unit of the parameters")
    score: bool = Field(True, description="score every customer with the new model")


class LeadSlaParams(Strict):
    """Leads not followed up within the SLA: a `lead_sla_check` event (the rule pack returns
    them to the pool) and a notice to their owner's manager."""

    sla_hours: float = Field(48, gt=0, le=24 * 365)
    managers: dict[str, str] = Field(
        default_factory=dict, description="owner → the manager's e-mail address"
    )
    default_manager: str | None = Field(
        None, description="told about owners not listed in managers; unset: nobody"
    )
    chunk_size: ChunkSize = 2_000


class DateEventsParams(Strict):
    """Birthday and membership-anniversary events on the day, for journeys."""

    birthday_attribute: str = Field("birthday", description="customer attribute, YYYY-MM-DD")
    anniversary_attribute: str = Field(
        "member_since", description="customer attribute, YYYY-MM-DD; unset: the profile's creation"
    )
    events: list[DateEvent] = Field(
        default_factory=lambda: list[DateEvent](["birthday", "membership_anniversary"])
    )
    catch_up_days: int = Field(
        31,
        ge=1,
        le=366,
        description="a run covers every local day since the last completed run, at most "
        "this many days back (a schedule that did not run for a while greets no one a year "
        "late)",
    )
    chunk_size: ChunkSize = 5_000


class KpiDigestParams(Strict):
    """The programme's figures for the last `window_days`, as JSON and an HTML report."""

    window_days: int = Field(7, ge=1, le=3650)
    out_dir: str = Field(
        "reports/kpi", description="where the JSON and HTML files go; relative: under CRMFLOW_HOME"
    )
    email_to: list[str] = Field(default_factory=list, description="e-mail the report to these")


PARAMS: dict[str, type[Strict]] = {
    "points_expiry": PointsExpiryParams,
    "tier_review": TierReviewParams,
    "tag_expiry": TagExpiryParams,
    "churn_scan": ChurnScanParams,
    "lead_sla": LeadSlaParams,
    "date_events": DateEventsParams,
    "kpi_digest": KpiDigestParams,
    "model_fit": ModelFitParams,
}


def parse_params(automation: str, params: dict[str, Any] | BaseModel | None) -> Any:
    """The parameters as their automation's model (defaults filled in)."""
    model = PARAMS[automation]
    if isinstance(params, model):
        return params
    data = params.model_dump() if isinstance(params, BaseModel) else (params or {})
    return model.model_validate(data)


# --------------------------------------------------------------------------- schedules

Overlap = Literal[
    "skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"
]


class ScheduleBase(Strict):
    """What every schedule has; each automation's own model narrows `automation` to its
    name and `params` to its parameters."""

    name: Name = Field(description="the schedule's name; its Temporal id is automation:<name>")
    description: str | None = None
    cron: str = Field(description="when it runs: five cron fields or @daily/@hourly/…")
    timezone: str | None = Field(None, description="IANA zone; default: the file's timezone")
    overlap: Overlap = Field(
        "skip", description="a run due while the previous one still runs: skip it, buffer …"
    )
    catchup_window: Duration = Field(
        "1d", description="runs missed while the server was down are caught up this far back"
    )
    paused: bool = False
    automation: str
    params: Strict

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)

    def catchup(self) -> timedelta:
        return parse_duration(self.catchup_window)

    @property
    def zone(self) -> str:
        return self.timezone or "UTC"


class PointsExpirySchedule(ScheduleBase):
    automation: Literal["points_expiry"]
    params: PointsExpiryParams = Field(default_factory=PointsExpiryParams)


class TierReviewSchedule(ScheduleBase):
    automation: Literal["tier_review"]
    params: TierReviewParams = Field(default_factory=TierReviewParams)


class TagExpirySchedule(ScheduleBase):
    automation: Literal["tag_expiry"]
    params: TagExpiryParams = Field(default_factory=TagExpiryParams)


class ChurnScanSchedule(ScheduleBase):
    automation: Literal["churn_scan"]
    params: ChurnScanParams = Field(default_factory=ChurnScanParams)


class LeadSlaSchedule(ScheduleBase):
    automation: Literal["lead_sla"]
    params: LeadSlaParams = Field(default_factory=LeadSlaParams)


class DateEventsSchedule(ScheduleBase):
    automation: Literal["date_events"]
    params: DateEventsParams = Field(default_factory=DateEventsParams)


class KpiDigestSchedule(ScheduleBase):
    automation: Literal["kpi_digest"]
    params: KpiDigestParams = Field(default_factory=KpiDigestParams)


class ModelFitSchedule(ScheduleBase):
    automation: Literal["model_fit"]
    params: ModelFitParams = Field(default_factory=ModelFitParams)


ScheduleDef = Annotated[
    PointsExpirySchedule
    | TierReviewSchedule
    | TagExpirySchedule
    | ChurnScanSchedule
    | LeadSlaSchedule
    | DateEventsSchedule
    | KpiDigestSchedule
    | ModelFitSchedule,
    Field(discriminator="automation"),
]


class SchedulesFile(Strict):
    timezone: str = Field("UTC", description="the default time zone of every schedule")
    schedules: list[ScheduleDef] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @model_validator(mode="after")
    def _unique(self) -> SchedulesFile:
        seen: set[str] = set()
        for s in self.schedules:
            if s.name in seen:
                raise ValueError(f"schedule names must be unique: {s.name!r} repeated")
            seen.add(s.name)
            if s.timezone is None:
                s.timezone = self.timezone
        return self

    def get(self, name: str) -> ScheduleBase:
        for s in self.schedules:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in self.schedules) or "none"
        raise KeyError(f"no schedule {name!r} in the file (it has: {names})")
