"""Which points count, and the points ledger's reads and writes for the services.

A lot counts towards a balance *as of a moment* when it has points left and has not expired
by then — whether or not the nightly expiry has written its `expire` entry yet (that run
only records what the clock has already decided). The customer profile, the 360 view, the
messages' `points_balance` and the KPI liability all read balances through `live_lot`. A
live lot is *pending* while its return window lasts (`available_at` after the moment) and
*spendable* otherwise (`rules.ledger.is_pending` / `is_spendable` in Python).

`totals` is the one definition of a member's figures as of a moment (section "Totals as of
now" of the points design): active, pending, earned, credited, debited, spent, clawed back,
expired, debt. The rest are the statements redemption, reversal and adjustment run (one
transaction each, in `crmflow.services.points`): the customer's bump, the lots to draw
from, and the lot, ledger, debt and coupon writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)

from rules.ledger import (
    ADJUST_CREDIT,
    ADJUST_DEBIT,
    CLAWBACK,
    EARN,
    EXPIRE,
    PENDING,
    REDEEM,
    REDEEM_REVERSAL,
    ZERO,
    cents,
)
from store.models import (
    CouponRow,
    CustomerRow,
    PointsLedgerRow,
    PointsLotRow,
    RedemptionRow,
    RuleVersionRow,
)
from store.sql import insert_for, table_of

CUSTOMERS = table_of(CustomerRow)
LOTS = table_of(PointsLotRow)
LEDGER = table_of(PointsLedgerRow)
REDEMPTIONS = table_of(RedemptionRow)
COUPONS = table_of(CouponRow)


def live_lot(lot: Any, at: Any) -> ColumnElement[bool]:
    """SQL: the lot (`PointsLotRow`, or the columns of its table) has points left at `at`
    (a datetime, or a bound parameter / column)."""
    return and_(lot.remaining > 0, or_(lot.expires_at.is_(None), lot.expires_at > at))


def pending_lot(lot: Any, at: Any) -> ColumnElement[bool]:
    """SQL: live at `at`, but still inside its return window."""
    return and_(live_lot(lot, at), lot.available_at.is_not(None), lot.available_at > at)


def spendable_lot(lot: Any, at: Any) -> ColumnElement[bool]:
    """SQL: live at `at` and past its return window (if it had one)."""
    return and_(live_lot(lot, at), or_(lot.available_at.is_(None), lot.available_at <= at))


# --------------------------------------------------------------------------- totals


@dataclass
class Totals:
    """A member's points as of a moment; every figure positive (or zero)."""

    active: Decimal  # spendable now
    pending: Decimal  # live, inside the return window
    earned: Decimal  # earn + pending entries
    credited: Decimal  # operators' credits
    debited: Decimal  # operators' and rules' debits
    spent: Decimal  # redeemed, net of reversals
    clawed_back: Decimal  # taken back by refunds
    expired: Decimal  # expire entries, and lots past their date the nightly run has not zeroed
    debt: Decimal  # what the balance could not cover, settled by the next credits
    by_kind: dict[str, Decimal] = field(default_factory=dict)


def totals(conn: Connection, customer_id: str, at: datetime) -> Totals:
    """The member's figures as of `at`: the lots' state then, the ledger's sums by kind, the
    debt. They add up: active + pending + spent + expired + clawed_back + debited - debt =
    earned + credited."""
    led = LEDGER.c
    by_kind = {
        str(k): cents(v or 0)
        for k, v in conn.execute(
            select(led.kind, func.sum(led.amount))
            .where(led.customer_id == customer_id)
            .group_by(led.kind)
        )
    }
    lot = LOTS.c
    row = conn.execute(
        select(
            func.sum(lot.remaining).filter(spendable_lot(lot, at)),
            func.sum(lot.remaining).filter(pending_lot(lot, at)),
            func.sum(lot.remaining).filter(lot.remaining > 0, lot.expires_at <= at),
        ).where(lot.customer_id == customer_id)
    ).one()
    debt = conn.execute(
        select(CUSTOMERS.c.points_debt).where(CUSTOMERS.c.customer_id == customer_id)
    ).scalar()

    def kind(name: str) -> Decimal:
        return by_kind.get(name, ZERO)

    return Totals(
        active=cents(row[0] or 0),
        pending=cents(row[1] or 0),
        earned=kind(EARN) + kind(PENDING),
        credited=kind(ADJUST_CREDIT),
        debited=-kind(ADJUST_DEBIT) + ZERO,  # + ZERO: never "-0"
        spent=-(kind(REDEEM) + kind(REDEEM_REVERSAL)) + ZERO,
        clawed_back=-kind(CLAWBACK) + ZERO,
        expired=-kind(EXPIRE) + cents(row[2] or 0) + ZERO,
        debt=cents(debt or 0),
        by_kind=by_kind,
    )


