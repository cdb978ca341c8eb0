"""Reads the console's journey pages need beyond `store.journey_stats`: enrollments by
journey and status, and one deployed version's definition (to draw an older version's
graph). A page of the enrollments at a node is `journey_stats.enrollments` with an offset.

Each is one statement, whatever the number of enrollments.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

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
