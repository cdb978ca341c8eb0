"""Reads the console's journey pages need beyond `store.journey_stats`: enrollments by
journey and status, one deployed version's definition (to draw an older version's graph)
and a page of the enrollments at a node (offset and limit, in the order
`journey_stats.enrollments` lists them).

Each is one statement, whatever the number of enrollments.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from store.journey_stats import EnrollmentInfo
from store.models import EnrollmentRow, JourneyVersionRow


def enrollment_counts(conn: Connection) -> dict[str, dict[str, int]]:
    """Enrollments by journey and status."""
    e = EnrollmentRow
    counts: dict[str, dict[str, int]] = {}
    for journey, status, n in conn.execute(
        select(e.journey, e.status, func.count()).group_by(e.journey, e.status)
    ):
        counts.setdefault(journey, {})[status] = int(n)
    return counts


def version_definition(conn: Connection, name: str, version: str) -> dict[str, Any] | None:
    """The definition deployed as `version` of journey `name` (None: no such version)."""
    v = JourneyVersionRow
    found: dict[str, Any] | None = conn.execute(
        select(v.definition).where(v.journey == name, v.version == version)
    ).scalar()
    return found


def enrollments_page(
    conn: Connection,
    name: str,
    *,
    node: str | None,
    status: str | None,
    offset: int,
    limit: int,
) -> list[EnrollmentInfo]:
    """Enrollments of journey `name` (now at `node`, with `status`), latest move first, from
    `offset`: the same order as `journey_stats.enrollments`, with the workflow id last so
    every page is stable."""
    e = EnrollmentRow
    stmt = select(
        e.customer_id,
        e.node,
        e.node_since,
        e.status,
        e.variant,
        e.version,
        e.entry_no,
        e.entered_at,
        e.finished_at,
        e.outcome,
        e.workflow_id,
    ).where(e.journey == name)
    if node is not None:
        stmt = stmt.where(e.node == node)
    if status is not None:
        stmt = stmt.where(e.status == status)
    stmt = (
        stmt.order_by(
            func.coalesce(e.node_since, e.entered_at).desc(), e.customer_id, e.workflow_id
        )
        .offset(offset)
        .limit(limit)
    )
    return [
        EnrollmentInfo(
            customer_id=r.customer_id,
            node=r.node,
            since=r.node_since,
            status=r.status,
            variant=r.variant,
            version=r.version,
            entry_no=r.entry_no,
            entered_at=r.entered_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            workflow_id=r.workflow_id,
        )
        for r in conn.execute(stmt)
    ]
