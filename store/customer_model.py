"""The customer-base model's store side: each customer's purchase summary, model versions,
and the scores, all set-based.

`purchase_summaries` reduces the purchase events up to a day to one row per customer in
SQL (first and last purchase day, number of purchase days, total spend and the first day's
spend): purchases on one day count as one transaction, as in the papers, and days are UTC
days. The Python side only turns those rows into numpy arrays. `write_scores` replaces every
customer's scores in one DELETE and one bulk INSERT (COPY on PostgreSQL), and bumps
`customers.state_version` of the scored customers in one UPDATE, so a process that keeps
rule states in memory reloads them with the new facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, bindparam, delete, select, text, update

from store.db import UTCDateTime
from store.models import CustomerModelRow, CustomerRow, CustomerScoreRow
from store.sql import table_of, where_in

# The scores the rules see as facts, with the column each comes from.
FACT_COLUMNS: tuple[str, ...] = (
    "p_alive",
    "expected_purchases_30d",
    "expected_purchases_90d",
    "expected_purchases_365d",
    "expected_avg_spend",
    "clv_365d",
)

EPOCH = date(1970, 1, 1)


@dataclass
class PurchaseSummaries:
    """One entry per customer with a purchase up to `end_day` (sorted by customer id).
    Days are counted from 1970-01-01 (UTC)."""

    end_day: date
    customer_ids: list[str]
    first_day: npt.NDArray[np.int64]
    last_day: npt.NDArray[np.int64]
    days: npt.NDArray[np.int64]  # purchase days, the first one included
    total_spend: npt.NDArray[np.float64]
    first_spend: npt.NDArray[np.float64]

    @property
    def frequency(self) -> npt.NDArray[np.float64]:
        """x: repeat transactions (purchase days after the first)."""
        return (self.days - 1).astype(np.float64)

    def recency(self, unit_days: float) -> npt.NDArray[np.float64]:
        """t_x: from the first to the last purchase day, in units."""
        return (self.last_day - self.first_day).astype(np.float64) / unit_days

    def age(self, unit_days: float) -> npt.NDArray[np.float64]:
        """T: from the first purchase day to the end day, in units."""
        end = (self.end_day - EPOCH).days
        return (end - self.first_day).astype(np.float64) / unit_days

    @property
    def repeat_spend(self) -> npt.NDArray[np.float64]:
        """m_x: the average spend per repeat purchase day (first day left out, as the
        Gamma-Gamma papers do); 0 for customers without a repeat purchase."""
        x = self.days - 1
        out = np.zeros(len(self.customer_ids), dtype=np.float64)
        np.divide(self.total_spend - self.first_spend, x, out=out, where=x > 0)
        return out


def _day_expr(dialect: str) -> str:
    if dialect == "postgresql":
        return "((occurred_at AT TIME ZONE 'UTC')::date - DATE '1970-01-01')"
    # stored as naive UTC text; julianday of a date is at midnight, 2440587.5 is 1970-01-01
    return "CAST(julianday(date(occurred_at)) - 2440587.5 AS INTEGER)"


def _amount_expr(dialect: str) -> str:
    # a purchase whose amount is not a JSON number (stored before rules were deployed, say)
    # counts as a transaction with no spend
    if dialect == "postgresql":
        return (
            "CASE WHEN jsonb_typeof(properties -> :prop) = 'number' "
            "THEN (properties ->> :prop)::float8 ELSE 0 END"
        )
    return (
        "CASE WHEN json_type(properties, :path) IN ('integer', 'real') "
        "THEN json_extract(properties, :path) ELSE 0 END"
    )


def purchase_summaries(
    conn: Connection, *, end_day: date, purchase_event: str, spend_property: str
) -> PurchaseSummaries:
    """Every customer's purchases up to and including `end_day` (UTC), one row each."""
    dialect = conn.dialect.name
    day, amount = _day_expr(dialect), _amount_expr(dialect)
    # One pass: the purchase days (grouped per customer and day), each with its customer's
    # first day beside it (a window over the same order), then one row per customer. No
    # self-join: the first day's spend is summed where the day is the first.
    sql = f"""
        SELECT customer_id, MIN(day), MAX(day), COUNT(*), SUM(spend),
               SUM(CASE WHEN day = first_day THEN spend ELSE 0 END)
        FROM (
            SELECT customer_id, day, spend,
                   MIN(day) OVER (PARTITION BY customer_id) AS first_day
            FROM (
                SELECT customer_id, {day} AS day, SUM({amount}) AS spend
                FROM events
                WHERE type = :ptype AND occurred_at < :until
                GROUP BY customer_id, {day}
            ) days
        ) w
        GROUP BY customer_id
        ORDER BY customer_id
    """
    until = datetime.combine(end_day + timedelta(days=1), time(0), tzinfo=UTC)
    params: dict[str, Any] = {"ptype": purchase_event, "until": until}
    if dialect == "postgresql":
        params["prop"] = spend_property
    else:
        params["path"] = '$."' + spend_property.replace('"', '""') + '"'
    stmt = text(sql).bindparams(bindparam("until", type_=UTCDateTime()))
    rows = conn.execute(stmt, params).all()
    ids = [r[0] for r in rows]
    if rows:
        cols = list(zip(*rows, strict=True))
        first = np.asarray(cols[1], dtype=np.int64)
        last = np.asarray(cols[2], dtype=np.int64)
        n = np.asarray(cols[3], dtype=np.int64)
        total = np.asarray(cols[4], dtype=np.float64)
        first_spend = np.asarray(cols[5], dtype=np.float64)
    else:
        first = last = n = np.zeros(0, dtype=np.int64)
        total = first_spend = np.zeros(0, dtype=np.float64)
    return PurchaseSummaries(end_day, ids, first, last, n, total, first_spend)


