"""Day-to-day operations: the follow-up tasks rules create for sales owners, and the message
outbox (where messages land instead of leaving the machine).

Tasks are listed soonest due first and paged with an opaque cursor (keyset on due time and
id, so a page is stable while tasks are added or closed). Closing a task twice is not an
error: the second close finds it done and changes nothing. The table has no column for who
closed a task; the API's change log records who called.

Outbox messages hold personal data: the address is masked (`a***@example.com`) when the
caller may not see it (`mask`); so is the unsubscribe link, which acts for the customer.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select, update

from crmflow.services.errors import Invalid, NotFound
from crmflow.services.runtime import Runtime
from store.models import FollowUpTaskRow, OutboxMessageRow
from store.sql import table_of

MAX_LIMIT = 500
TASKS = table_of(FollowUpTaskRow)
OUTBOX = table_of(OutboxMessageRow)

TaskStatus = Literal["open", "done"]
# PostgreSQL text cannot hold NUL: a filter with one could match nothing and fails instead
NO_NUL = r"^[^\x00]*$"
Owner = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
CustomerId = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
Channel = Annotated[str, Field(min_length=1, max_length=32, pattern=NO_NUL)]


# --- follow-up tasks -----------------------------------------------------------------------


class Task(BaseModel):
    """A follow-up task: a rule asked `owner` to contact a customer by `due_at`."""

    id: int
    customer_id: str
    owner: str | None
    title: str
    due_at: datetime
    status: str = Field(description="open or done")
    rule: str | None = Field(description="The rule that created it")
    event_id: str | None = Field(description="The event that set the rule off")
    created_at: datetime


class TaskQuery(BaseModel):
    status: TaskStatus | None = Field(None, description="open or done (default: both)")
    owner: Owner | None = None
    customer_id: CustomerId | None = None
    limit: int = Field(50, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="`next_cursor` of the previous page",
    )


class TaskPage(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = Field(description="Give it as `cursor` for the next page")


def _cursor(task: Task) -> str:
    raw = f"{task.due_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        due, _, task_id = raw.partition("|")
        at = datetime.fromisoformat(due)
        last = int(task_id)
        if at.tzinfo is None or not 0 <= last < 2**62:
            raise ValueError
        return at.astimezone(UTC), last
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise Invalid("not a cursor of this list", field="cursor") from None


def _task(row: Any) -> Task:
    return Task.model_validate(dict(row._mapping))


def list_tasks(rt: Runtime, query: TaskQuery | None = None) -> TaskPage:
    """Follow-up tasks, soonest due first, filtered by status, owner and customer."""
    q = query or TaskQuery()
    c = TASKS.c
    stmt = select(TASKS).order_by(c.due_at, c.id).limit(q.limit + 1)
    if q.status is not None:
        stmt = stmt.where(c.status == q.status)
    if q.owner is not None:
        stmt = stmt.where(c.owner == q.owner)
    if q.customer_id is not None:
        stmt = stmt.where(c.customer_id == q.customer_id)
    if q.cursor is not None:
        due, last = _after(q.cursor)
        stmt = stmt.where(or_(c.due_at > due, and_(c.due_at == due, c.id > last)))
    with rt.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    tasks = [_task(r) for r in rows[: q.limit]]
    more = len(rows) > q.limit
    return TaskPage(tasks=tasks, next_cursor=_cursor(tasks[-1]) if more else None)


def close_task(rt: Runtime, task_id: int) -> Task:
    """Mark a task done; `NotFound` for an unknown id. Closing a done task changes nothing."""
    c = TASKS.c
    with rt.engine.begin() as conn:
        # only an open task is changed, so two closes at once both succeed with one write
        conn.execute(update(TASKS).where(c.id == task_id, c.status != "done").values(status="done"))
        row = conn.execute(select(TASKS).where(c.id == task_id)).first()
    if row is None:
        raise NotFound(f"no follow-up task {task_id}")
    return _task(row)


# --- the outbox ----------------------------------------------------------------------------


class OutboxMessage(BaseModel):
    id: int
    dedupe_key: str
    customer_id: str | None
    channel: str
    address: str | None = Field(description="Masked unless the caller may see personal data")
    subject: str | None
    body_text: str | None
    body_html: str | None
    headers: dict[str, Any]
    created_at: datetime


class OutboxPage(BaseModel):
    messages: list[OutboxMessage]
    next_before_id: int | None = Field(description="Give it as `before_id` for older ones")


def mask_address(address: str | None) -> str | None:
    """`alice@example.com` → `a***@example.com`; `+8613800001234` → `+86*******1234`;
    `13800001234` → `138****1234`; anything else keeps its first and last two characters."""
    if not address:
        return address
    local, at, domain = address.rpartition("@")
    if at and local:
        return f"{local[0]}***@{domain}"
    digits = address.replace(" ", "").replace("-", "")
    if digits.lstrip("+").isdigit():
        head = 3  # "+86" or "138": the country or network, not the person
        if len(digits) - head - 4 < 2:
            return "*" * (len(digits) - 2) + digits[-2:]
        return digits[:head] + "*" * (len(digits) - head - 4) + digits[-4:]
    if len(address) <= 6:
        return "***"
    return f"{address[:2]}***{address[-2:]}"
