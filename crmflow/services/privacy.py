"""Privacy: export everything stored about one customer, and erase their personal data.

`export_customer` gathers the profile, consent and its changes, events, tags, points (lots,
ledger, debt, refunds, redemptions), tiers, the audit trail, messages with their content,
tasks, coupons and journey enrollments from the store — and, for the enrollments, their
state in Temporal where it answers (where it does not, the document says so). Temporal
holds ids only, never personal data (DESIGN: workflow inputs, memos and search attributes
carry ids), so the store is the whole of the personal data.

`erase_customer` removes the personal data from every table in one transaction
(`store.privacy.erase_customer` says what is removed and what is kept) and keeps the
customer id as a pseudonymous tombstone, so member counts, the KPI digest and the points
ledger's sums are the same after it as before. Event properties: numbers, booleans and
the order-like strings of `KEPT_STRING_PROPERTIES` (plus the programme's order property)
are kept — the ledger's refunds find their orders by them and revenue sums the amounts —
and every other string, list or object is removed. Running enrollments are ended in the
store and, when Temporal answers, their workflows are terminated. Imports naming an erased
id are rejected from then on (`crmflow.ingest.ChunkLoop`).

Both are written to the privacy log (`crmflow.services.audit.privacy_log`): who, when,
which tables and how many rows — never a name, an address or a message.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from crmflow.ingest import active_program
from crmflow.services.errors import Invalid, NotFound, Unavailable
from crmflow.services.keys import Principal
from crmflow.services.runtime import Runtime
from rules.source import SourceError
from store import privacy as store
from store.db import utcnow

FORMAT: Literal["crmflow.customer-export.v1"] = "crmflow.customer-export.v1"
# string event properties an erasure keeps: an order's id (refunds claw back by it), the
# currency and the sales channel — not personal; every other string may be free text
KEPT_STRING_PROPERTIES = frozenset({"order_id", "currency", "channel"})
TEMPORAL_SECONDS = 10.0  # the most one Temporal call may take before it counts as unreachable
TERMINATE_REASON = "the customer's data was erased"
NOT_ASKED = "no journey enrollments: Temporal was not asked"

Row = dict[str, Any]


# --------------------------------------------------------------------------- Temporal


class WorkflowState(BaseModel):
    workflow_id: str
    status: str | None = Field(
        None, description="RUNNING, COMPLETED, TERMINATED …; null when Temporal has no such run"
    )
    run_id: str | None = None
    started_at: datetime | None = None
    closed_at: datetime | None = None
    history_length: int | None = None
    note: str | None = Field(None, description="what happened, when something did")


class TemporalPart(BaseModel):
    reachable: bool | None = Field(description="null when Temporal was not asked")
    note: str
    workflows: list[WorkflowState] = Field(default_factory=list)


async def _client(rt: Runtime) -> Any:
    """The Temporal client, or the reason there is none (a string)."""
    try:
        return await asyncio.wait_for(rt.temporal(), TEMPORAL_SECONDS)
    except Unavailable as exc:
        return f"Temporal is not reachable: {exc}"
    except TimeoutError:
        return f"Temporal did not answer within {TEMPORAL_SECONDS:g} s"


def _missing(exc: Exception) -> bool:
    from temporalio.service import RPCError, RPCStatusCode

    return isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.NOT_FOUND,
        RPCStatusCode.FAILED_PRECONDITION,
    )


async def _describe(rt: Runtime, workflow_ids: list[str]) -> TemporalPart:
    if not workflow_ids:
        return TemporalPart(reachable=None, note=NOT_ASKED)
    client = await _client(rt)
    if isinstance(client, str):
        return TemporalPart(
            reachable=False,
            note=f"{client}; the enrollments are as the store recorded them",
            workflows=[WorkflowState(workflow_id=w, note="not asked") for w in workflow_ids],
        )
    states = []
    for wid in workflow_ids:
        try:
            d = await asyncio.wait_for(client.get_workflow_handle(wid).describe(), TEMPORAL_SECONDS)
        except Exception as exc:  # not found, or Temporal stopped answering
            note = "not found in Temporal" if _missing(exc) else f"not described: {exc}"
            states.append(WorkflowState(workflow_id=wid, note=note))
            continue
        states.append(
            WorkflowState(
                workflow_id=wid,
                status=d.status.name if d.status is not None else None,
                run_id=d.run_id,
                started_at=d.start_time,
                closed_at=d.close_time,
                history_length=d.history_length,
            )
        )
    return TemporalPart(reachable=True, note="as Temporal reports them now", workflows=states)


async def _terminate(rt: Runtime, workflow_ids: list[str]) -> TemporalPart:
    if not workflow_ids:
        return TemporalPart(reachable=None, note="no enrollments to end in Temporal")
    client = await _client(rt)
    if isinstance(client, str):
        return TemporalPart(
            reachable=False,
            note=f"{client}; the enrollments are ended in the store and the customer has no "
            "address or consent left, so their workflows send nothing. Erase again when "
            "Temporal is up to terminate them",
            workflows=[WorkflowState(workflow_id=w, note="not terminated") for w in workflow_ids],
        )
    states = []
    for wid in workflow_ids:
        try:
            await asyncio.wait_for(
                client.get_workflow_handle(wid).terminate(reason=TERMINATE_REASON),
                TEMPORAL_SECONDS,
            )
            states.append(WorkflowState(workflow_id=wid, status="TERMINATED", note="terminated"))
        except Exception as exc:
            note = "not running in Temporal" if _missing(exc) else f"not terminated: {exc}"
            states.append(WorkflowState(workflow_id=wid, note=note))
    done = sum(1 for s in states if s.note == "terminated")
    return TemporalPart(
        reachable=True, note=f"{done} of {len(states)} workflows terminated", workflows=states
    )


# --------------------------------------------------------------------------- export


class ConsentPart(BaseModel):
    current: dict[str, Any] = Field(description="consent per channel now")
    changes: list[Row] = Field(
        description="recorded changes: unsubscribe events and the audit trail's consent "
        "entries (consent set by a profile import is the profile's current value only)"
    )


class PointsPart(BaseModel):
    debt: Decimal
    lots: list[Row]
    ledger: list[Row]
    refunds: list[Row]
    redemptions: list[Row]


class TiersPart(BaseModel):
    current: str | None
    history: list[Row]


class MessagesPart(BaseModel):
    deliveries: list[Row] = Field(description="messages handed to a channel, with content")
    attempts: list[Row] = Field(
        default_factory=list, description="every try of those sends, with the provider's answer"
    )
    outbox: list[Row] = Field(description="messages of the outbox channel, with content")
    journey_commands: list[Row]


class JourneysPart(BaseModel):
    enrollments: list[Row]
    steps: list[Row]
    temporal: TemporalPart


class CustomerExport(BaseModel):
    """Everything stored about one customer, as one document."""

    format: Literal["crmflow.customer-export.v1"] = FORMAT
    customer_id: str
    exported_at: datetime
    erased_at: datetime | None = Field(None, description="set when the data was erased")
    profile: Row
    consent: ConsentPart
    events: list[Row]
    tags: list[Row]
    points: PointsPart
    tiers: TiersPart
    audit_trail: list[Row]
    messages: MessagesPart
    tasks: list[Row]
    coupons: list[Row]
    journeys: JourneysPart
    privacy_log: list[Row] = Field(description="earlier exports and erasures of this customer")
    counts: dict[str, int] = Field(description="rows exported, per table")


def _unsubscribes(events: list[Row], audit: list[Row]) -> list[Row]:
    changes: list[Row] = [
        {"at": e["occurred_at"], "source": "event", "event_id": e["event_id"], "type": e["type"]}
        for e in events
        if e["type"] == "unsubscribed"
    ]
    changes += [
        {"at": a["at"], "source": "audit", "event_id": a["event_id"], "rule": a["rule"]}
        | {"detail": a["detail"]}
        for a in audit
        if a["kind"] == "consent"
    ]
    return sorted(changes, key=lambda c: c["at"])


def _check_id(customer_id: str) -> None:
    if not customer_id or len(customer_id) > 200:
        raise Invalid("must be 1 to 200 characters", field="customer_id")
    if "\x00" in customer_id:
        raise Invalid("must not contain a NUL character", field="customer_id")


def _read(rt: Runtime, customer_id: str) -> tuple[Row, dict[str, list[Row]]]:
    _check_id(customer_id)
    with rt.engine.connect() as conn:
        profile = store.customer_row(conn, customer_id)
        if profile is None:
            raise NotFound(f"no customer with id {customer_id!r}")
        return profile, store.customer_tables(conn, customer_id)


def _log(
    rt: Runtime,
    who: Principal,
    action: str,
    customer_id: str,
    tables: dict[str, int],
    detail: dict[str, Any],
) -> int:
    with rt.engine.begin() as conn:
        return store.record(
            conn,
            action=action,
            customer_id=customer_id,
            at=utcnow(),
            actor=who.actor,
            actor_name=who.name,
            person=who.person,
            role=who.role.value,
            tables=tables,
            detail=detail,
        )


async def export_customer(rt: Runtime, customer_id: str, *, who: Principal) -> CustomerExport:
    """Everything stored about `customer_id` (`NotFound` for an unknown id), with the
    enrollments' state in Temporal where it answers; recorded in the privacy log."""
    now = utcnow()
    profile, t = await asyncio.to_thread(_read, rt, customer_id)
    temporal = await _describe(rt, [r["workflow_id"] for r in t["journey_enrollments"]])
    counts = {"customers": 1} | {name: len(rows) for name, rows in t.items()}
    doc = CustomerExport(
        customer_id=customer_id,
        exported_at=now,
        erased_at=profile.get("erased_at"),
        profile=profile,
        consent=ConsentPart(
            current=dict(profile.get("consent") or {}),
            changes=_unsubscribes(t["events"], t["audit_log"]),
        ),
        events=t["events"],
        tags=t["customer_tags"],
        points=PointsPart(
            debt=profile.get("points_debt") or Decimal(0),
            lots=t["points_lots"],
            ledger=t["points_ledger"],
            refunds=t["order_refunds"],
            redemptions=t["redemptions"],
        ),
        tiers=TiersPart(current=profile.get("tier"), history=t["tier_history"]),
        audit_trail=t["audit_log"],
        messages=MessagesPart(
            deliveries=t["message_deliveries"],
            attempts=t["delivery_attempts"],
            outbox=t[store.OUTBOX],
            journey_commands=t["journey_outbox"],
        ),
        tasks=t["follow_up_tasks"],
        coupons=t["coupons"],
        journeys=JourneysPart(
            enrollments=t["journey_enrollments"], steps=t["journey_steps"], temporal=temporal
        ),
        privacy_log=t["privacy_log"],
        counts=counts,
    )
    detail = {"temporal": _temporal_word(temporal)}
    await asyncio.to_thread(_log, rt, who, "export", customer_id, counts, detail)
    return doc


