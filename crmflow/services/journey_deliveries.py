"""A journey's deliveries with every attempt, and re-sending a failed message on purpose.

`deliveries` lists what a journey sent (or tried to): each message's status and reason
and each attempt's time, outcome, latency and the provider's answer (from the attempt
log the deliver activity writes), newest first, for a customer or with a status.

`resend` sends a message whose delivery failed for good again, once, because an operator
asks for it (the provider was misconfigured, the address was fixed): rendered again for the
customer as the message node is deployed now (as `journeys preview` shows it), checked for
consent and an address as a journey's send is, and sent through the channel a worker uses
under a key of its own (`<key>:resend:<n>`). It is recorded as a delivery of its own with
its attempt, names the failed one it re-sends, counts against the customer's frequency cap
(they do receive it) and is audited; the journey's steps and statistics are not rewritten.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import select

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    TransientSendError,
    build_channels,
)
from crmflow.services.errors import NotFound, Refused, Unavailable
from crmflow.services.journey_preview import PreviewRequest, _render
from crmflow.services.runtime import Runtime
from store import journeys as jstore
from store import send_limits
from store.db import utcnow
from store.models import DeliveryRow

MAX_DELIVERIES = 500


class AttemptLine(BaseModel):
    attempt: int
    at: datetime
    outcome: Literal["sent", "transient", "permanent", "interrupted"] | str
    latency_ms: int | None
    response: str | None = Field(description="what the provider answered (cut to 1,000 chars)")


class DeliveryLine(BaseModel):
    key: str = Field(description="the delivery's key: give it to `journeys resend`")
    customer_id: str
    journey: str | None
    node: str | None
    channel: str
    status: str = Field(description="sent, suppressed, failed, sending, retrying")
    reason: str | None
    created_at: datetime
    sent_at: datetime | None
    resend_of: str | None = None
    attempts: list[AttemptLine]


class DeliveriesQuery(BaseModel):
    customer_id: str | None = Field(None, max_length=200)
    status: Literal["sent", "suppressed", "failed", "sending", "retrying"] | None = None
    limit: int = Field(50, ge=1, le=MAX_DELIVERIES)


class DeliveryList(BaseModel):
    journey: str
    deliveries: list[DeliveryLine] = Field(description="newest first")


def _journey_prefix(journey: str) -> str:
    return f"journey:{journey}:"


def deliveries(rt: Runtime, journey: str, query: DeliveriesQuery | None = None) -> DeliveryList:
    """A journey's deliveries, newest first, each with its attempts."""
    q = query or DeliveriesQuery()
    d = DeliveryRow
    with rt.engine.connect() as conn:
        if not jstore.deployed(conn, journey):
            raise NotFound(f"no journey {journey!r} is deployed")
        stmt = select(*DeliveryRow.__table__.c).where(
            d.dedupe_key.startswith(_journey_prefix(journey), autoescape=True)
        )
        if q.customer_id is not None:
            stmt = stmt.where(d.customer_id == q.customer_id)
        if q.status is not None:
            stmt = stmt.where(d.status == q.status)
        rows = list(conn.execute(stmt.order_by(d.id.desc()).limit(q.limit)))
        tried = send_limits.attempts(conn, [r.dedupe_key for r in rows])
    return DeliveryList(journey=journey, deliveries=[_line(r, tried) for r in rows])


def _line(row: Any, tried: dict[str, list[send_limits.Attempt]]) -> DeliveryLine:
    meta: dict[str, Any] = row.meta or {}
    return DeliveryLine(
        key=row.dedupe_key,
        customer_id=row.customer_id,
        journey=meta.get("journey"),
        node=meta.get("node"),
        channel=row.channel,
        status=row.status,
        reason=row.reason,
        created_at=row.created_at,
        sent_at=row.sent_at,
        resend_of=meta.get("resend_of"),
        attempts=[
            AttemptLine(
                attempt=a.attempt,
                at=a.at,
                outcome=a.outcome,
                latency_ms=a.latency_ms,
                response=a.response,
            )
            for a in tried.get(row.dedupe_key, [])
        ],
    )


class ResendResult(BaseModel):
    key: str = Field(description="the new delivery's key")
    resend_of: str
    customer_id: str
    journey: str
    node: str
    channel: str
    via: str
    status: Literal["sent"] = "sent"
    provider_message_id: str


