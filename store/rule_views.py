"""Reads for the console's Rules pages: a page of deployed versions (newest first, with the
programme text each was deployed with), the names behind the keys and users that deployed
them, and one customer's recent events for the rules tester. Each is one set-based query."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from store.models import ApiKeyRow, CustomerRow, EventRow, RuleVersionRow, UserRow


@dataclass
class VersionListing:
    version: str
    deployed_at: datetime
    active: bool
    rule_count: int
    source: str | None
    program_text: str


def version_page(conn: Connection, limit: int, offset: int) -> tuple[list[VersionListing], int]:
    """Versions newest first (`limit` from `offset`), and how many there are in all."""
    r = RuleVersionRow
    rows = conn.execute(
        select(r.version, r.deployed_at, r.active, r.rule_count, r.source, r.program_text)
        .order_by(r.id.desc())
        .limit(limit)
        .offset(offset)
    )
    listed = [VersionListing(*row) for row in rows]
    total = conn.execute(select(func.count()).select_from(r)).scalar_one()
    return listed, int(total)


def deployers(
    conn: Connection, key_ids: Collection[str], user_names: Collection[str]
) -> dict[str, str]:
    """The display name of each `key:<id>` and `user:<name>` actor among those given."""
    names: dict[str, str] = {}
    if key_ids:
        k = ApiKeyRow
        for key_id, name, person in conn.execute(
            select(k.key_id, k.name, k.person).where(k.key_id.in_(list(key_ids)))
        ):
            names[f"key:{key_id}"] = person or name
    if user_names:
        u = UserRow
        for name, person in conn.execute(
            select(u.name, u.person).where(u.name.in_(list(user_names)))
        ):
            names[f"user:{name}"] = person or name
    return names


def recent_events(conn: Connection, customer_id: str, limit: int) -> list[dict[str, Any]] | None:
    """The customer's latest events, newest first; None when there is no such customer."""
    e = EventRow.__table__.c
    rows = [
        dict(row._mapping)
        for row in conn.execute(
            select(e.event_id, e.customer_id, e.type, e.occurred_at, e.properties)
            .where(e.customer_id == customer_id)
            .order_by(e.occurred_at.desc(), e.id.desc())
            .limit(limit)
        )
    ]
    if rows:
        return rows
    known = conn.execute(
        select(CustomerRow.customer_id).where(CustomerRow.customer_id == customer_id)
    ).first()
    return [] if known is not None else None
