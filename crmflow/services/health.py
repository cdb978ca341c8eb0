"""Health: whether the database answers at the current schema."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from crmflow.services.runtime import Runtime
from store.migrate import current_revision, head_revision

log = logging.getLogger(__name__)


class DatabaseHealth(BaseModel):
    dialect: str
    revision: str | None = None
    head: str | None = None
    error: str | None = None


class Health(BaseModel):
    ok: bool
    database: DatabaseHealth


def check_health(rt: Runtime) -> Health:
    dialect = rt.engine.dialect.name
    try:
        revision = current_revision(rt.engine)
    except Exception as exc:  # unreachable, refused, no schema: not healthy either way
        log.warning("health: the database does not answer: %s", exc)
        return Health(ok=False, database=DatabaseHealth(dialect=dialect, error=type(exc).__name__))
    head = head_revision()
    return Health(
        ok=revision == head,
        database=DatabaseHealth(dialect=dialect, revision=revision, head=head),
    )
