"""The tables, in SQLAlchemy 2.0 typed style. One schema for SQLite and PostgreSQL.

Points are kept as an append-only ledger: a lot per earning (with what remains of it) and a
ledger entry for every earn, debit and expiry, so no change ever loses history.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.db import JSONDoc, UTCDateTime, utcnow

# Stable constraint names so Alembic migrations look the same on both databases.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
BigId = BigInteger().with_variant(Integer(), "sqlite")
Points = Numeric(14, 2)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class CustomerRow(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    locale: Mapped[str | None] = mapped_column(String(35))
    consent: Mapped[dict[str, bool]] = mapped_column(JSONDoc, default=dict)
    lifecycle_stage: Mapped[str] = mapped_column(String(16), default="lead", index=True)
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    tier: Mapped[str | None] = mapped_column(String(64))
    # Digest of the last imported row: re-importing an unchanged row is a no-op.
    row_hash: Mapped[str | None] = mapped_column(String(32))
    # A customer first seen through an event, before any profile row arrived.
    is_stub: Mapped[bool] = mapped_column(default=False)
    # Bumped by every writer of what the rules read about this customer (profile, tags,
    # lots, processed events), so a process may cache rule state across chunks and reload
    # only the customers someone else changed.
    state_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Points a refund clawed back beyond the balance, under `negative_balance: forbid`:
    # later credits settle it first.
    points_debt: Mapped[Decimal] = mapped_column(Points, default=Decimal(0), server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the customer's personal data was erased: the row stays as a pseudonymous
    # tombstone (counts and sums stay right) and imports naming the id are rejected.
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EventRow(Base):
    """The append-only record of what happened. `event_id` is the idempotency key."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_events_customer_occurred", "customer_id", "occurred_at"),
        Index("ix_events_type_occurred", "type", "occurred_at"),
        Index("ix_events_unprocessed", "processed_at", "id"),
    )


class TagRow(Base):
    __tablename__ = "customer_tags"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    tag: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    __table_args__ = (UniqueConstraint("customer_id", "tag", name="uq_customer_tags_customer_tag"),)


class PointsLotRow(Base):
    """Points earned together, consumed first-in-first-out; `remaining` falls, never rises."""

    __tablename__ = "points_lots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    earned: Mapped[Decimal] = mapped_column(Points)
    remaining: Mapped[Decimal] = mapped_column(Points)
    earned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    source: Mapped[str | None] = mapped_column(String(200))
    event_id: Mapped[str | None] = mapped_column(String(200))
    # Names a lot before it has an id (rules plan in memory, the store writes at commit).
    lot_key: Mapped[str | None] = mapped_column(String(40), unique=True)
    order_id: Mapped[str | None] = mapped_column(String(200))
    # Pending points (the return window): spendable from `available_at`; null = at once.
    available_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_points_lots_customer_earned", "customer_id", "earned_at"),
        Index("ix_points_lots_expiring", "expires_at", "remaining"),
    )


