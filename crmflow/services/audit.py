"""The change log: every change made through the API or console, with who, what, when and
from where. Ids and paths only, never bodies, so it holds no personal data."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import insert, select

from crmflow.services.keys import Principal
from crmflow.services.runtime import Runtime
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