# --- model versions ----------------------------------------------------------------------


def insert_model(conn: Connection, values: dict[str, Any]) -> int:
    """Store a fit; returns its id (the model version)."""
    row = conn.execute(
        table_of(CustomerModelRow).insert().values(**values).returning(CustomerModelRow.id)
    ).scalar_one()
    return int(row)


def active_model(conn: Connection) -> dict[str, Any] | None:
    """The newest successful fit (its columns), or None."""
    m = table_of(CustomerModelRow)
    return _first(conn, select(m).where(m.c.status == "ok").order_by(m.c.id.desc()).limit(1))


def model(conn: Connection, model_id: int) -> dict[str, Any] | None:
    m = table_of(CustomerModelRow)
    return _first(conn, select(m).where(m.c.id == model_id))


def recent_models(conn: Connection, limit: int = 10) -> list[dict[str, Any]]:
    """The latest fits, successful or not, newest first."""
    m = table_of(CustomerModelRow)
    stmt = select(m).order_by(m.c.id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def _first(conn: Connection, stmt: Any) -> dict[str, Any] | None:
    found = conn.execute(stmt).mappings().first()
    return None if found is None else dict(found)


# --- scores ------------------------------------------------------------------------------


def write_scores(
    conn: Connection,
    *,
    model_id: int,
    as_of: datetime,
    customer_ids: list[str],
    columns: dict[str, npt.NDArray[Any]],
    state_version: int,
) -> int:
    """Replace every customer's scores with these (arrays aligned with `customer_ids`; NaN
    is stored as NULL), mark the model scored, and bump the scored customers'
    `state_version`. Returns the number of rows written."""
    conn.execute(delete(CustomerScoreRow))
    written = _insert_columns(conn, model_id, as_of, customer_ids, columns)
    conn.execute(
        update(CustomerRow)
        .where(CustomerRow.customer_id.in_(select(CustomerScoreRow.customer_id)))
        .values(state_version=state_version)
    )
    conn.execute(
        update(CustomerModelRow)
        .where(CustomerModelRow.id == model_id)
        .values(scored_at=as_of, scored_customers=written)
    )
    return written


def _insert_columns(
    conn: Connection,
    model_id: int,
    as_of: datetime,
    customer_ids: list[str],
    columns: dict[str, npt.NDArray[Any]],
) -> int:
    """The score rows straight from the arrays, as tuples through the driver: COPY on
    PostgreSQL, one executemany on SQLite (NaN stored as NULL)."""
    if not customer_ids:
        return 0
    names = ["customer_id", "model_id", "as_of", *columns]
    # tolist() turns a whole array into Python numbers in one call
    values: list[list[Any]] = [
        [None if v != v else v for v in np.asarray(columns[name]).tolist()] for name in columns
    ]
    n = len(customer_ids)
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(f"COPY customer_scores ({', '.join(names)}) FROM STDIN") as copy:
            for row in zip(customer_ids, [model_id] * n, [as_of] * n, *values, strict=True):
                copy.write_row(row)
        return n
    # SQLAlchemy's SQLite DATETIME text: UTC, six digits of microseconds, no offset
    stamp = as_of.astimezone(UTC).isoformat(" ", "microseconds")[:26]
    marks = ", ".join("?" for _ in names)
    conn.exec_driver_sql(
        f"INSERT INTO customer_scores ({', '.join(names)}) VALUES ({marks})",
        list(zip(customer_ids, [model_id] * n, [stamp] * n, *values, strict=True)),
    )
    return n


def scores_of(conn: Connection, customer_id: str) -> dict[str, Any] | None:
    """A customer's latest scores (every column), or None when they have none."""
    found = (
        conn.execute(
            select(table_of(CustomerScoreRow)).where(CustomerScoreRow.customer_id == customer_id)
        )
        .mappings()
        .first()
    )
    return None if found is None else dict(found)


def model_facts(conn: Connection, customer_ids: list[str]) -> dict[str, dict[str, float]]:
    """The scores the rules see, per customer that has them; a score stored as NULL (no
    spend model) is left out, so the fact is missing."""
    s = table_of(CustomerScoreRow)
    cols = [s.c[name] for name in FACT_COLUMNS]
    out: dict[str, dict[str, float]] = {}
    for where in where_in(conn, s.c.customer_id, customer_ids):
        for row in conn.execute(select(s.c.customer_id, *cols).where(where)):
            out[row[0]] = {
                name: float(v)
                for name, v in zip(FACT_COLUMNS, row[1:], strict=True)
                if v is not None
            }
    return out


def low_p_alive(conn: Connection, customer_ids: list[str], below: float) -> dict[str, float]:
    """Of `customer_ids`, those whose latest P(alive) is below `below`, with it."""
    s = table_of(CustomerScoreRow)
    out: dict[str, float] = {}
    for where in where_in(conn, s.c.customer_id, customer_ids):
        stmt = select(s.c.customer_id, s.c.p_alive).where(where, s.c.p_alive < below)
        for cid, p in conn.execute(stmt):
            out[cid] = float(p)
    return out
