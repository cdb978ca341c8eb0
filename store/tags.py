"""Tags across all customers, set-based: how many carry each tag now, who set the tags they
carry, and what the audit trail says every rule and person did with each tag.

A tag lives in `customer_tags` while a customer carries it (its `source` is `rules` for a
tag a rule set, `manual:<who>` for one set by hand); its history is the audit trail
(`audit_log` rows of kind `add_tag` / `remove_tag`, the tag in `detail.tag`, the rule in
`rule` — `manual` with `detail.by` for a person, `automation:<schedule>` for an expiry).
Each function is one grouped query, whatever the number of customers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, case, func, or_, select

from store.models import AuditRow, TagRow
from store.sql import table_of

TAGS = table_of(TagRow)
AUDIT = table_of(AuditRow)
TAG_KINDS = ("add_tag", "remove_tag")
MANUAL = "manual"  # the rule of a change by hand (crmflow.services.customers)


@dataclass(frozen=True)
class CarriedTag:
    tag: str
    customers: int = 0  # carrying it now (not past its expiry)
    overdue: int = 0  # past their expiry, not yet removed by the nightly expiry
    last_set_at: datetime | None = None  # the newest of the carriers' tags


@dataclass(frozen=True)
class TagSource:
    tag: str
    source: str | None
    customers: int


@dataclass(frozen=True)
class TagChanges:
    """What one rule (or person, or automation) did with one tag, per the audit trail."""

    tag: str
    rule: str
    by: str | None  # the person, for a tag set by hand
    kind: str  # add_tag or remove_tag
    times: int
    last_at: datetime | None  # the time of the newest change (its event's time)


def carried(conn: Connection, now: datetime) -> list[CarriedTag]:
    """Every tag some customer carries, with how many carry it now."""
    t = TAGS.c
    live = or_(t.expires_at.is_(None), t.expires_at > now)
    rows = conn.execute(
        select(
            t.tag,
            func.count().filter(live),
            func.count().filter(~live),
            func.max(t.created_at),
        )
        .group_by(t.tag)
        .order_by(t.tag)
    ).all()
    return [CarriedTag(tag, int(n or 0), int(old or 0), last) for tag, n, old, last in rows]


def sources(conn: Connection, now: datetime) -> list[TagSource]:
    """Who set the tags customers carry now: per tag and source, how many customers."""
    t = TAGS.c
    live = or_(t.expires_at.is_(None), t.expires_at > now)
    rows = conn.execute(
        select(t.tag, t.source, func.count())
        .where(live)
        .group_by(t.tag, t.source)
        .order_by(t.tag, func.count().desc())
    ).all()
    return [TagSource(tag, source, int(n)) for tag, source, n in rows]


def changes(conn: Connection, tag: str | None = None) -> list[TagChanges]:
    """The audit trail's tag changes grouped by tag, rule, person and kind (changes a rule
    skipped — the tag was there already — are left out)."""
    a = AUDIT.c
    tag_of = a.detail["tag"].as_string()
    # only a change by hand names a person: read `by` for those rows alone
    by_of = case((a.rule == MANUAL, a.detail["by"].as_string()), else_=None)
    where = and_(a.kind.in_(TAG_KINDS), a.skipped.is_(None))
    if tag is not None:
        where = and_(where, tag_of == tag)
    rows = conn.execute(
        select(tag_of, a.rule, by_of, a.kind, func.count(), func.max(a.at))
        .where(where)
        .group_by(tag_of, a.rule, by_of, a.kind)
    ).all()
    return [
        TagChanges(t, rule, by, kind, int(n), last)
        for t, rule, by, kind, n, last in rows
        if t is not None
    ]
