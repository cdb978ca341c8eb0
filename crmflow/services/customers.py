"""Customers: search, the 360 view, upsert, and tags set by hand.

Personal data (e-mail, phone) is masked for callers without the `customers.pii`
permission: the face says which (`mask=`), the service masks.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, and_, delete, func, insert, select, update

from crmflow.domain import Customer, CustomerProfile, Name, describe_errors
from crmflow.ingest import ChunkLoop
from crmflow.ingest_report import IngestReport
from crmflow.processing import active_pack
from crmflow.services.customer_model import CustomerModelScores, customer_scores
from crmflow.services.errors import FieldProblem, Invalid, NotFound, TooLarge
from crmflow.services.operations import mask_address
from crmflow.services.points import PointsTotals, points_totals
from crmflow.services.runtime import Runtime
from rules.tiers import qualified_for
from store.automations import qualifying_totals
from store.db import utcnow
from store.models import (
    AuditRow,
    CustomerRow,
    EnrollmentRow,
    EventRow,
    FollowUpTaskRow,
    TagRow,
)
from store.profiles import load_profile
from store.sql import table_of

MAX_PAGE = 200
MANUAL = "manual"  # the `source` prefix of a tag set by hand: "manual:<who>"


def mask_email(email: str | None) -> str | None:
    return mask_address(email)


def mask_phone(phone: str | None) -> str | None:
    return mask_address(phone)


# --------------------------------------------------------------------------- search


class CustomerQuery(BaseModel):
    """Filters of the customer list; all optional, combined with AND."""

    customer_id: str | None = Field(None, max_length=200, description="Ids starting with this")
    email: str | None = Field(None, max_length=320, description="Exact e-mail (any case)")
    phone: str | None = Field(None, max_length=40, description="Exact phone, as stored (E.164)")
    name: str | None = Field(None, max_length=200, description="Names containing this")
    tag: str | None = Field(None, max_length=64)
    tier: str | None = Field(None, max_length=64)
    stage: Literal["lead", "prospect", "customer", "member"] | None = None
    after: str | None = Field(
        None, max_length=200, description="Cursor: the `next` of the previous page"
    )
    limit: int = Field(50, ge=1, le=MAX_PAGE)


class CustomerSummary(BaseModel):
    customer_id: str
    name: str | None
    email: str | None
    phone: str | None
    lifecycle_stage: str
    tier: str | None
    owner: str | None
    created_at: datetime


class CustomerPage(BaseModel):
    customers: list[CustomerSummary]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end")


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_customers(rt: Runtime, q: CustomerQuery, *, mask: bool) -> CustomerPage:
    """Customers matching `q`, ordered by id, one page (keyset cursor on the id)."""
    texts = (q.customer_id, q.email, q.phone, q.name, q.tag, q.tier, q.after)
    if any(t and "\x00" in t for t in texts):
        raise Invalid("a search text cannot hold a NUL character", field="query")
    c = CustomerRow.__table__.c
    where: list[Any] = []
    if q.customer_id:
        where.append(c.customer_id.like(_like(q.customer_id) + "%", escape="\\"))
    if q.email:
        where.append(func.lower(c.email) == q.email.strip().lower())
    if q.phone:
        where.append(c.phone == q.phone.replace(" ", ""))
    if q.name:
        where.append(func.lower(c.name).like("%" + _like(q.name.lower()) + "%", escape="\\"))
    if q.tier:
        where.append(c.tier == q.tier)
    if q.stage:
        where.append(c.lifecycle_stage == q.stage)
    if q.tag:
        t = TagRow.__table__.c
        where.append(c.customer_id.in_(select(t.customer_id).where(t.tag == q.tag)))
    if q.after:
        where.append(c.customer_id > q.after)
    stmt = (
        select(
            c.customer_id,
            c.name,
            c.email,
            c.phone,
            c.lifecycle_stage,
            c.tier,
            c.owner,
            c.created_at,
        )
        .where(and_(True, *where))
        .order_by(c.customer_id)
        .limit(q.limit + 1)
    )
    with rt.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    out = [CustomerSummary.model_validate(dict(r._mapping)) for r in rows]
    if mask:
        for s in out:
            s.email, s.phone = mask_email(s.email), mask_phone(s.phone)
    return CustomerPage(customers=out, next=out[-1].customer_id if more and out else None)


# --------------------------------------------------------------------------- 360 view


class TierProgress(BaseModel):
    tier: str | None
    qualifies_for: str = Field(description="The tier the figures over the window reach now")
    metric: str | None = Field(None, description="What the next tier counts: spend or points")
    value: float | None = Field(None, description="The member's figure over the tier window")
    next_tier: str | None = None
    needed: float | None = Field(None, description="How much more reaches the next tier")
    window_days: int


class RecentEvent(BaseModel):
    event_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any]


class JourneyPlace(BaseModel):
    journey: str
    version: str
    status: str
    node: str | None
    since: datetime | None
    variant: str | None
    entered_at: datetime
    finished_at: datetime | None
    outcome: str | None
    waiting_for: str | None = Field(
        None, description="what it waits for: delay, event, quiet_hours, rate_limit, frequency_cap"
    )
    wait_until: datetime | None = Field(None, description="until when, when known")
    wait_detail: str | None = Field(None, description="the event waited for, or why it waits")


def enrollment_wait(r: Any) -> dict[str, Any]:
    """An enrollment's wait, as the store records it (none once it has ended)."""
    if r.status != "active":
        return {}
    return {"waiting_for": r.waiting_for, "wait_until": r.wait_until, "wait_detail": r.wait_detail}


