"""Bulk inserts through the driver, for the hot batch paths (events, ledger, audit trail).

SQLAlchemy's executemany binds every value of every row through the column types'
processors one by one (a `UTCDateTime` alone is three calls per value); at hundreds of
thousands of rows per import that was a quarter of the write time. `insert_rows` converts
each column once per row with a converter chosen per column type and hands plain tuples to
the driver: SQLite's `executemany`; on PostgreSQL `COPY`, or multi-row INSERTs where a
conflict is to be ignored or a value looked up. The stored values are the ones the ORM
writes — a test compares both, byte for byte on SQLite.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Boolean, Connection, Numeric, Table

from store.db import UTCDateTime

Converter = Callable[[Any], Any]


def _sqlite_time(v: datetime | None) -> str | None:
    if v is None:
        return None
    if v.tzinfo is not UTC:
        if v.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        v = v.astimezone(UTC)
    # SQLAlchemy's SQLite DATETIME storage format: always six digits of microseconds, and
    # no offset (the first 26 characters of the UTC ISO form)
    return v.isoformat(" ", "microseconds")[:26]


def _memoized(convert: Converter) -> Converter:
    """`convert` remembering its answers for one statement (rows share many timestamps:
    the chunk's `now`, an event's time on each of its audit rows)."""
    seen: dict[Any, Any] = {}

    def cached(v: Any) -> Any:
        try:
            return seen[v]
        except KeyError:
            out = seen[v] = convert(v)
            return out

    return cached


def _pg_time(v: datetime | None) -> datetime | None:
    if v is not None and v.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return v


def _sqlite_json(v: Any) -> str | None:
    return None if v is None else json.dumps(v)


def _pg_json(v: Any) -> Jsonb | None:
    return None if v is None else Jsonb(v)


def _sqlite_number(v: Decimal | float | None) -> float | None:
    return None if v is None else float(v)


def _sqlite_bool(v: bool | None) -> int | None:
    return None if v is None else int(v)


def _converter(column_type: Any, dialect: str) -> Converter | None:
    sqlite = dialect == "sqlite"
    if isinstance(column_type, UTCDateTime):
        return _memoized(_sqlite_time) if sqlite else _pg_time
    if isinstance(column_type, JSON):
        # JSONDoc: JSON text on SQLite, JSONB on PostgreSQL
        return _sqlite_json if sqlite else _pg_json
    if isinstance(column_type, Boolean):
        return _sqlite_bool if sqlite else None
    if isinstance(column_type, Numeric) and sqlite:
        return _sqlite_number
    return None


def insert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    ignore_conflicts_on: str | None = None,
    lookups: dict[str, str] | None = None,
) -> int:
    """INSERT `rows` (dicts with the same keys, column names) into `table` in one
    executemany; with `ignore_conflicts_on`, a row clashing on that unique column is
    skipped (ON CONFLICT DO NOTHING, on both databases). `lookups` maps a column to an SQL
    expression whose `{}` takes the row's value for it, e.g. a scalar subquery that finds
    an id by a unique key. Returns the number of rows inserted."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise RuntimeError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
    names = list(rows[0])
    lookups = lookups or {}
    converters = [
        None if name in lookups else _converter(table.c[name].type, dialect) for name in names
    ]
    # column by column: one pass per column with the converter mapped over it is faster
    # than a generator per row
    by_column: list[list[Any]] = []
    for name, conv in zip(names, converters, strict=True):
        values = [row[name] for row in rows]
        by_column.append(values if conv is None else list(map(conv, values)))
    params = list(zip(*by_column, strict=True))
    columns = ", ".join(names)
    if dialect == "postgresql":
        return _pg_copy(conn, table, names, params, ignore_conflicts_on, lookups)
    one = "(" + ", ".join(lookups[n].format("?") if n in lookups else "?" for n in names) + ")"
    tail = f" ON CONFLICT ({ignore_conflicts_on}) DO NOTHING" if ignore_conflicts_on else ""
    sql = f"INSERT INTO {table.name} ({columns}) VALUES {one}{tail}"
    result = conn.exec_driver_sql(sql, params)
    return int(result.rowcount)


def _pg_copy(
    conn: Connection,
    table: Table,
    names: list[str],
    params: list[tuple[Any, ...]],
    ignore_conflicts_on: str | None,
    lookups: dict[str, str],
) -> int:
    """COPY, the fastest way into PostgreSQL (psycopg's executemany sends a statement per
    row). Where a conflict is to be ignored or a value looked up, the rows are copied into
    a temporary table first and moved with one INSERT … SELECT."""
    columns = ", ".join(names)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if not ignore_conflicts_on and not lookups:
        with cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
            for values in params:
                copy.write_row(values)
        return len(params)
    signature = hashlib.blake2b(repr((names, sorted(lookups))).encode(), digest_size=4)
    staging = f"crmflow_bulk_{table.name}_{signature.hexdigest()}"
    definitions = ", ".join(
        f"{n} text" if n in lookups else f"{n} {table.c[n].type.compile(dialect=conn.dialect)}"
        for n in names
    )
    # temporary tables live as long as the connection; emptied here and at every commit
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({definitions}) ON COMMIT DELETE ROWS"
    )
    cursor.execute(f"TRUNCATE {staging}")
    with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
        for values in params:
            copy.write_row(values)
    selected = ", ".join(lookups[n].format(f"s.{n}") if n in lookups else f"s.{n}" for n in names)
    tail = f" ON CONFLICT ({ignore_conflicts_on}) DO NOTHING" if ignore_conflicts_on else ""
    cursor.execute(f"INSERT INTO {table.name} ({columns}) SELECT {selected} FROM {staging} s{tail}")
    return int(cursor.rowcount)
