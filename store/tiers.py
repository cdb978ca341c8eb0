"""Tier writes outside the rules: the programme's welcome tier for members who have none.

A customer who becomes a member gets the welcome tier, by whatever path they became one: a
customer import (the chunk loop calls `welcome_members` for the chunk's customers), a rules
version deployed or activated over members imported before (a backfill over every member).
Set-based: one UPDATE of the members without a tier, then their `tier_history` and
`audit_log` rows, for exactly the customers that UPDATE changed. Idempotent: a member with
a tier is never touched again.

The history row is dated when the membership began, where the customer's attributes say so
(the attribute the tier policy's anniversary reads, `member_since` by default: the date the
tier review counts anniversaries from), else at the time of the grant; so a tier change the
rules make for an older event does not sort before the welcome it follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import Connection, literal, true, update

from journeys.timing import parse_date
from rules.models import Program
from store.bulk import insert_rows
from store.db import utcnow
from store.models import AuditRow, CustomerRow, TierHistoryRow
from store.sql import table_of, where_in

WELCOME_RULE = "welcome_tier"
WELCOME_REASON = "welcome tier: a member without a tier"
MEMBER_SINCE = "member_since"


def membership_attribute(program: Program) -> str:
    """The customer attribute holding the date a membership began (the tier policy's
    anniversary attribute, `member_since` by default)."""
    return str(getattr(program.tier_policy.downgrade, "attribute", MEMBER_SINCE))


def _since(raw: Any, now: datetime) -> datetime:
    """The start of a membership from its attribute's value, at midnight UTC; `now` when
    the value is missing, not a date, or later than `now`."""
    if raw is None:
        return now
    try:
        start = datetime.combine(parse_date(raw), time(), UTC)
    except ValueError:
        return now
    return min(start, now)


def grant_welcome_tier(
    conn: Connection,
    welcome: str,
    now: datetime,
    ids: Sequence[str] | None = None,
    reason: str = WELCOME_REASON,
    *,
    rules_version: str | None = None,
    since_attribute: str | None = MEMBER_SINCE,
) -> int:
    """Give the tier `welcome` to every member without a tier (among `ids` when given), in
    the caller's transaction, and bump their rule-state version; write a tier history row
    and an audit row (rule `welcome_tier`) for each of them, dated at the membership start
    the attribute `since_attribute` holds (when it is a date not after `now`), else at
    `now`. Returns how many customers got it."""
    customers = table_of(CustomerRow)
    c = customers.c
    since = c.attributes[since_attribute].as_string() if since_attribute else literal(None)
    wheres = [true()] if ids is None else where_in(conn, c.customer_id, sorted(set(ids)))
    changed: list[tuple[str, datetime]] = []
    for where in wheres:
        stmt = (
            update(customers)
            .where(where, c.lifecycle_stage == "member", c.tier.is_(None))
            .values(tier=welcome, state_version=c.state_version + 1, updated_at=now)
            .returning(c.customer_id, since)
        )
        changed += [(cid, _since(raw, now)) for cid, raw in conn.execute(stmt)]
    if not changed:
        return 0
    changed.sort()
    history: list[dict[str, Any]] = [
        {
            "customer_id": cid,
            "from_tier": None,
            "to_tier": welcome,
            "changed_at": at,
            "reason": reason,
            "event_id": None,
        }
        for cid, at in changed
    ]
    recorded = utcnow()
    detail = {"from_tier": None, "to_tier": welcome, "how": "welcome", "reason": reason}
    audit: list[dict[str, Any]] = [
        {
            "customer_id": cid,
            "at": at,
            "recorded_at": recorded,
            "event_id": None,
            "rule": WELCOME_RULE,
            "rules_version": rules_version,
            "kind": "tier",
            "detail": detail,
            "skipped": None,
        }
        for cid, at in changed
    ]
    insert_rows(conn, table_of(TierHistoryRow), history)
    insert_rows(conn, table_of(AuditRow), audit)
    return len(changed)


def welcome_members(
    conn: Connection,
    program: Program,
    now: datetime,
    ids: Sequence[str] | None = None,
    reason: str = WELCOME_REASON,
    *,
    rules_version: str | None = None,
) -> int:
    """`grant_welcome_tier` with `program`'s welcome tier and membership attribute: what a
    customer import does for its chunk's customers, and what deploying or activating a
    rules version does for every member (`ids` None)."""
    return grant_welcome_tier(
        conn,
        program.welcome_tier,
        now,
        ids,
        reason,
        rules_version=rules_version,
        since_attribute=membership_attribute(program),
    )