class PointsLedgerRow(Base):
    """Every change to a balance, typed (`rules.ledger.KINDS`): earn, pending (+), activate
    (a transfer, counted in no total), redeem (-), redeem_reversal (+), clawback (-),
    adjust_credit (+), adjust_debit (-), expire (-)."""

    __tablename__ = "points_ledger"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    lot_id: Mapped[int | None] = mapped_column(
        ForeignKey("points_lots.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Points)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    # Same effect applied twice (a retried run) must write one entry.
    dedupe_key: Mapped[str | None] = mapped_column(String(250), unique=True)
    order_id: Mapped[str | None] = mapped_column(String(200))
    # Counts towards tier qualification (`points_earned`): earnings, and operator credits
    # marked so.
    qualifying: Mapped[bool] = mapped_column(default=False, server_default=false())
    actor: Mapped[str | None] = mapped_column(String(200))  # rule:<name>, a person, a key
    ref: Mapped[str | None] = mapped_column(String(200), index=True)  # redemption / adjustment


class OrderRefundRow(Base):
    """One refund of an order: what it took back, so no order is clawed back twice and
    qualifying spend falls by the refunded amount at the purchase's time."""

    __tablename__ = "order_refunds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    order_id: Mapped[str | None] = mapped_column(String(200))
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    purchased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refunded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    amount: Mapped[Decimal] = mapped_column(Points)  # money refunded
    points: Mapped[Decimal] = mapped_column(Points)  # points clawed back, debt included
    debt: Mapped[Decimal] = mapped_column(Points)  # the part the balance could not cover

    __table_args__ = (Index("ix_order_refunds_customer_order", "customer_id", "order_id"),)


class RewardRow(Base):
    """The rewards catalogue (rewards.yaml, applied). Stock left = `stock - issued`."""

    __tablename__ = "rewards"

    reward_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    cost: Mapped[Decimal] = mapped_column(Points)
    stock: Mapped[int | None] = mapped_column(Integer)
    issued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    per_member_limit: Mapped[int | None] = mapped_column(Integer)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime)
    min_tier: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    coupon: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RedemptionRow(Base):
    """A member spent points on a reward; `key` makes a retried request one redemption."""

    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    reward_id: Mapped[str] = mapped_column(ForeignKey("rewards.reward_id"))
    cost: Mapped[Decimal] = mapped_column(Points)
    status: Mapped[str] = mapped_column(String(16))  # done, reversed
    code: Mapped[str | None] = mapped_column(String(40))
    by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reversed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reversed_by: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_redemptions_customer_reward", "customer_id", "reward_id", "status"),
    )


class TierHistoryRow(Base):
    __tablename__ = "tier_history"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    from_tier: Mapped[str | None] = mapped_column(String(64))
    to_tier: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(200))


class DeliveryRow(Base):
    """A message handed to a channel (or suppressed), unique per dedupe key."""

    __tablename__ = "message_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(250), unique=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # sent, suppressed, failed
    reason: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RuleVersionRow(Base):
    """A deployed rules version: the programme and rule files as deployed, by content hash."""

    __tablename__ = "rule_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    program_path: Mapped[str] = mapped_column(Text)
    program_text: Mapped[str] = mapped_column(Text)
    files: Mapped[list[list[str]]] = mapped_column(JSONDoc)  # [[file name, text], ...]
    source: Mapped[str | None] = mapped_column(Text)  # the folder it was deployed from
    rule_count: Mapped[int] = mapped_column(Integer, default=0)
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(default=False, index=True)


class AuditRow(Base):
    """What changed a profile: which rule of which version, for which event, and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # the event's time
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    event_id: Mapped[str | None] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(100))
    rules_version: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    skipped: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_audit_log_customer_at", "customer_id", "at"),)


class JourneyCommandRow(Base):
    """Outbox of journey commands (enroll / event), written with the event's effects and
    handed to Temporal after commit by the journeys side."""

    __tablename__ = "journey_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(250), unique=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE")
    )
    journey: Mapped[str] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(String(16))  # enroll, event
    event: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    event_id: Mapped[str | None] = mapped_column(String(200))
    rule: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_journey_outbox_pending", "dispatched_at", "id"),)


class FollowUpTaskRow(Base):
    __tablename__ = "follow_up_tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str | None] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="open")
    rule: Mapped[str | None] = mapped_column(String(100))
    event_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CouponRow(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    customer_id: Mapped[str] = mapped_column(
        ForeignKey("customers.customer_id", ondelete="CASCADE"), index=True
    )
    value: Mapped[Decimal] = mapped_column(Points)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    rule: Mapped[str | None] = mapped_column(String(100))
    event_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxMessageRow(Base):
    """The `outbox` channel: messages land here instead of leaving the machine (the
    embedded default, so `make demo` sends somewhere visible)."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(250), unique=True)
    customer_id: Mapped[str | None] = mapped_column(String(200), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JourneyRow(Base):
    """A journey by name: which deployed version new enrollments use, and whether it runs."""

    __tablename__ = "journeys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active paused archived
    active_version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JourneyVersionRow(Base):
    """A deployed journey file, by content hash. Running enrollments keep theirs."""

    __tablename__ = "journey_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    source: Mapped[str] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(Text)
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("journey", "version"),)


