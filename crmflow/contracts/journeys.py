"""What the journey workflow and its activities pass each other: names and pydantic models.

The workflow imports this module (passed through the sandbox) and nothing from
`activities/` or `store/`.

No personal data crosses into Temporal (workflow inputs, results, signals, activity
requests and results are kept in its history, which erasing a customer cannot rewrite):
these models carry ids, types, counts, times, the journey's own definition and decisions.
A customer's profile, addresses, messages and the properties of their events stay in the
store; the activities read them there and hand back only what the workflow decides on
(a condition holds, a delay ends at, a message was sent).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# Activity names
JOURNEY_DELIVER = "journey_deliver"
JOURNEY_FACTS = "journey_facts"  # only for enrollments started before journey_conditions
JOURNEY_CONDITIONS = "journey_conditions"
JOURNEY_DELAY = "journey_delay"
JOURNEY_RECORD = "journey_record"
JOURNEY_UPDATE = "journey_update"
JOURNEY_ENTER_SEGMENT = "journey_enter_segment"

# Signal and query names
JOURNEY_EVENT_SIGNAL = "journey_event"
JOURNEY_POSITION_QUERY = "position"

StepKind = Literal[
    "entered", "sent", "suppressed", "failed", "exited", "converted", "completed", "held_out"
]


def enrollment_workflow_id(journey: str, customer_id: str, entry_no: int) -> str:
    """One workflow per (journey, customer, entry): the id says which."""
    return f"journey:{journey}:{customer_id}:{entry_no}"


class JourneyEvent(BaseModel):
    """A customer event handed to a running enrollment (goal, exit, wait_for).

    The dispatcher sends the event's id, type and time only (`properties_in_store`): a
    condition on its properties is tested by an activity that reads them from the store.
    Events signalled before that (in running enrollments' histories), and events a rule
    makes up (their properties come from the rule file), carry `properties` themselves."""

    event_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any] = Field(default_factory=dict)
    properties_in_store: bool = Field(
        False, description="the properties are not here: read them from the store by event_id"
    )


class EnrollmentInput(BaseModel):
    """Starts (and, carried over, continues) one enrollment."""

    journey: str
    version: str
    definition: dict[str, Any] = Field(description="the journey file, as deployed (JSON)")
    customer_id: str
    entry_no: int = 1
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="from the enroll command: the rule file's constants or the segment run, "
        "never the customer's data",
    )
    entry_event: JourneyEvent | None = Field(
        None,
        description="the event that started the enrollment (set by the workflow from its "
        "start signal; by id, type and time: its properties stay in the store)",
    )
    # carried over by continue-as-new
    entered_at: datetime | None = None
    node: str | None = None
    visits: int = 0
    variants: dict[str, str] = Field(default_factory=dict)
    pending: list[JourneyEvent] = Field(default_factory=list)
    path: list[str] = Field(default_factory=list, description="nodes visited, latest last")
    # test hook: continue as new after this many nodes (0: when Temporal suggests it)
    continue_after_nodes: int = 0


class EnrollmentResult(BaseModel):
    outcome: Literal["completed", "converted", "exited", "held_out"]
    reason: str | None = None
    path: list[str]
    sent: int = 0


WaitKind = Literal["delay", "event", "quiet_hours", "rate_limit", "frequency_cap"]


class WaitState(BaseModel):
    """What an enrollment waits for, and until when (None: no end known yet). `after`, a
    duration, is counted from when the wait is recorded (a message's next node: from its
    send). `detail` names the event waited for or the local time a wait ends."""

    waiting_for: WaitKind
    until: datetime | None = None
    after: str | None = None
    detail: str | None = None


class EnrollmentPosition(BaseModel):
    """The position query's answer: where the enrollment is, since when, the path so far,
    its split arms, messages sent, and what it waits for now."""

    node: str | None = None
    since: datetime | None = None
    path: list[str] = Field(default_factory=list)
    variants: dict[str, str] = Field(default_factory=dict)
    sent: int = 0
    waiting: WaitState | None = None


class DeliverRequest(BaseModel):
    """Send one message node's message, once per step key, after every check."""

    workflow_id: str
    journey: str
    version: str
    customer_id: str
    entry_no: int = 1
    node: str
    visit: int = 0
    step_key: str
    channel: str
    template: dict[str, Any]
    data: dict[str, Any] = Field(default_factory=dict)
    entry_event: JourneyEvent | None = Field(
        None, description="the enrollment's entry event: the message may show its properties"
    )
    variant: str | None = None
    frequency_cap_policy: Literal["skip", "defer", "exempt"] = "skip"
    rate_limit_per_minute: int | None = None
    next_node: str | None = Field(None, description="where the enrollment is after this one")
    next_wait: WaitState | None = Field(
        None, description="what the enrollment waits for at the next node, when it waits"
    )
    finish: bool = Field(False, description="the enrollment ends after this message")
    entered_at: datetime
    at: datetime = Field(description="the workflow's time: checks and records use it")


class DeliverResult(BaseModel):
    """What became of a message: never its address or content. `reason` is one of the
    fixed texts crmflow writes (the delivery record keeps a channel's or template's own
    error, which may quote the address or the customer's data)."""

    status: Literal["sent", "suppressed", "failed", "wait"]
    reason: str | None = None
    retry_at: datetime | None = Field(None, description="with wait: try again at this time")
    waiting_for: WaitKind | None = Field(None, description="with wait: what holds it back")
    sent_at: datetime | None = None


class FactsRequest(BaseModel):
    """`journey_facts`: kept for enrollments that started before `journey_conditions` and
    `journey_delay` (their histories replay it)."""

    customer_id: str
    at: datetime


class ConditionsRequest(BaseModel):
    """Test conditions (a branch's cases, a goal's or a wait's `when`) on the customer's
    facts at `at` and, with `event`, on that event's properties: only the answers come back.
    """

    customer_id: str
    at: datetime
    conditions: list[Any] = Field(description="rules conditions as JSON (None: always)")
    event: JourneyEvent | None = None


class ConditionsResult(BaseModel):
    holds: list[bool] = Field(description="for each condition, in order: whether it holds")


class DelayRequest(BaseModel):
    """When a delay node on the customer's calendar (a local time in their zone, a date in
    their attributes) ends, from `at`."""

    customer_id: str
    at: datetime
    workflow_id: str | None = Field(
        None, description="the enrollment, to record until when it waits"
    )
    node: dict[str, Any] = Field(description="the delay node, as in the definition")


class DelayResult(BaseModel):
    until: datetime | None = Field(description="None: the customer has no such date")


class RecordRequest(BaseModel):
    """Record where an enrollment is and what happened there (idempotent by step key)."""

    workflow_id: str
    journey: str
    version: str
    customer_id: str
    entry_no: int
    node: str | None
    kind: StepKind | None = None
    step_key: str | None = None
    reason: str | None = None
    variant: str | None = None
    at: datetime
    entered_at: datetime
    finish: str | None = Field(None, description="ends the enrollment: completed/exited/…")
    wait: WaitState | None = Field(None, description="what the enrollment waits for now")


class UpdateRequest(BaseModel):
    """Apply an update node's effects (the rules' effects) once per step key."""

    workflow_id: str
    journey: str
    version: str
    customer_id: str
    node: str
    step_key: str
    effects: list[dict[str, Any]]
    at: datetime


class SegmentRequest(BaseModel):
    """Evaluate a journey's segment now and queue the customers in it (once per run key)."""

    journey: str
    run: str
    at: datetime


def segment_schedule_id(journey: str) -> str:
    return f"journey-segment:{journey}"
