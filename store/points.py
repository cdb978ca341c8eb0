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

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, StatementError

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


# --------------------------------------------------------------------------- the driver

# A redemption's statements run through the driver's cursor of the SQLAlchemy connection, in
# its transaction: at a few hundred microseconds a redemption, SQLAlchemy's own work per
# statement (parameter processing, result set-up) cost more than the statements did
# (bench/redeem.py). Values are converted as `store.bulk` converts them, to what the ORM
# stores: on SQLite a UTC time is the text `YYYY-MM-DD HH:MM:SS.ffffff`, a number a float, a
# boolean 0 or 1, JSON text.

_PG_SQL: dict[str, str] = {}


class Driver:
    """The DB-API cursor of `conn` (inside its transaction), with SQLite's and PostgreSQL's
    ways of binding and reading times and numbers."""

    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        self.cursor = dbapi.cursor()
        self.errors = conn.dialect.loaded_dbapi.Error
        # PostgreSQL: plan each statement for the tables as they are now. A plan prepared
        # while `redemptions` was small (psycopg prepares a statement on its fifth run) would
        # scan it whole ever after; seen at 100,000 redemptions (bench/redeem.py) on a server
        # without autovacuum, falling from 360 to 46 redemptions/s.
        self.options: dict[str, Any] = {} if self.sqlite else {"prepare": False}
        self._time: tuple[datetime | None, Any] = (None, None)

    @classmethod
    def of(cls, conn: Connection) -> Driver:
        """The driver of `conn`'s DB-API connection, made once per connection (the pool
        keeps it with the connection: a cursor serves transaction after transaction)."""
        info = conn.connection.info
        found = info.get("store.points.driver")
        if found is None:
            found = info["store.points.driver"] = cls(conn)
        return found

    def _failed(self, text: str, params: Any, exc: Exception) -> StatementError:
        """The driver's error as SQLAlchemy's (`IntegrityError` for a unique key taken …),
        as every other statement raises it."""
        return DBAPIError.instance(text, params, exc, self.errors)

    def sql(self, text: str) -> str:
        """`text` with the driver's placeholders (written with `?`)."""
        if self.sqlite:
            return text
        found = _PG_SQL.get(text)
        if found is None:
            found = _PG_SQL[text] = text.replace("?", "%s")
        return found

    def run(self, text: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            self.cursor.execute(self.sql(text), params, **self.options)
            return list(self.cursor.fetchall()) if self.cursor.description else []
        except self.errors as exc:
            raise self._failed(text, params, exc) from exc

    def many(self, text: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            try:
                self.cursor.executemany(self.sql(text), rows)
            except self.errors as exc:
                raise self._failed(text, rows, exc) from exc

    def count(self, text: str, params: tuple[Any, ...]) -> int:
        """Run a statement that returns nothing; the rows it changed."""
        try:
            self.cursor.execute(self.sql(text), params, **self.options)
        except self.errors as exc:
            raise self._failed(text, params, exc) from exc
        return int(self.cursor.rowcount)

    def time(self, at: datetime | None) -> Any:
        if at is None or not self.sqlite:
            return at
        last, text = self._time
        if at != last:  # one moment is bound many times in one operation
            text = at.astimezone(UTC).isoformat(" ", "microseconds")[:26]
            self._time = (at, text)
        return text

    def read_time(self, value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)

    def number(self, value: Decimal) -> Any:
        return float(value) if self.sqlite else value

    def flag(self, value: bool) -> Any:
        return int(value) if self.sqlite else value

    def json(self, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value


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


BUMP = (
    "UPDATE customers SET state_version = state_version + 1 WHERE customer_id = ? "
    "RETURNING tier, points_debt, timezone"
)


def bump(conn: Connection, customer_id: str) -> Member | None:
    """The first statement of every points operation: bump the customer's rule-state
    version, so that kept rule states reload (on SQLite it takes the write lock before any
    read; on PostgreSQL it locks the row, as processing does). None: no such customer."""
    rows = Driver.of(conn).run(BUMP, (customer_id,))
    if not rows:
        return None
    tier, debt, tz = rows[0]
    return Member(tier, cents(debt or 0), tz or "UTC")


BUMP_OWNER = (
    "UPDATE customers SET state_version = state_version + 1 WHERE customer_id = "
    "(SELECT customer_id FROM redemptions WHERE key = ?) "
    "RETURNING customer_id, tier, points_debt, timezone"
)


def bump_redemption_owner(conn: Connection, key: str) -> tuple[str, Member] | None:
    """`bump` for the member a redemption key belongs to, in one statement; None: no
    redemption has that key."""
    rows = Driver.of(conn).run(BUMP_OWNER, (key,))
    if not rows:
        return None
    cid, tier, debt, tz = rows[0]
    return str(cid), Member(tier, cents(debt or 0), tz or "UTC")


@dataclass
class Offer:
    """A reward as a redemption reads it."""

    reward_id: str
    kind: str
    cost: Decimal
    stock: int | None
    issued: int
    per_member_limit: int | None
    valid_from: datetime | None
    valid_to: datetime | None
    min_tier: str | None
    coupon: dict[str, Any] | None
    active: bool


@dataclass
class RedeemContext:
    """What a redemption reads in its second statement."""

    known_key: bool  # a redemption with this key exists
    version: str | None  # the active rules version
    reward: Offer | None
    redeemed: int  # the member's redemptions of the reward, not reversed


CONTEXT = (
    "SELECT (SELECT 1 FROM redemptions WHERE key = ?), "
    "(SELECT version FROM rule_versions WHERE active = ?), "
    "(SELECT count(*) FROM redemptions WHERE customer_id = ? AND reward_id = ? "
    "AND status = 'done'), "
    "r.reward_id, r.kind, r.cost, r.stock, r.issued, r.per_member_limit, r.valid_from, "
    "r.valid_to, r.min_tier, r.coupon, r.active "
    "FROM (SELECT 1 AS one) AS here LEFT JOIN rewards r ON r.reward_id = ?"
)


def redeem_context(conn: Connection, customer_id: str, reward_id: str, key: str) -> RedeemContext:
    """In one statement: whether the key is taken, the active rules version, the reward,
    and how many of it the member has."""
    d = Driver.of(conn)
    row = d.run(CONTEXT, (key, d.flag(True), customer_id, reward_id, reward_id))[0]
    taken, version, redeemed, rid = row[0], row[1], row[2], row[3]
    reward = None
    if rid is not None:
        reward = Offer(
            reward_id=str(rid),
            kind=str(row[4]),
            cost=cents(row[5]),
            stock=row[6],
            issued=int(row[7]),
            per_member_limit=row[8],
            valid_from=d.read_time(row[9]),
            valid_to=d.read_time(row[10]),
            min_tier=row[11],
            coupon=d.json(row[12]),
            active=bool(row[13]),
        )
    return RedeemContext(taken is not None, version, reward, int(redeemed or 0))


LIVE_LOTS = (
    "SELECT id, remaining, earned_at, expires_at, available_at FROM points_lots "
    "WHERE customer_id = ? AND remaining > 0 AND (expires_at IS NULL OR expires_at > ?) "
    "ORDER BY id"
)


def live_lots(conn: Connection, customer_id: str, at: datetime) -> list[Lot]:
    """The member's live lots at `at`, pending ones included (`rules.ledger.fifo` takes
    only the spendable ones)."""
    d = Driver.of(conn)
    rows = d.run(LIVE_LOTS, (customer_id, d.time(at)))
    return [
        Lot(int(i), cents(left), d.read_time(earned) or at, d.read_time(ends), d.read_time(av))
        for i, left, earned, ends, av in rows
    ]


TAKE_STOCK = (
    "UPDATE rewards SET issued = issued + 1 WHERE reward_id = ? "
    "AND (stock IS NULL OR issued < stock)"
)


def take_stock(conn: Connection, reward_id: str) -> bool:
    """Issue one item of the reward's stock; False when none is left (one conditional
    UPDATE: two redemptions of the last item cannot both get it)."""
    return Driver.of(conn).count(TAKE_STOCK, (reward_id,)) == 1


SET_REMAINING = "UPDATE points_lots SET remaining = ? WHERE id = ?"


def set_remaining(conn: Connection, lots: list[Lot]) -> None:
    """Write the lots' `remaining` (after a draw)."""
    d = Driver.of(conn)
    d.many(SET_REMAINING, [(d.number(lot.remaining), lot.id) for lot in lots])


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
ADD_LEDGER = (
    f"INSERT INTO points_ledger ({', '.join(LEDGER_FIELDS)}) "
    f"VALUES ({', '.join('?' for _ in LEDGER_FIELDS)})"
)


def add_ledger(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Append ledger entries (each with every LEDGER_FIELDS column)."""
    d = Driver.of(conn)
    d.many(
        ADD_LEDGER,
        [
            (
                r["customer_id"],
                r["lot_id"],
                r["kind"],
                d.number(r["amount"]),
                d.time(r["at"]),
                r["event_id"],
                r["reason"],
                r["dedupe_key"],
                r["order_id"],
                d.flag(r["qualifying"]),
                r["actor"],
                r["ref"],
            )
            for r in rows
        ],
    )


ADD_REDEMPTION = (
    'INSERT INTO redemptions (key, customer_id, reward_id, cost, status, code, "by", '
    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def add_redemption(conn: Connection, row: dict[str, Any]) -> None:
    d = Driver.of(conn)
    d.run(
        ADD_REDEMPTION,
        (
            row["key"],
            row["customer_id"],
            row["reward_id"],
            d.number(row["cost"]),
            row["status"],
            row["code"],
            row["by"],
            d.time(row["created_at"]),
        ),
    )


def add_to_lots(conn: Connection, points: list[tuple[int, Decimal]]) -> None:
    """Give points back to the lots they came from (a reversed redemption)."""
    rows = [{"lot": lot_id, "points": p} for lot_id, p in points if p > 0]
    if rows:
        lot = LOTS.c
        conn.execute(
            update(LOTS)
            .where(lot.id == bindparam("lot"))
            .values(remaining=lot.remaining + bindparam("points", type_=lot.remaining.type)),
            rows,
        )


def new_lot(conn: Connection, row: dict[str, Any]) -> int:
    """Insert a lot (a `PointsLotRow`'s columns); its id."""
    lot_id = conn.execute(insert(LOTS).values(**row).returning(LOTS.c.id)).scalar_one()
    return int(lot_id)


def set_debt(conn: Connection, customer_id: str, debt: Decimal) -> None:
    c = CUSTOMERS.c
    conn.execute(update(CUSTOMERS).where(c.customer_id == customer_id).values(points_debt=debt))


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