class EnrollmentRow(Base):
    """One enrollment (one workflow): where the customer is in the journey, and since when."""

    __tablename__ = "journey_enrollments"

    workflow_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(200))
    entry_no: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="active")
    node: Mapped[str | None] = mapped_column(String(64))
    node_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    variant: Mapped[str | None] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(Text)  # completed, converted, exited: why
    # what it waits for now (delay, event, quiet_hours, rate_limit, frequency_cap) and until
    # when (None: no end, or not waiting); the detail names the event or the local time
    waiting_for: Mapped[str | None] = mapped_column(String(24))
    wait_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    wait_detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_journey_enrollments_journey_status", "journey", "status"),
        Index("ix_journey_enrollments_customer", "customer_id", "journey"),
    )


class JourneyStepRow(Base):
    """What happened at a node of an enrollment, for stats: entered, sent, suppressed,
    failed, exited, converted. Unique per (enrollment, step key): a retried activity
    records a step once."""

    __tablename__ = "journey_steps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    step_key: Mapped[str] = mapped_column(String(300), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(250), index=True)
    journey: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(200))
    node: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    variant: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_journey_steps_journey_node", "journey", "version", "node"),)


class SendScopeRow(Base):
    """One limit messages are reserved under (`rate:<journey>`, `cap:<customer>`): its row
    is locked by a reservation, so two workers never both take the last place."""

    __tablename__ = "send_scopes"

    scope: Mapped[str] = mapped_column(String(250), primary_key=True)
    touched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SendReservationRow(Base):
    """A place under a limit, taken before a send (`held`), then `used` once it happened or
    `released` when it was abandoned. Under a frequency cap a message holds one place
    (keyed by its delivery) through its retries; under a rate limit each attempt takes its
    own (`<delivery>#<n>`) at its own time, `slot_at`."""

    __tablename__ = "send_reservations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(250))
    key: Mapped[str] = mapped_column(String(250))
    workflow_id: Mapped[str | None] = mapped_column(String(250), index=True)
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("scope", "key"),
        Index("ix_send_reservations_scope_slot", "scope", "slot_at"),
    )


class DeliveryAttemptRow(Base):
    """One try of a send: when, how long it took, how it ended (sent, transient, permanent,
    interrupted) and what the provider answered (may quote the address: erased with the
    customer)."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String(250), index=True)
    customer_id: Mapped[str | None] = mapped_column(String(200), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    channel: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    response: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)


class AutomationRunRow(Base):
    """One attempt of a scheduled automation at one run date: where it got to (the step and
    the keyset cursor of its last committed chunk) and what it changed. A crashed attempt
    resumes from here; running a finished date again is a new attempt, which finds nothing
    left to change."""

    __tablename__ = "automation_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(String(64))
    automation: Mapped[str] = mapped_column(String(32))
    run_date: Mapped[str] = mapped_column(String(10))  # local date in the schedule's zone
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="running")
    step: Mapped[str | None] = mapped_column(String(32))
    cursor: Mapped[str | None] = mapped_column(String(250))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    workflow_id: Mapped[str | None] = mapped_column(String(250))
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint(
            "schedule", "run_date", "attempt", name="uq_automation_runs_schedule_date"
        ),
        Index("ix_automation_runs_started", "schedule", "started_at"),
    )


class ApiKeyRow(Base):
    """An API key: only a hash of its secret is kept. `key_id` is the public part of the
    token (`crm_<key_id>_<secret>`), shown in lists and the audit log."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    person: Mapped[str | None] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserRow(Base):
    """A console user: signs in with a name and a password (only an argon2 hash is kept)
    and acts with one role, as a team member (`person`) when given."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    person: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ConsoleSessionRow(Base):
    """A signed-in console session: the cookie holds a random token of which only a hash is
    kept; `csrf_token` is the secret every form of the session must carry."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(100), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ChangeLogRow(Base):
    """Every change made through the API or console: who (key and person), what, when and
    from which address. It holds ids and paths, never request bodies (no personal data)."""

    __tablename__ = "change_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(120))  # "key:<key_id>" / "user:<name>" / "cli"
    actor_name: Mapped[str | None] = mapped_column(String(100))
    person: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(10))
    target: Mapped[str] = mapped_column(String(500))
    status: Mapped[int] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(64))