def _temporal_word(part: TemporalPart) -> str:
    return {None: "not asked", True: "reachable", False: "not reachable"}[part.reachable]


# --------------------------------------------------------------------------- erasure


class ErasureReport(BaseModel):
    """What an erasure did (or, `dry_run`, would do)."""

    customer_id: str
    dry_run: bool
    erased_at: datetime | None = Field(
        None, description="when the data was (first) erased; null for a dry run of a new one"
    )
    already_erased: bool = Field(description="the customer had been erased before")
    rows: dict[str, int] = Field(
        description="rows changed or removed per table (dry run: rows about the customer)"
    )
    enrollments_ended: list[str] = Field(
        default_factory=list, description="workflow ids of the running enrollments ended"
    )
    temporal: TemporalPart | None = None
    what_happens: list[str] = Field(description="the erasure in words")
    log_id: int | None = Field(None, description="its entry in the privacy log")


WHAT_HAPPENS = [
    "name, e-mail, phone, locale, time zone, consent and attributes are removed from the "
    "profile; the customer id stays as a pseudonymous tombstone with its stage, tier, owner "
    "and dates, so counts and the KPI digest do not change",
    "event properties keep numbers, booleans and order ids, currency and channel (what the "
    "ledger's refunds and the revenue figures read); other text is removed",
    "tags are deleted; message subjects, bodies, addresses and headers are removed",
    "the person's name, e-mail, phone and attribute values are replaced by '[erased]' in "
    "ledger and tier reasons, the audit trail, task titles, journey steps and notices to staff",
    "points lots, the ledger, refunds, redemptions and coupons are kept as they are: "
    "balances and totals do not change",
    "running journey enrollments are ended (and their workflows terminated when Temporal answers)",
    "imports naming this customer id are rejected from now on",
]