class OpenTask(BaseModel):
    id: int
    title: str
    owner: str | None
    due_at: datetime
    rule: str | None


class Customer360(CustomerProfile):
    """Everything about one customer in one answer: the profile (tags with the rule or
    person that set them, lots, tier history, coupons, audit trail) and more."""

    points: PointsTotals
    tier_progress: TierProgress | None = Field(
        None, description="null while no rules version (programme) is deployed"
    )
    recent_events: list[RecentEvent]
    journeys: list[JourneyPlace]
    open_tasks: list[OpenTask]
    model: CustomerModelScores | None = Field(
        None,
        description="the customer model's latest scores: p_alive, expected purchases, "
        "expected spend, CLV (none before a model is fitted, or without a purchase)",
    )


def _tier_progress(conn: Connection, customer_id: str, tier: str | None) -> TierProgress | None:
    pack = active_pack(conn)
    if pack is None:
        return None
    program = pack.program
    now = utcnow()
    spend, earned = qualifying_totals(conn, program, [customer_id], now)
    s, p = float(spend.get(customer_id) or 0), float(earned.get(customer_id) or 0)
    reached = qualified_for(program, s, p)
    ordered = program.ordered_tiers()
    current = next((t for t in ordered if t.name == (tier or reached)), None)
    higher = [t for t in ordered if current is None or t.rank > current.rank]
    nxt = higher[0] if higher else None
    value = None if nxt is None else (s if nxt.qualify.metric == "spend" else p)
    return TierProgress(
        tier=tier,
        qualifies_for=reached,
        metric=nxt.qualify.metric if nxt else None,
        value=value,
        next_tier=nxt.name if nxt else None,
        needed=max(nxt.qualify.threshold - (value or 0), 0) if nxt else None,
        window_days=program.tier_policy.window_days,
    )


def customer_360(rt: Runtime, customer_id: str, *, mask: bool, events: int = 20) -> Customer360:
    """The 360 view; `NotFound` for an unknown id."""
    now = utcnow()
    with rt.engine.connect() as conn:
        profile = load_profile(conn, customer_id, at=now)
        if profile is None:
            raise NotFound(f"no customer with id {customer_id!r}")
        e = EventRow.__table__.c
        recent = [
            RecentEvent.model_validate(dict(r._mapping))
            for r in conn.execute(
                select(e.event_id, e.type, e.occurred_at, e.properties)
                .where(e.customer_id == customer_id)
                .order_by(e.occurred_at.desc(), e.id.desc())
                .limit(events)
            )
        ]
        en = EnrollmentRow.__table__.c
        journeys = [
            JourneyPlace(
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
            )
            for r in conn.execute(
                select(EnrollmentRow.__table__)
                .where(en.customer_id == customer_id)
                .order_by(en.entered_at.desc())
                .limit(50)
            )
        ]
        tk = FollowUpTaskRow.__table__.c
        tasks = [
            OpenTask(id=r.id, title=r.title, owner=r.owner, due_at=r.due_at, rule=r.rule)
            for r in conn.execute(
                select(tk.id, tk.title, tk.owner, tk.due_at, tk.rule)
                .where(tk.customer_id == customer_id, tk.status == "open")
                .order_by(tk.due_at)
            )
        ]
        points = points_totals(conn, customer_id, now)
        progress = _tier_progress(conn, customer_id, profile.tier)
    if mask:
        profile.email, profile.phone = mask_email(profile.email), mask_phone(profile.phone)
    return Customer360(
        **dict(profile),
        points=points,
        tier_progress=progress,
        recent_events=recent,
        journeys=journeys,
        open_tasks=tasks,
        model=customer_scores(rt.engine, customer_id),
    )