class PrivacyLogRow(Base):
    """An export or an erasure of one customer's data: who, when, and how many rows of
    which tables. The customer id is the pseudonymous tombstone; nothing here is personal
    data (no names, addresses or message content)."""

    __tablename__ = "privacy_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(16))  # export, erase
    customer_id: Mapped[str] = mapped_column(String(200), index=True)
    actor: Mapped[str] = mapped_column(String(120))  # "key:<key_id>" / "cli:<user>"
    actor_name: Mapped[str | None] = mapped_column(String(100))
    person: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(32))
    tables: Mapped[dict[str, int]] = mapped_column(JSONDoc, default=dict)  # table -> rows
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)


# --- customer-base model (BG/NBD + Gamma-Gamma): fitted versions and per-customer scores ---

from sqlalchemy import Double  # noqa: E402  (kept with the block that uses it)


class CustomerModelRow(Base):
    """One fit of the customer-base model: the BG/NBD parameters (r, alpha, a, b) and the
    Gamma-Gamma ones (p, q, gamma), with the data they came from (calibration end, unit,
    customers, repeat buyers) and how the fit went. The newest row with status `ok` is the
    active model; a failed fit is kept with its message and never used."""

    __tablename__ = "customer_models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    status: Mapped[str] = mapped_column(String(16))  # ok, failed
    calibration_end: Mapped[datetime] = mapped_column(UTCDateTime)  # a UTC day, inclusive
    unit: Mapped[str] = mapped_column(String(8))  # days, weeks
    customers: Mapped[int] = mapped_column(Integer)
    repeat_buyers: Mapped[int] = mapped_column(Integer)
    transactions: Mapped[int] = mapped_column(Integer)  # purchase days, first ones included
    r: Mapped[float | None] = mapped_column(Double)
    alpha: Mapped[float | None] = mapped_column(Double)
    a: Mapped[float | None] = mapped_column(Double)
    b: Mapped[float | None] = mapped_column(Double)
    log_likelihood: Mapped[float | None] = mapped_column(Double)
    converged: Mapped[bool] = mapped_column(default=False)
    p: Mapped[float | None] = mapped_column(Double)
    q: Mapped[float | None] = mapped_column(Double)
    gamma: Mapped[float | None] = mapped_column(Double)
    spend_log_likelihood: Mapped[float | None] = mapped_column(Double)
    spend_converged: Mapped[bool] = mapped_column(default=False)
    spend_customers: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text)
    fitted_by: Mapped[str | None] = mapped_column(String(200))
    # the calibration table (actual and expected customers per repeat count), iterations,
    # optimiser messages, seconds
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    scored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    scored_customers: Mapped[int | None] = mapped_column(Integer)


class CustomerScoreRow(Base):
    """A customer's latest scores under a model version, as of `as_of` (one row per
    customer, rewritten by every scoring): the summary the model read and what it says.

    Derived data, rewritten whole: no foreign key to `customers` (every scored customer has
    purchase events, which have one; customers are never deleted, only erased to a
    tombstone) and no index besides the key — each would be checked or maintained for every
    one of hundreds of thousands of rows at every scoring."""

    __tablename__ = "customer_scores"

    customer_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_id: Mapped[int] = mapped_column(BigId)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    frequency: Mapped[int] = mapped_column(Integer)  # repeat purchase days
    recency_days: Mapped[float] = mapped_column(Double)  # first to last purchase
    age_days: Mapped[float] = mapped_column(Double)  # first purchase to as_of
    avg_spend: Mapped[float | None] = mapped_column(Double)  # per repeat purchase day
    p_alive: Mapped[float] = mapped_column(Double)
    expected_purchases_30d: Mapped[float] = mapped_column(Double)
    expected_purchases_90d: Mapped[float] = mapped_column(Double)
    expected_purchases_365d: Mapped[float] = mapped_column(Double)
    expected_avg_spend: Mapped[float | None] = mapped_column(Double)
    clv_365d: Mapped[float | None] = mapped_column(Double)