def _keep_strings(rt: Runtime) -> frozenset[str]:
    try:
        with rt.engine.connect() as conn:
            active = active_program(conn)
    except SourceError:
        active = None
    if active is None:
        return KEPT_STRING_PROPERTIES
    return KEPT_STRING_PROPERTIES | {active[1].order_property}


def redaction(rt: Runtime) -> store.Redaction:
    """The erasure's rules for event properties: numbers, booleans and nulls are kept, and
    strings of `KEPT_STRING_PROPERTIES` (and the programme's order property)."""
    keep = _keep_strings(rt)

    def keep_property(key: str, value: Any) -> bool:
        if value is None or isinstance(value, bool | int | float):
            return True
        return isinstance(value, str) and key in keep

    return store.Redaction(keep_property)


def phone_forms(phone: str | None) -> list[str]:
    """The ways a stored (E.164) phone number may have been written elsewhere: without the
    plus, without the country code, in national and international format."""
    if not phone:
        return []
    import phonenumbers

    forms = [phone, phone.lstrip("+")]
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return forms
    fmt = phonenumbers.PhoneNumberFormat
    forms += [
        str(number.national_number),
        phonenumbers.format_number(number, fmt.NATIONAL),
        phonenumbers.format_number(number, fmt.INTERNATIONAL),
    ]
    return forms