def _failed_delivery(rt: Runtime, key: str) -> tuple[Any, int]:
    d = DeliveryRow
    with rt.engine.connect() as conn:
        row = conn.execute(
            select(*DeliveryRow.__table__.c).where(d.dedupe_key == key)
        ).one_or_none()
        if row is None:
            raise NotFound(
                f"no delivery with key {key!r} (`crmflow journeys deliveries` lists them)"
            )
        resends = conn.execute(
            select(d.dedupe_key, d.status).where(
                d.dedupe_key.startswith(f"{key}:resend:", autoescape=True)
            )
        ).all()
    if row.status != "failed":
        raise Refused(
            f"delivery {key!r} is {row.status}"
            + (f" ({row.reason})" if row.reason else "")
            + ": only a failed message can be re-sent"
        )
    meta = row.meta or {}
    if not meta.get("journey") or not meta.get("node"):
        raise Refused(f"delivery {key!r} is not a journey's message")
    went = [k for k, status in resends if status == "sent"]
    if went:
        raise Refused(f"delivery {key!r} was re-sent already, as {went[0]!r}")
    return row, len(resends) + 1


def _prepare(rt: Runtime, key: str) -> tuple[OutgoingMessage, Any, str]:
    row, number = _failed_delivery(rt, key)
    meta = row.meta or {}
    shown = _render(
        rt,
        PreviewRequest(journey=meta["journey"], node=meta["node"], customer_id=row.customer_id),
        for_test=False,
    )
    if shown.held_back is not None:
        raise Refused(f"not re-sent: {shown.held_back}")
    new_key = f"{key}:resend:{number}"[:250]
    message = OutgoingMessage(
        dedupe_key=new_key,
        customer_id=row.customer_id,
        channel=shown.channel,
        to=shown.address,
        subject=shown.subject,
        text=shown.text,
        html=shown.html,
        unsubscribe_url=shown.unsubscribe_url if shown.channel == "email" else None,
        data={"journey": meta["journey"], "node": meta["node"], "resend_of": key},
    )
    return message, row, shown.channel


def _record(
    rt: Runtime,
    message: OutgoingMessage,
    row: Any,
    *,
    status: str,
    reason: str | None,
    meta: dict[str, Any],
    outcome: str,
    answer: str | None,
    latency_ms: int,
) -> None:
    at = utcnow()
    with rt.engine.begin() as conn:
        jstore.open_delivery(
            conn,
            dedupe_key=message.dedupe_key,
            customer_id=row.customer_id,
            channel=message.channel,
            status=status,
            reason=reason,
            at=at,
            subject=message.subject,
            body=message.text or message.html,
            meta={**(row.meta or {}), "resend_of": row.dedupe_key, **meta},
        )
        send_limits.record_attempt(
            conn,
            dedupe_key=message.dedupe_key,
            customer_id=message.customer_id,
            at=at,
            channel=message.channel,
            outcome=outcome,
            response=answer,
            latency_ms=latency_ms,
        )
        if status == "sent" and rt.settings.frequency_cap_messages > 0:
            # the customer did receive it: it takes a place under their cap (not checked:
            # an operator asked for it)
            scope = send_limits.cap_scope(row.customer_id)
            send_limits.record_used(conn, scope, message.dedupe_key, at)


async def resend(rt: Runtime, key: str, *, by: str) -> ResendResult:
    """Send the failed message under delivery `key` again, once. `NotFound` for an unknown
    key; `Refused` for a message that did not fail, a customer without consent or address
    now, or a channel that refuses it again; `Unavailable` when the channel cannot send now."""
    message, row, channel_name = await asyncio.to_thread(_prepare, rt, key)
    try:
        channels = build_channels(rt.settings, rt.engine)
    except ValueError as exc:
        raise Refused(f"the channels are not set up: {exc}") from exc
    channel = channels.get(channel_name) or channels["outbox"]
    started = time.monotonic()
    meta = {"by": by, "via": channel.name}
    try:
        sent = await channel.send(message)
    except (PermanentSendError, TransientSendError) as exc:
        permanent = isinstance(exc, PermanentSendError)
        await asyncio.to_thread(
            _record, rt, message, row, status="failed", reason=str(exc), meta=meta,
            outcome="permanent" if permanent else "transient", answer=str(exc),
            latency_ms=_ms(started),
        )  # fmt: skip
        if permanent:
            raise Refused(f"the {channel.name} channel refused it again: {exc}") from exc
        raise Unavailable(f"the {channel.name} channel cannot send now: {exc}") from exc
    await asyncio.to_thread(
        _record, rt, message, row, status="sent", reason=None,
        meta={**meta, "provider_message_id": sent.provider_message_id},
        outcome="sent", answer=sent.provider_message_id, latency_ms=_ms(started),
    )  # fmt: skip
    meta_row = row.meta or {}
    return ResendResult(
        key=message.dedupe_key,
        resend_of=key,
        customer_id=row.customer_id,
        journey=str(meta_row.get("journey")),
        node=str(meta_row.get("node")),
        channel=channel_name,
        via=channel.name,
        provider_message_id=sent.provider_message_id,
    )


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