def active_version(conn: Connection) -> str | None:
    """The active rules version's name (a content hash), or None."""
    return conn.execute(
        select(RuleVersionRow.version).where(RuleVersionRow.active.is_(True))
    ).scalar()


# --------------------------------------------------------------------------- writes


@dataclass
class Member:
    """What a points operation reads of the member in its first statement."""

    tier: str | None
    debt: Decimal
    timezone: str


@dataclass
class Lot:
    """A live lot as the services draw from it (`rules.ledger.LotLike`)."""

    id: int
    remaining: Decimal
    earned_at: datetime
    expires_at: datetime | None
    available_at: datetime | None
    taken: Decimal = ZERO


_STATEMENTS: dict[tuple[str, str], Executable] = {}


def _prepared(conn: Connection, name: str, build: Any) -> Executable:
    """A statement built once per dialect (SQLAlchemy then caches its compiled form)."""
    key = (conn.dialect.name, name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(conn)
    return stmt


def _bump_stmt(conn: Connection) -> Executable:
    c = CUSTOMERS.c
    return (
        update(CUSTOMERS)
        .where(c.customer_id == bindparam("cid"))
        .values(state_version=c.state_version + 1)
        .returning(c.tier, c.points_debt, c.timezone)
    )


def bump(conn: Connection, customer_id: str) -> Member | None:
    """The first statement of every points operation: bump the customer's rule-state
    version, so that kept rule states reload (on SQLite it takes the write lock before any
    read; on PostgreSQL it locks the row, as processing does). None: no such customer."""
    row = conn.execute(_prepared(conn, "bump", _bump_stmt), {"cid": customer_id}).first()
    if row is None:
        return None
    return Member(row.tier, cents(row.points_debt or 0), row.timezone or "UTC")


def _bump_redemption_stmt(conn: Connection) -> Executable:
    c, r = CUSTOMERS.c, REDEMPTIONS.c
    owner = select(r.customer_id).where(r.key == bindparam("key")).scalar_subquery()
    return (
        update(CUSTOMERS)
        .where(c.customer_id == owner)
        .values(state_version=c.state_version + 1)
        .returning(c.customer_id, c.tier, c.points_debt, c.timezone)
    )


def bump_redemption_owner(conn: Connection, key: str) -> tuple[str, Member] | None:
    """`bump` for the member a redemption key belongs to, in one statement; None: no
    redemption has that key."""
    row = conn.execute(
        _prepared(conn, "bump_redemption", _bump_redemption_stmt), {"key": key}
    ).first()
    if row is None:
        return None
    return row.customer_id, Member(row.tier, cents(row.points_debt or 0), row.timezone or "UTC")


def _live_lots_stmt(conn: Connection) -> Executable:
    lot = LOTS.c
    at = bindparam("at", type_=lot.expires_at.type)
    return (
        select(lot.id, lot.remaining, lot.earned_at, lot.expires_at, lot.available_at)
        .where(lot.customer_id == bindparam("cid"), live_lot(lot, at))
        .order_by(lot.id)
    )


def live_lots(conn: Connection, customer_id: str, at: datetime) -> list[Lot]:
    """The member's live lots at `at`, pending ones included (`rules.ledger.fifo` takes
    only the spendable ones)."""
    rows = conn.execute(
        _prepared(conn, "live_lots", _live_lots_stmt), {"cid": customer_id, "at": at}
    )
    return [Lot(r.id, cents(r.remaining), r.earned_at, r.expires_at, r.available_at) for r in rows]


def _set_remaining_stmt(conn: Connection) -> Executable:
    lot = LOTS.c
    return update(LOTS).where(lot.id == bindparam("lot")).values(remaining=bindparam("left"))


def set_remaining(conn: Connection, lots: list[Lot]) -> None:
    """Write the lots' `remaining` (after a draw)."""
    if lots:
        conn.execute(
            _prepared(conn, "set_remaining", _set_remaining_stmt),
            [{"lot": lot.id, "left": lot.remaining} for lot in lots],
        )


def _add_to_lot_stmt(conn: Connection) -> Executable:
    lot = LOTS.c
    return (
        update(LOTS)
        .where(lot.id == bindparam("lot"))
        .values(remaining=lot.remaining + bindparam("points", type_=lot.remaining.type))
    )


def add_to_lots(conn: Connection, points: list[tuple[int, Decimal]]) -> None:
    """Give points back to the lots they came from (a reversed redemption)."""
    rows = [{"lot": lot_id, "points": p} for lot_id, p in points if p > 0]
    if rows:
        conn.execute(_prepared(conn, "add_to_lot", _add_to_lot_stmt), rows)


def new_lot(conn: Connection, row: dict[str, Any]) -> int:
    """Insert a lot (a `PointsLotRow`'s columns); its id."""
    lot_id = conn.execute(insert(LOTS).values(**row).returning(LOTS.c.id)).scalar_one()
    return int(lot_id)


def _ledger_stmt(conn: Connection) -> Executable:
    return insert(LEDGER)


LEDGER_FIELDS = (
    "customer_id",
    "lot_id",
    "kind",
    "amount",
    "at",
    "event_id",
    "reason",
    "dedupe_key",
    "order_id",
    "qualifying",
    "actor",
    "ref",
)


def add_ledger(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append ledger entries (each with every LEDGER_FIELDS column)."""
    if rows:
        conn.execute(_prepared(conn, "ledger", _ledger_stmt), rows)


def _set_debt_stmt(conn: Connection) -> Executable:
    c = CUSTOMERS.c
    return (
        update(CUSTOMERS)
        .where(c.customer_id == bindparam("cid"))
        .values(points_debt=bindparam("debt", type_=c.points_debt.type))
    )


def set_debt(conn: Connection, customer_id: str, debt: Decimal) -> None:
    conn.execute(_prepared(conn, "set_debt", _set_debt_stmt), {"cid": customer_id, "debt": debt})


def was_expired(conn: Connection, lot_ids: list[int]) -> set[int]:
    """Which of these lots the nightly expiry has zeroed (an `expire:<lot id>` entry)."""
    if not lot_ids:
        return set()
    keys = [f"expire:{i}" for i in lot_ids]
    found = conn.execute(select(LEDGER.c.lot_id).where(LEDGER.c.dedupe_key.in_(keys)))
    return {int(r.lot_id) for r in found if r.lot_id is not None}


def lot_dates(conn: Connection, lot_ids: list[int]) -> dict[int, Any]:
    """earned_at, expires_at, available_at and order_id of these lots, by id."""
    if not lot_ids:
        return {}
    lot = LOTS.c
    rows = conn.execute(
        select(lot.id, lot.earned_at, lot.expires_at, lot.available_at, lot.order_id).where(
            lot.id.in_(lot_ids)
        )
    )
    return {int(r.id): r for r in rows}


def add_coupon(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert a coupon unless its code is taken; True when it was inserted."""
    done = conn.execute(
        insert_for(conn, COUPONS)
        .on_conflict_do_nothing(index_elements=["code"])
        .values(**row)
        .returning(COUPONS.c.id)
    ).first()
    return done is not None


def void_coupon(conn: Connection, code: str, at: datetime) -> None:
    c = COUPONS.c
    conn.execute(update(COUPONS).where(c.code == code, c.voided_at.is_(None)).values(voided_at=at))