def _erase(rt: Runtime, customer_id: str, who: Principal, dry_run: bool) -> ErasureReport:
    _check_id(customer_id)
    now = utcnow()
    with rt.engine.begin() as conn:
        profile = store.customer_row(conn, customer_id, lock=not dry_run)
        if profile is None:
            raise NotFound(f"no customer with id {customer_id!r}")
        before = profile.get("erased_at")
        tables = store.customer_tables(conn, customer_id)
        running = [
            r["workflow_id"] for r in tables["journey_enrollments"] if r["status"] == "active"
        ]
        if dry_run:
            rows = {"customers": 1} | {n: len(r) for n, r in tables.items() if n != "privacy_log"}
            return ErasureReport(
                customer_id=customer_id,
                dry_run=True,
                erased_at=before,
                already_erased=before is not None,
                rows=rows,
                enrollments_ended=running,
                what_happens=WHAT_HAPPENS,
            )
        rules = redaction(rt)
        rules.add(*phone_forms(profile.get("phone")))
        counts = store.erase_customer(conn, customer_id, rules, now)
        log_id = store.record(
            conn,
            action="erase",
            customer_id=customer_id,
            at=now,
            actor=who.actor,
            actor_name=who.name,
            person=who.person,
            role=who.role.value,
            tables=counts,
            detail={"enrollments_ended": len(running), "again": before is not None},
        )
    return ErasureReport(
        customer_id=customer_id,
        dry_run=False,
        erased_at=before or now,
        already_erased=before is not None,
        rows=counts,
        enrollments_ended=running,
        what_happens=WHAT_HAPPENS,
        log_id=log_id,
    )


def _ended_by_erasure(rt: Runtime, customer_id: str) -> list[str]:
    with rt.engine.connect() as conn:
        tables = store.customer_tables(conn, customer_id)
    return [
        r["workflow_id"]
        for r in tables["journey_enrollments"]
        if r["outcome"] == store.ERASED_OUTCOME
    ]


def _note_temporal(rt: Runtime, log_id: int, part: TemporalPart) -> None:
    terminated = sum(1 for w in part.workflows if w.note == "terminated")
    extra = {"temporal": _temporal_word(part), "workflows_terminated": terminated}
    with rt.engine.begin() as conn:
        store.add_detail(conn, log_id, extra)


async def erase_customer(
    rt: Runtime, customer_id: str, *, who: Principal, dry_run: bool = False
) -> ErasureReport:
    """Erase the customer's personal data (`NotFound` for an unknown id); `dry_run` only
    says what would happen. The store's part is one transaction, recorded in the privacy
    log; then the workflows of the enrollments it ended are terminated where Temporal
    answers (erasing again retries that)."""
    report = await asyncio.to_thread(_erase, rt, customer_id, who, dry_run)
    if dry_run:
        return report
    ended = await asyncio.to_thread(_ended_by_erasure, rt, customer_id)
    report.temporal = await _terminate(rt, ended)
    if report.log_id is not None:
        await asyncio.to_thread(_note_temporal, rt, report.log_id, report.temporal)
    return report
