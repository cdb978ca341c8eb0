"""Reading the outbox: the messages the `outbox` channel holds (marketing messages when no
other channel is configured, every staff notice, and the team-chat posts' ledger rows),
written by `activities.channels.outbox` — read here as it writes them, never changed.

Filters: customer, channel, a time (`since`: created at or after), a page size and a
cursor (`before_id`, newest first). What is shown is bounded and safe to print:

- addresses are masked (`a***@example.com`) unless the caller may see personal data;
- the signed unsubscribe links (in `List-Unsubscribe` and in the bodies) lose their token
  — a token unsubscribes its customer, so it is a secret — and show `/unsubscribe/…`;
- bodies are left out unless asked for (`bodies=True`): a list of messages is for finding
  one, not for reading every customer's mail.

The models are `crmflow.services.operations`' (the API's `GET /api/v1/outbox` answers with
the same), so a message reads the same through every face.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import select

from crmflow.services.operations import (
    MAX_LIMIT,
    Channel,
    CustomerId,
    OutboxMessage,
    OutboxPage,
    mask_address,
)
from crmflow.services.runtime import Runtime
from store.models import OutboxMessageRow
from store.sql import table_of

OUTBOX = table_of(OutboxMessageRow)
# `<base>/unsubscribe/<token>`: the token is URL-quoted base64 and a signature
UNSUBSCRIBE_TOKEN = re.compile(r"(/unsubscribe/)[^\s<>\"'?#]+")
HIDDEN = r"\1…"


class OutboxFilter(BaseModel):
    customer_id: CustomerId | None = Field(None, description="Only this customer's messages")
    channel: Channel | None = Field(
        None, description="Only this channel's (outbox, email, wecom_robot, dingtalk_robot, slack…)"
    )
    since: AwareDatetime | None = Field(None, description="Only messages created at or after")
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    before_id: int | None = Field(None, ge=1, le=2**62, description="Older than this id")


def hide_tokens(text: str | None) -> str | None:
    """`text` with every unsubscribe link's token replaced by `…`."""
    return UNSUBSCRIBE_TOKEN.sub(HIDDEN, text) if text else text


def _message(row: Any, *, mask: bool, bodies: bool) -> OutboxMessage:
    m = OutboxMessage.model_validate(dict(row._mapping))
    if mask:
        m.address = mask_address(m.address)
    m.headers = {k: hide_tokens(str(v)) for k, v in m.headers.items()}
    if bodies:
        m.body_text, m.body_html = hide_tokens(m.body_text), hide_tokens(m.body_html)
    else:
        m.body_text = m.body_html = None
    return m


def list_messages(
    rt: Runtime, query: OutboxFilter | None = None, *, mask: bool, bodies: bool = False
) -> OutboxPage:
    """Outbox messages, newest first, filtered; `next_before_id` pages back."""
    q = query or OutboxFilter()
    c = OUTBOX.c
    stmt = select(OUTBOX).order_by(c.id.desc()).limit(q.limit + 1)
    if q.customer_id is not None:
        stmt = stmt.where(c.customer_id == q.customer_id)
    if q.channel is not None:
        stmt = stmt.where(c.channel == q.channel)
    if q.since is not None:
        stmt = stmt.where(c.created_at >= q.since)
    if q.before_id is not None:
        stmt = stmt.where(c.id < q.before_id)
    with rt.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    messages = [_message(r, mask=mask, bodies=bodies) for r in rows[: q.limit]]
    more = len(rows) > q.limit
    return OutboxPage(messages=messages, next_before_id=messages[-1].id if more else None)
