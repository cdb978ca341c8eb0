"""The change log: every change made through the API or console, with who, what, when and
from where. Ids and paths only, never bodies, so it holds no personal data.

The privacy log beside it records every export and erasure of a customer's data (from any
face): who, when, which tables and how many rows — the customer's pseudonymous id, never a
name, an address or a message (`crmflow.services.privacy` writes it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import insert, select

from crmflow.services.keys import Principal
from crmflow.services.runtime import Runtime
from store import privacy as privacy_store
from store.db import utcnow
from store.models import ChangeLogRow


class Change(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_name: str | None
    person: str | None
    role: str | None
    action: str
    method: str
    target: str
    status: int
    address: str | None


def record_change(
    rt: Runtime,
    who: Principal,
    *,
    action: str,
    method: str,
    target: str,
    status: int,
    address: str | None,
) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            insert(ChangeLogRow).values(
                at=utcnow(),
                actor=who.actor,
                actor_name=who.name,
                person=who.person,
                role=who.role.value,
                action=action,
                method=method,
                target=target[:500],
                status=status,
                address=(address or "")[:64] or None,
            )
        )


def list_changes(rt: Runtime, *, limit: int = 100, before_id: int | None = None) -> list[Change]:
    """The newest changes first; `before_id` pages back."""
    t = ChangeLogRow.__table__
    q = select(t).order_by(t.c.id.desc()).limit(limit)
    if before_id is not None:
        q = q.where(t.c.id < before_id)
    with rt.engine.connect() as conn:
        return [Change.model_validate(dict(r._mapping)) for r in conn.execute(q)]


class PrivacyRecord(BaseModel):
    """One export or erasure: who, when, and how many rows of which tables."""

    id: int
    at: datetime
    action: str = Field(description="export or erase")
    customer_id: str = Field(description="the customer's id (after an erasure, a tombstone)")
    actor: str
    actor_name: str | None
    person: str | None
    role: str | None
    tables: dict[str, int] = Field(description="rows exported, or changed, per table")
    detail: dict[str, Any]


def privacy_log(
    rt: Runtime, *, customer_id: str | None = None, limit: int = 100
) -> list[PrivacyRecord]:
    """Exports and erasures, newest first (of one customer, or of all)."""
    with rt.engine.connect() as conn:
        rows = privacy_store.log_entries(conn, customer_id=customer_id, limit=limit)
    return [PrivacyRecord.model_validate(r) for r in rows]
