"""The console's customer page in one answer: the 360 view (`crmflow.services.customers`),
the points statement (`crmflow.services.points`, as `crmflow points show`), and what neither
holds — which rule or person set each tag (the audit trail), each journey enrollment with
the steps it logged and its newest delivery (why a message was suppressed, or that it is
still being sent), whether the customer's quiet hours hold messages back right now, and the
customer's exports and erasures (the privacy log).

Why an enrollment waits is told from what the store records: the step log (`suppressed:
frequency cap …`, `no consent for email`), the delivery ledger (`sending`, `retrying`), the
node it sits at and since when, and the quiet hours of the settings on the customer's clock.
A send held back by quiet hours, a deferred cap or the rate limit is a durable timer inside
its workflow and writes no row until it sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from crmflow.services.audit import PrivacyRecord, privacy_log
from crmflow.services.customer_model import CustomerModelScores, customer_scores
from crmflow.services.customers import Customer360, JourneyPlace, customer_360, enrollment_wait
from crmflow.services.errors import Invalid
from crmflow.services.points import PointsStatement, statement
from crmflow.services.runtime import Runtime
from journeys.timing import next_send_time
from store import customer_views as store
from store.db import utcnow

MANUAL = "manual"  # the audit trail's rule for a tag set by hand (crmflow.services.customers)
STEPS_SHOWN = 5
ACTIVE = "active"


class TagLine(BaseModel):
    tag: str
    expires_at: datetime | None
    set_by_kind: Literal["rule", "person", "automation", "unknown"]
    set_by: str = Field(description="the rule's or person's name")
    set_at: datetime | None = Field(None, description="when (the event's time for a rule)")
    event_id: str | None = None
    rules_version: str | None = None


class StepLine(BaseModel):
    node: str
    kind: str = Field(description="entered, sent, suppressed, failed, exited, converted")
    reason: str | None
    at: datetime


class DeliveryLine(BaseModel):
    journey: str | None
    node: str | None
    channel: str
    status: str = Field(description="sending, retrying, sent, suppressed, failed")
    reason: str | None
    at: datetime
    sent_at: datetime | None


class JourneyLine(JourneyPlace):
    """Where the customer is in a journey (as the 360 view says) and what the store adds."""

    workflow_id: str
    steps: list[StepLine] = Field(description="the newest steps it logged, newest first")
    delivery: DeliveryLine | None = Field(None, description="its newest delivery")
    why: str | None = Field(None, description="why it waits, from what the store records")


class QuietHours(BaseModel):
    timezone: str
    start: str
    end: str
    now: bool = Field(description="the customer's clock shows quiet hours now")
    until: datetime | None = Field(None, description="when they end (UTC), when `now`")
    local_until: str | None = Field(None, description="the end on the customer's clock")


class CustomerPage(BaseModel):
    view: Customer360
    erased_at: datetime | None
    points: PointsStatement
    tags: list[TagLine]
    journeys: list[JourneyLine]
    deliveries: list[DeliveryLine]
    quiet_hours: QuietHours | None
    privacy: list[PrivacyRecord] = Field(
        default_factory=list, description="exports and erasures (when asked for)"
    )
    model: CustomerModelScores | None = Field(
        None,
        description="the customer model's latest scores (none before a model is fitted, or "
        "for a customer without a purchase)",
    )


def _who(rule: str, by: str | None) -> tuple[str, str]:
    if rule == MANUAL:
        return "person", by or "someone"
    if rule.startswith("automation:"):
        return "automation", rule.removeprefix("automation:")
    return "rule", rule


def _delivery(d: store.Delivery) -> DeliveryLine:
    meta = d.meta or {}
    journey, node = meta.get("journey"), meta.get("node")
    return DeliveryLine(
        journey=journey if isinstance(journey, str) else None,
        node=node if isinstance(node, str) else None,
        channel=d.channel,
        status=d.status,
        reason=d.reason,
        at=d.created_at,
        sent_at=d.sent_at,
    )


def _why(line: JourneyLine, quiet: QuietHours | None) -> str | None:
    """Why an active enrollment waits, as far as the store tells."""
    if line.status != ACTIVE:
        return None
    d = line.delivery
    if d is not None and d.node == line.node and d.status in ("sending", "retrying"):
        return f"a {d.channel} message is being sent ({d.status})"
    waiting = _waiting(line)
    if waiting is not None:
        return waiting
    last = line.steps[0] if line.steps else None
    if last is not None and last.kind == "suppressed" and last.reason:
        return f"its last message was suppressed: {last.reason}"
    if quiet is not None and quiet.now:
        return (
            f"quiet hours until {quiet.local_until} ({quiet.timezone}): a message due now "
            "waits until then"
        )
    return None  # at its node (a delay, a wait for an event): the table says where


def _waiting(line: JourneyLine) -> str | None:
    """What the enrollment records it waits for, in words."""
    kind, until, detail = line.waiting_for, line.wait_until, line.wait_detail
    if kind is None:
        return None
    when = f" until {until:%Y-%m-%d %H:%M} UTC" if until else ""
    if kind == "event":
        return f"waits for event {detail or '?'}{when} (then it times out)"
    if kind == "delay":
        return f"waits for a delay ({detail}){when}" if detail else f"waits for a delay{when}"
    if kind == "quiet_hours":
        return f"a message waits: {detail}" if detail else f"a message waits for quiet hours{when}"
    return f"a message waits for the {detail or kind.replace('_', ' ')}{when}"


def quiet_hours(rt: Runtime, timezone: str, at: datetime) -> QuietHours:
    """The settings' quiet hours on the customer's clock at `at`."""
    s = rt.settings
    try:
        ends = next_send_time(at, timezone or "UTC", s.quiet_hours_start, s.quiet_hours_end)
    except (ValueError, KeyError):
        ends = next_send_time(at, "UTC", s.quiet_hours_start, s.quiet_hours_end)
        timezone = "UTC"
    now = ends > at
    return QuietHours(
        timezone=timezone or "UTC",
        start=s.quiet_hours_start,
        end=s.quiet_hours_end,
        now=now,
        until=ends if now else None,
        local_until=s.quiet_hours_end if now else None,
    )


def customer_page(
    rt: Runtime,
    customer_id: str,
    *,
    mask: bool,
    ledger: int = 20,
    with_privacy: bool = False,
) -> CustomerPage:
    """Everything the customer page shows; `NotFound` for an unknown id. `mask`: e-mail
    and phone masked (callers without `customers.pii`)."""
    if not customer_id or len(customer_id) > 200 or "\x00" in customer_id:
        raise Invalid("must be 1 to 200 characters without NUL", field="customer_id")
    now = utcnow()
    view = customer_360(rt, customer_id, mask=mask)
    points = statement(rt, customer_id, ledger=ledger, at=now)
    with rt.engine.connect() as conn:
        setters = store.tag_setters(conn, customer_id)
        rows = store.enrollments(conn, customer_id)
        steps = store.latest_steps(conn, [r.workflow_id for r in rows])
        deliveries = store.deliveries(conn, customer_id)
        erased = store.erased_at(conn, customer_id)
    privacy = privacy_log(rt, customer_id=customer_id, limit=20) if with_privacy else []
    tags = []
    for t in view.tags:
        s = setters.get(t.tag)
        if s is not None:
            kind, name = _who(s.rule, s.by)
        elif t.source and t.source.startswith(f"{MANUAL}:"):
            kind, name = "person", t.source.removeprefix(f"{MANUAL}:")
        else:
            kind, name = "unknown", t.source or "-"
        tags.append(
            TagLine(
                tag=t.tag,
                expires_at=t.expires_at,
                set_by_kind=kind,
                set_by=name,
                set_at=s.at if s else None,
                event_id=s.event_id if s else None,
                rules_version=s.rules_version if s else None,
            )
        )
    quiet = quiet_hours(rt, view.timezone, now) if any(r.status == ACTIVE for r in rows) else None
    newest: dict[str, DeliveryLine] = {}
    for d in deliveries:
        wid = d.dedupe_key.rsplit(":", 2)[0]
        newest.setdefault(wid, _delivery(d))
    journeys = []
    for r in rows:
        line = JourneyLine(
            workflow_id=r.workflow_id,
            journey=r.journey,
            version=r.version,
            status=r.status,
            node=r.node,
            since=r.node_since,
            variant=r.variant,
            entered_at=r.entered_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            **enrollment_wait(r),
            steps=[
                StepLine(node=s.node, kind=s.kind, reason=s.reason, at=s.at)
                for s in steps.get(r.workflow_id, [])[:STEPS_SHOWN]
            ],
            delivery=newest.get(r.workflow_id),
        )
        line.why = _why(line, quiet)
        journeys.append(line)
    return CustomerPage(
        view=view,
        erased_at=erased,
        points=points,
        tags=tags,
        journeys=journeys,
        deliveries=[_delivery(d) for d in deliveries],
        quiet_hours=quiet,
        privacy=privacy,
        model=customer_scores(rt.engine, customer_id),
    )