# --------------------------------------------------------------------------- upsert


def upsert_customers(rt: Runtime, rows: list[dict[str, Any]]) -> IngestReport:
    """Validate raw profile rows (phone numbers read in `default_phone_region`), then upsert
    them through the import's chunk loop (`crmflow.ingest.ChunkLoop`); any invalid row
    refuses the whole request (`Invalid`, each problem naming the row's position and the
    fields at fault), so nothing is stored of a request that does not validate. The report
    is the import's (`IngestReport`)."""
    limit = rt.settings.api_max_batch
    if len(rows) > limit:
        raise TooLarge(f"{len(rows)} customers in one request; at most {limit} (api_max_batch)")
    started = time.perf_counter()
    context = {"phone_region": rt.settings.default_phone_region}
    problems: list[FieldProblem] = []
    batch = []
    for i, raw in enumerate(rows):
        try:
            item = Customer.model_validate(raw, context=context)
        except ValidationError as exc:
            problems.append(FieldProblem(str(i), describe_errors(exc)))
            continue
        row = item.model_dump()
        row["row_hash"] = item.content_hash()
        batch.append(row)
    if problems:
        raise Invalid(problems)
    report = IngestReport(kind="customers", source="api", received=len(rows)).list_all_faults()
    with ChunkLoop(rt.engine, report, chunk_size=rt.settings.import_chunk_size) as loop:
        for i, row in enumerate(batch):
            loop.add(row, i)
        loop.finish()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


# --------------------------------------------------------------------------- tags by hand


class TagChange(BaseModel):
    customer_id: str
    tag: str
    action: Literal["added", "removed", "unchanged"]
    source: str | None = None
    at: datetime


def _bump(conn: Connection, customer_id: str) -> None:
    c = CustomerRow.__table__.c
    conn.execute(
        update(table_of(CustomerRow))
        .where(c.customer_id == customer_id)
        .values(state_version=c.state_version + 1, updated_at=utcnow())
    )


def _audit(
    conn: Connection, customer_id: str, kind: str, tag: str, who: str, now: datetime
) -> None:
    conn.execute(
        insert(table_of(AuditRow)).values(
            customer_id=customer_id,
            at=now,
            recorded_at=now,
            event_id=None,
            rule=MANUAL,
            rules_version=None,
            kind=kind,
            detail={"tag": tag, "by": who},
            skipped=None,
        )
    )


def _existing_customer(conn: Connection, customer_id: str) -> None:
    """`NotFound` for an unknown id; otherwise bump the customer's rule-state version first
    (which locks the row on PostgreSQL, in the order the rules take it)."""
    c = CustomerRow.__table__.c
    if conn.execute(select(c.customer_id).where(c.customer_id == customer_id)).first() is None:
        raise NotFound(f"no customer with id {customer_id!r}")
    _bump(conn, customer_id)


def add_tag(
    rt: Runtime, customer_id: str, tag: Name, *, by: str, expires_at: datetime | None = None
) -> TagChange:
    """Add a tag by hand (source `manual:<who>`), beside the rules' tags; the audit trail
    records who and when. A tag the customer has already is left as it is."""
    now = utcnow()
    source = f"{MANUAL}:{by}"[:200]
    t = TagRow.__table__.c
    with rt.engine.begin() as conn:
        _existing_customer(conn, customer_id)
        have = conn.execute(
            select(t.source).where(t.customer_id == customer_id, t.tag == tag)
        ).first()
        if have is not None:
            return TagChange(
                customer_id=customer_id, tag=tag, action="unchanged", source=have.source, at=now
            )
        conn.execute(
            insert(table_of(TagRow)).values(
                customer_id=customer_id,
                tag=tag,
                source=source,
                created_at=now,
                expires_at=expires_at,
            )
        )
        _audit(conn, customer_id, "add_tag", tag, by, now)
    return TagChange(customer_id=customer_id, tag=tag, action="added", source=source, at=now)


def remove_tag(rt: Runtime, customer_id: str, tag: Name, *, by: str) -> TagChange:
    """Remove a tag by hand, whoever set it; audited with who and when."""
    now = utcnow()
    t = TagRow.__table__.c
    with rt.engine.begin() as conn:
        _existing_customer(conn, customer_id)
        gone = conn.execute(
            delete(table_of(TagRow)).where(t.customer_id == customer_id, t.tag == tag)
        ).rowcount
        if not gone:
            return TagChange(customer_id=customer_id, tag=tag, action="unchanged", at=now)
        _audit(conn, customer_id, "remove_tag", tag, by, now)
    return TagChange(customer_id=customer_id, tag=tag, action="removed", at=now)
