"""Deployed rules versions: store one, make it active, read the active one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update

from rules.pack import PackSource
from store.db import utcnow
from store.models import RuleVersionRow
from store.sql import insert_for, table_of


@dataclass
class VersionInfo:
    version: str
    deployed_at: datetime
    active: bool
    rule_count: int
    source: str | None


def deploy(
    conn: Connection, version: str, src: PackSource, rule_count: int, origin: str | None
) -> bool:
    """Store `version` (once) and make it the active one; True when it was new."""
    t = table_of(RuleVersionRow)
    result = conn.execute(
        insert_for(conn, t)
        .on_conflict_do_nothing(index_elements=["version"])
        .values(
            version=version,
            program_path=src.program_path,
            program_text=src.program_text,
            files=[list(f) for f in src.files],
            source=origin,
            rule_count=rule_count,
            deployed_at=utcnow(),
            active=False,
        )
        .returning(t.c.id)
    )
    created = result.first() is not None
    activate(conn, version)
    return created


def activate(conn: Connection, version: str) -> None:
    """Make the stored `version` the active one (the only one)."""
    t = table_of(RuleVersionRow)
    conn.execute(update(t).where(t.c.active.is_(True)).values(active=False))
    conn.execute(update(t).where(t.c.version == version).values(active=True))


def stored_source(conn: Connection, version: str) -> PackSource | None:
    """The files a stored version was compiled from; None for a version never deployed."""
    r = RuleVersionRow
    row = conn.execute(
        select(r.program_path, r.program_text, r.files).where(r.version == version)
    ).first()
    if row is None:
        return None
    return PackSource(row.program_path, row.program_text, [(str(n), str(t)) for n, t in row.files])


def active_source(conn: Connection) -> tuple[str, PackSource] | None:
    row = conn.execute(
        select(
            RuleVersionRow.version,
            RuleVersionRow.program_path,
            RuleVersionRow.program_text,
            RuleVersionRow.files,
        ).where(RuleVersionRow.active.is_(True))
    ).first()
    if row is None:
        return None
    files = [(str(name), str(text)) for name, text in row.files]
    return row.version, PackSource(row.program_path, row.program_text, files)


def active_version(conn: Connection) -> str | None:
    return conn.execute(
        select(RuleVersionRow.version).where(RuleVersionRow.active.is_(True))
    ).scalar_one_or_none()


def list_versions(conn: Connection) -> list[VersionInfo]:
    rows = conn.execute(
        select(
            RuleVersionRow.version,
            RuleVersionRow.deployed_at,
            RuleVersionRow.active,
            RuleVersionRow.rule_count,
            RuleVersionRow.source,
        ).order_by(RuleVersionRow.id)
    )
    return [VersionInfo(*r) for r in rows]
