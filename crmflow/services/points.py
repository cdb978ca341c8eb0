"""A member's points: the statement (totals, lots and ledger as of a moment), redemption of
a reward, its reversal, and operators' adjustments.

A lot's status is read from the clock, not from the nightly expiry: `active` while it has
points left, its date has not passed and its return window is over, `pending` inside the
window, `expired` once the date has passed with points left (whether or not the nightly run
has written its `expire` entry yet), `spent` when nothing is left. The totals are the 360
view's (`crmflow.services.customers`) and are defined once, in `store.points.totals`.

Redeem, reverse and adjust each run in one transaction whose first statement bumps the
customer's `state_version`: kept rule states (`crmflow.state_cache`) reload a customer only
when it changes, and on SQLite the write lock is taken before anything is read. Points are
taken first to expire first (`rules.ledger.fifo`); each change is a typed ledger entry with
the lot, the actor (`by`) and the request's key (`ref`). Every call is idempotent by its
key: the same key with the same content gives the stored result, with other content a
`Conflict`. A refusal (`Refused`) rolls everything back, the bump included.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from crmflow.domain import PointsLotView
from crmflow.processing import active_pack
from crmflow.services.errors import Conflict, Invalid, NotFound, Refused
from crmflow.services.runtime import Runtime
from rules.effects import lot_expiry
from rules.ledger import (
    ADJUST_CREDIT,
    ADJUST_DEBIT,
    REDEEM,
    REDEEM_REVERSAL,
    ZERO,
    cents,
    fifo,
    is_pending,
    settle_debt,
)
from rules.models import PointsPolicy, Program
from rules.rewards import CouponSpec
from store import points as store
from store import rewards as reward_store
from store.db import utcnow
from store.models import CustomerRow, PointsLedgerRow, PointsLotRow
from store.sql import table_of

LotStatus = Literal["active", "pending", "expired", "spent"]
MAX_LEDGER = 1000
MAX_KEY = 200
MAX_REASON = 500
MAX_AMOUNT = Decimal(1_000_000_000)
DEFAULT_EXPIRY_DAYS = 365  # PointsPolicy's default rolling expiry
_PROGRAMS: OrderedDict[str, Program] = OrderedDict()  # by rules version (a content hash)
T = TypeVar("T")


# --------------------------------------------------------------------------- models


class PointsTotals(BaseModel):
    """A member's points as of a moment. They add up: active + pending + spent + expired +
    clawed_back + debited - debt = earned + credited."""

    balance: float = Field(
        description="What the member can spend: active, less the debt where the programme "
        "allows a negative balance"
    )
    active: float = Field(description="Points in live lots past their return window")
    pending: float = Field(description="Points in live lots still inside the return window")
    earned: float = Field(description="Earned by the rules (earn and pending entries)")
    credited: float = Field(description="Credited by operators")
    debited: float = Field(description="Debited by operators and by rules")
    spent: float = Field(description="Redeemed, net of reversals")
    clawed_back: float = Field(description="Taken back by refunds")
    expired: float = Field(description="Expired, including lots past their date today")
    debt: float = Field(description="What the balance could not cover; later credits pay it")
    by_kind: dict[str, float]


class LotLine(PointsLotView):
    """A lot as the profile shows it, with its status and where it came from."""

    id: int
    status: LotStatus
    available_at: datetime | None = Field(None, description="Spendable from (pending points)")
    source: str | None = Field(None, description="The rule (or journey) that awarded it")
    event_id: str | None = None
    order_id: str | None = None


class LedgerLine(BaseModel):
    at: datetime
    kind: str
    amount: float
    lot_id: int | None = None
    event_id: str | None = None
    order_id: str | None = None
    reason: str | None = None
    actor: str | None = Field(None, description="rule:<name>, or the person or key")
    ref: str | None = Field(None, description="The redemption's or adjustment's key")
    qualifying: bool = False


class PointsStatement(BaseModel):
    customer_id: str
    as_of: datetime
    totals: PointsTotals
    lots: list[LotLine] = Field(description="Every lot, the newest first")
    ledger: list[LedgerLine] = Field(description="The newest entries first")


class Redemption(BaseModel):
    """A reward redeemed (and perhaps reversed)."""

    key: str
    customer_id: str
    reward_id: str
    cost: float
    status: Literal["done", "reversed"]
    code: str | None = Field(None, description="The coupon's code, for a coupon reward")
    by: str | None
    created_at: datetime
    reversed_at: datetime | None = None
    reversed_by: str | None = None
    balance: float = Field(description="The member's balance after this call")


class Adjustment(BaseModel):
    """Points credited or debited by hand."""

    key: str
    customer_id: str
    amount: float = Field(description="Positive: a credit; negative: a debit")
    reason: str
    qualifying: bool = Field(description="Counts as earned for tier qualification")
    by: str | None
    at: datetime
    debt: float = Field(description="The member's debt after this call")
    balance: float = Field(description="The member's balance after this call")


# --------------------------------------------------------------------------- programme


def _program(
    conn: Connection, version: str | None = None, *, known: bool = False
) -> Program | None:
    """The active rules version's programme, kept by version; `known`: the caller has read
    the version (`version`, None for none) already."""
    if not known:
        version = store.active_version(conn)
    if version is None:
        return None
    program = _PROGRAMS.get(version)
    if program is None:
        pack = active_pack(conn)
        if pack is None:
            return None
        program = pack.program
        _PROGRAMS[pack.version] = program
        while len(_PROGRAMS) > 16:
            _PROGRAMS.popitem(last=False)
    return program


def _policy(program: Program | None) -> PointsPolicy:
    return program.points if program is not None else PointsPolicy()


def _balance(active: Decimal, debt: Decimal, policy: PointsPolicy) -> Decimal:
    return active - debt if policy.negative_balance == "allow" else active


# --------------------------------------------------------------------------- statement


def _f(value: Decimal) -> float:
    return float(value + ZERO)  # never "-0"


def points_totals(
    conn: Connection, customer_id: str, at: datetime, program: Program | None = None
) -> PointsTotals:
    """The member's totals as of `at` (`store.points.totals`), the balance under the
    active programme's `negative_balance` (or `program`'s)."""
    t = store.totals(conn, customer_id, at)
    policy = _policy(program if program is not None else _program(conn))
    return PointsTotals(
        balance=_f(_balance(t.active, t.debt, policy)),
        active=_f(t.active),
        pending=_f(t.pending),
        earned=_f(t.earned),
        credited=_f(t.credited),
        debited=_f(t.debited),
        spent=_f(t.spent),
        clawed_back=_f(t.clawed_back),
        expired=_f(t.expired),
        debt=_f(t.debt),
        by_kind={k: _f(v) for k, v in t.by_kind.items()},
    )


def _status(
    remaining: Decimal,
    expires_at: datetime | None,
    available_at: datetime | None,
    at: datetime,
) -> LotStatus:
    if remaining <= 0:
        return "spent"
    if expires_at is not None and expires_at <= at:
        return "expired"
    return "pending" if available_at is not None and available_at > at else "active"


def statement(
    rt: Runtime, customer_id: str, *, ledger: int = 50, at: datetime | None = None
) -> PointsStatement:
    """The member's points statement as of `at` (default now), with the newest `ledger`
    entries; `NotFound` for an unknown id."""
    at = at or utcnow()
    ledger = max(0, min(ledger, MAX_LEDGER))
    _check_id(customer_id)
    with rt.engine.connect() as conn:
        known = conn.execute(
            select(CustomerRow.customer_id).where(CustomerRow.customer_id == customer_id)
        ).first()
        if known is None:
            raise NotFound(f"no customer with id {customer_id!r}")
        lot = table_of(PointsLotRow).c
        lots = [
            LotLine(
                id=r.id,
                earned=float(r.earned),
                remaining=float(r.remaining),
                earned_at=r.earned_at,
                expires_at=r.expires_at,
                available_at=r.available_at,
                status=_status(cents(r.remaining), r.expires_at, r.available_at, at),
                source=r.source,
                event_id=r.event_id,
                order_id=r.order_id,
            )
            for r in conn.execute(
                select(
                    lot.id,
                    lot.earned,
                    lot.remaining,
                    lot.earned_at,
                    lot.expires_at,
                    lot.available_at,
                    lot.source,
                    lot.event_id,
                    lot.order_id,
                )
                .where(lot.customer_id == customer_id)
                .order_by(lot.earned_at.desc(), lot.id.desc())
            )
        ]
        led = table_of(PointsLedgerRow).c
        lines = [
            LedgerLine(
                at=r.at,
                kind=r.kind,
                amount=float(r.amount),
                lot_id=r.lot_id,
                event_id=r.event_id,
                order_id=r.order_id,
                reason=r.reason,
                actor=r.actor,
                ref=r.ref,
                qualifying=bool(r.qualifying),
            )
            for r in conn.execute(
                select(
                    led.at,
                    led.kind,
                    led.amount,
                    led.lot_id,
                    led.event_id,
                    led.order_id,
                    led.reason,
                    led.actor,
                    led.ref,
                    led.qualifying,
                )
                .where(led.customer_id == customer_id)
                .order_by(led.at.desc(), led.id.desc())
                .limit(ledger)
            )
        ]
        totals = points_totals(conn, customer_id, at)
    return PointsStatement(
        customer_id=customer_id, as_of=at, totals=totals, lots=lots, ledger=lines
    )


# --------------------------------------------------------------------------- inputs


def _text(value: str, field: str, limit: int) -> str:
    if not value or len(value) > limit:
        raise Invalid(f"must be 1 to {limit} characters", field=field)
    if "\x00" in value:
        raise Invalid("must not contain a NUL character", field=field)
    return value


def _check_id(customer_id: str) -> None:
    _text(customer_id, "customer_id", 200)


def points_amount(value: Decimal | float | int | str) -> Decimal:
    """An amount of points as an operator may give it: not 0, at most two decimals, at
    most 1,000,000,000 either way; `Invalid` otherwise."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise Invalid(f"{value!r} is not a number", field="amount") from exc
    if not amount.is_finite() or amount == 0:
        raise Invalid("must be a number other than 0", field="amount")
    if amount != amount.quantize(Decimal("0.01")):
        raise Invalid("at most two decimals", field="amount")
    if abs(amount) > MAX_AMOUNT:
        raise Invalid(f"at most {MAX_AMOUNT:,} either way", field="amount")
    return amount.quantize(Decimal("0.01"))


def _pts(value: Decimal) -> str:
    """Points as messages show them: 1,250 or 12.50."""
    return f"{value:,.0f}" if value == value.to_integral_value() else f"{value:,.2f}"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _ledger_row(
    customer_id: str,
    kind: str,
    amount: Decimal,
    lot_id: int | None,
    at: datetime,
    reason: str,
    dedupe_key: str,
    by: str | None,
    ref: str,
    qualifying: bool = False,
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "lot_id": lot_id,
        "kind": kind,
        "amount": amount,
        "at": at,
        "event_id": None,
        "reason": reason,
        "dedupe_key": dedupe_key,
        "order_id": None,
        "qualifying": qualifying,
        "actor": by,
        "ref": ref,
    }


def _lot_key(*parts: str) -> str:
    """A lot key (at most 40 characters) for a lot a service makes: its kind and a hash of
    the request's key (and, for a reversal, which of the redemption's draws it returns) —
    never of database ids, so replaying the same requests elsewhere gives the same keys."""
    kind, *rest = parts
    return f"{kind}:{hashlib.blake2b(':'.join(rest).encode(), digest_size=16).hexdigest()}"


def _once_more_after_a_race(attempt: Callable[[], T]) -> T:
    """Run a transaction; run it once more when it lost a race to another one with the same
    key (a unique key taken meanwhile): the second run finds what the winner stored."""
    try:
        return attempt()
    except IntegrityError:
        return attempt()


def coupon_code(prefix: str, key: str, length: int = 8) -> str:
    """`<prefix>-<the first hex digits of blake2b(key)>`: the same key, the same code."""
    return f"{prefix}-{hashlib.blake2b(key.encode()).hexdigest()[:length]}"


# --------------------------------------------------------------------------- redeem


def _redemption(row: Any, balance: Decimal) -> Redemption:
    return Redemption(
        key=row.key,
        customer_id=row.customer_id,
        reward_id=row.reward_id,
        cost=float(cents(row.cost)),
        status=row.status,
        code=row.code,
        by=row.by,
        created_at=row.created_at,
        reversed_at=row.reversed_at,
        reversed_by=row.reversed_by,
        balance=_f(balance),
    )


def _current_balance(conn: Connection, customer_id: str, at: datetime) -> Decimal:
    program = _program(conn)
    t = store.totals(conn, customer_id, at)
    return _balance(t.active, t.debt, _policy(program))


def _check_tier(reward: store.Offer, member: store.Member, program: Program | None) -> None:
    if reward.min_tier is None:
        return
    needed = program.tier(reward.min_tier) if program is not None else None
    if program is None or needed is None:
        raise Refused(
            f"reward {reward.reward_id} needs tier {reward.min_tier}, which the programme "
            "does not have"
        )
    name = member.tier or program.welcome_tier
    have = program.tier(name)
    if have is None or have.rank < needed.rank:
        raise Refused(
            f"reward {reward.reward_id} needs tier {reward.min_tier}; the member is {name}"
        )


def redeem(
    rt: Runtime,
    customer_id: str,
    reward_id: str,
    *,
    key: str,
    by: str | None,
    now: datetime | None = None,
) -> Redemption:
    """Spend the member's points on a reward, first to expire first; idempotent by `key`.

    `NotFound` for an unknown member or reward; `Conflict` for a key used for another
    redemption; `Refused` (nothing changes) for a withdrawn reward, outside its validity,
    a tier too low, the member's limit reached, not enough points, or no stock left. A
    coupon reward issues a coupon whose code derives from the key."""
    _check_id(customer_id)
    _text(reward_id, "reward", 64)
    _text(key, "key", MAX_KEY)
    if by is not None:
        _text(by, "by", 200)
    at = now or utcnow()

    def attempt() -> Redemption:
        with rt.engine.begin() as conn:
            member = store.bump(conn, customer_id)
            if member is None:
                raise NotFound(f"no customer with id {customer_id!r}")
            context = store.redeem_context(conn, customer_id, reward_id, key)
            if context.known_key:
                done = reward_store.redemption(conn, key)
                assert done is not None
                if done.customer_id != customer_id or done.reward_id != reward_id:
                    raise Conflict(
                        f"key {key!r} was used for another redemption (customer "
                        f"{done.customer_id}, reward {done.reward_id})"
                    )
                return _redemption(done, _current_balance(conn, customer_id, at))
            return _redeem(conn, customer_id, reward_id, member, context, key=key, by=by, now=at)

    return _once_more_after_a_race(attempt)


def _redeem(
    conn: Connection,
    customer_id: str,
    reward_id: str,
    member: store.Member,
    context: store.RedeemContext,
    *,
    key: str,
    by: str | None,
    now: datetime,
) -> Redemption:
    reward = context.reward
    if reward is None:
        raise NotFound(f"no reward with id {reward_id!r}")
    if not reward.active:
        raise Refused(f"reward {reward_id} is withdrawn")
    if reward.valid_from is not None and now < reward.valid_from:
        raise Refused(f"reward {reward_id} is not available before {_when(reward.valid_from)}")
    if reward.valid_to is not None and now >= reward.valid_to:
        raise Refused(f"reward {reward_id} ended on {_when(reward.valid_to)}")
    program = _program(conn, context.version, known=True)
    _check_tier(reward, member, program)
    if reward.per_member_limit is not None and context.redeemed >= reward.per_member_limit:
        raise Refused(
            f"limit reached: {reward_id} redeemed {context.redeemed} times "
            f"(limit {reward.per_member_limit})"
        )
    cost = reward.cost
    lots = store.live_lots(conn, customer_id, now)
    pending = sum((lot.remaining for lot in lots if is_pending(lot, now)), ZERO)
    active = sum((lot.remaining for lot in lots), ZERO) - pending
    available = _balance(active, member.debt, _policy(program))
    if available < cost:
        waiting = f" ({_pts(pending)} pending)" if pending > 0 else ""
        raise Refused(
            f"not enough points: {_pts(max(available, ZERO))} available{waiting}, "
            f"{_pts(cost)} needed"
        )
    if not store.take_stock(conn, reward_id):
        raise Refused(f"out of stock: {reward_id}")
    taken, short = fifo(lots, cost, now)
    assert short == 0, "the balance covered the cost"
    store.set_remaining(conn, [lot for lot, _ in taken])
    reason = f"reward {reward_id}"
    store.add_ledger(
        conn,
        [
            _ledger_row(
                customer_id, REDEEM, -points, lot.id, now, reason, f"redeem:{key}:{i}", by, key
            )
            for i, (lot, points) in enumerate(taken)
        ],
    )
    code = None
    if reward.kind == "coupon" and reward.coupon:
        spec = CouponSpec.model_validate(reward.coupon)
        code = _issue_coupon(conn, customer_id, reward_id, spec, key, now)
    store.add_redemption(
        conn,
        {
            "key": key,
            "customer_id": customer_id,
            "reward_id": reward_id,
            "cost": cost,
            "status": reward_store.DONE,
            "code": code,
            "by": by,
            "created_at": now,
        },
    )
    return Redemption(
        key=key,
        customer_id=customer_id,
        reward_id=reward_id,
        cost=float(cost),
        status="done",
        code=code,
        by=by,
        created_at=now,
        balance=_f(available - cost),
    )


def _issue_coupon(
    conn: Connection, customer_id: str, reward_id: str, spec: CouponSpec, key: str, now: datetime
) -> str:
    """A coupon for the redemption; its code derives from the key (longer in the rare case
    that the short one is taken by another key)."""
    for length in (8, 16, 32):
        code = coupon_code(spec.code_prefix, key, length)
        added = store.add_coupon(
            conn,
            {
                "code": code,
                "customer_id": customer_id,
                "value": spec.value,
                "expires_at": now + timedelta(days=spec.valid_days),
                "rule": f"reward:{reward_id}",
                "event_id": None,
                "created_at": now,
            },
        )
        if added:
            return code
    raise Conflict(f"no free coupon code for key {key!r}")


# --------------------------------------------------------------------------- reverse


def reverse(rt: Runtime, key: str, *, by: str | None, now: datetime | None = None) -> Redemption:
    """Undo a redemption: its points go back to the lots they came from (or, for a lot the
    nightly expiry has zeroed since, to a new lot with the old one's dates), paying the
    member's debt first; the stock is given back and a coupon voided. `NotFound` for an
    unknown key; `Refused` when it is reversed already."""
    _text(key, "key", MAX_KEY)
    if by is not None:
        _text(by, "by", 200)
    now = now or utcnow()
    with rt.engine.begin() as conn:
        found = store.bump_redemption_owner(conn, key)
        if found is None:
            raise NotFound(f"no redemption with key {key!r}")
        customer_id, member = found
        done = reward_store.redemption(conn, key)
        assert done is not None
        if done.status == reward_store.REVERSED:
            when = f" (at {_when(done.reversed_at)})" if done.reversed_at else ""
            raise Refused(f"redemption {key} is already reversed{when}")
        _give_back(conn, customer_id, member.debt, done.reward_id, key, by, now)
        reward_store.give_back(conn, done.reward_id)
        reward_store.mark_reversed(conn, key, now, by)
        if done.code:
            store.void_coupon(conn, done.code, now)
        stored = reward_store.redemption(conn, key)
        return _redemption(stored, _current_balance(conn, customer_id, now))


def _give_back(
    conn: Connection,
    customer_id: str,
    debt: Decimal,
    reward_id: str,
    key: str,
    by: str | None,
    now: datetime,
) -> Decimal:
    """Return a redemption's points; the member's debt after it (live points pay it)."""
    led = table_of(PointsLedgerRow).c
    drawn = [
        (int(r.lot_id), -cents(r.amount))
        for r in conn.execute(
            select(led.lot_id, led.amount)
            .where(led.ref == key, led.kind == REDEEM, led.customer_id == customer_id)
            .order_by(led.id)
        )
    ]
    ids = [lot_id for lot_id, _ in drawn]
    expired = store.was_expired(conn, ids)
    dates = store.lot_dates(conn, ids)
    entries: list[dict[str, Any]] = []
    refill: list[tuple[int, Decimal]] = []
    left = debt
    for i, (lot_id, points) in enumerate(drawn):
        old = dates[lot_id]
        live = old.expires_at is None or old.expires_at > now
        settled = settle_debt(left, points) if live else ZERO
        left -= settled
        target = lot_id
        if lot_id in expired:
            # the nightly run zeroed it: its `expire` entry is written; a refill would never
            # expire. A new lot with the old one's dates takes the points.
            target = store.new_lot(
                conn,
                {
                    "customer_id": customer_id,
                    "earned": points,
                    "remaining": points - settled,
                    "earned_at": old.earned_at,
                    "expires_at": old.expires_at,
                    "available_at": old.available_at,
                    "order_id": old.order_id,
                    "source": "redeem_reversal",
                    "lot_key": _lot_key("rev", key, str(i)),
                },
            )
        else:
            refill.append((lot_id, points - settled))
        entries.append(
            _ledger_row(
                customer_id,
                REDEEM_REVERSAL,
                points,
                target,
                now,
                f"reversed: reward {reward_id}",
                f"reverse:{key}:{i}",
                by,
                key,
            )
        )
    store.add_to_lots(conn, refill)
    store.add_ledger(conn, entries)
    if left != debt:
        store.set_debt(conn, customer_id, left)
    return left


# --------------------------------------------------------------------------- adjust


def adjust(
    rt: Runtime,
    customer_id: str,
    amount: Decimal | float | int | str,
    *,
    reason: str,
    by: str,
    qualifying: bool = False,
    key: str | None = None,
    now: datetime | None = None,
) -> Adjustment:
    """Credit (amount > 0) or debit (amount < 0) points by hand, recorded with who and why.

    A credit is a new lot — never capped, never pending, expiring under the programme's
    policy from now — that pays the member's debt first; it counts as earned for tier
    qualification only with `qualifying`. A debit takes points first to expire first;
    when they do not cover it, the programme's `negative_balance` decides: `forbid`
    refuses, `allow` makes the rest a debt. Idempotent by `key` (made up when not given)."""
    points = points_amount(amount)
    _check_id(customer_id)
    _text(reason, "reason", MAX_REASON)
    _text(by, "by", 200)
    key = _text(key, "key", MAX_KEY) if key is not None else f"adj-{uuid.uuid4().hex}"
    at = now or utcnow()

    def attempt() -> Adjustment:
        with rt.engine.begin() as conn:
            member = store.bump(conn, customer_id)
            if member is None:
                raise NotFound(f"no customer with id {customer_id!r}")
            program = _program(conn)
            policy = _policy(program)
            stored = _stored_adjustment(conn, key)
            if stored is not None:
                if (stored.customer_id, cents(stored.amount), stored.reason, stored.qualifying) != (
                    customer_id,
                    points,
                    reason,
                    qualifying,
                ):
                    raise Conflict(
                        f"key {key!r} was used for another adjustment "
                        f"({_pts(cents(stored.amount))} for customer {stored.customer_id}: "
                        f"{stored.reason!r})"
                    )
                t = store.totals(conn, customer_id, at)
                debt, active = t.debt, t.active
                done = stored
            else:
                if points > 0:
                    debt, active = _credit(
                        conn, customer_id, member, points, program, reason, by, qualifying, key, at
                    )
                else:
                    debt, active = _debit(
                        conn, customer_id, member, -points, policy, reason, by, key, at
                    )
                done = Adjustment(
                    key=key,
                    customer_id=customer_id,
                    amount=float(points),
                    reason=reason,
                    qualifying=qualifying,
                    by=by,
                    at=at,
                    debt=0,
                    balance=0,
                )
        return done.model_copy(
            update={"debt": _f(debt), "balance": _f(_balance(active, debt, policy))}
        )

    return _once_more_after_a_race(attempt)


def _stored_adjustment(conn: Connection, key: str) -> Adjustment | None:
    led = table_of(PointsLedgerRow).c
    rows = list(
        conn.execute(
            select(led.customer_id, led.amount, led.reason, led.qualifying, led.actor, led.at)
            .where(led.ref == key, led.kind.in_((ADJUST_CREDIT, ADJUST_DEBIT)))
            .order_by(led.id)
        )
    )
    if not rows:
        return None
    first = rows[0]
    return Adjustment(
        key=key,
        customer_id=first.customer_id,
        amount=float(sum((cents(r.amount) for r in rows), ZERO)),
        reason=first.reason or "",
        qualifying=bool(first.qualifying),
        by=first.actor,
        at=first.at,
        debt=0,
        balance=0,
    )


def _credit(
    conn: Connection,
    customer_id: str,
    member: store.Member,
    points: Decimal,
    program: Program | None,
    reason: str,
    by: str,
    qualifying: bool,
    key: str,
    now: datetime,
) -> tuple[Decimal, Decimal]:
    """A new lot of `points`, less what pays the debt; (debt, active) after it."""
    settled = settle_debt(member.debt, points)
    if program is not None:
        expires = lot_expiry(program, now, member.timezone)
    else:  # no programme deployed: the default policy's rolling expiry
        expires = now + timedelta(days=DEFAULT_EXPIRY_DAYS)
    lot_id = store.new_lot(
        conn,
        {
            "customer_id": customer_id,
            "earned": points,
            "remaining": points - settled,
            "earned_at": now,
            "expires_at": expires,
            "available_at": None,
            "source": "adjust",
            "lot_key": _lot_key("adj", key),
        },
    )
    row = _ledger_row(
        customer_id,
        ADJUST_CREDIT,
        points,
        lot_id,
        now,
        reason,
        f"adjust:{key}:0",
        by,
        key,
        qualifying,
    )
    store.add_ledger(conn, [row])
    debt = member.debt - settled
    if settled:
        store.set_debt(conn, customer_id, debt)
    active = sum(
        (
            lot.remaining
            for lot in store.live_lots(conn, customer_id, now)
            if not is_pending(lot, now)
        ),
        ZERO,
    )
    return debt, active


def _debit(
    conn: Connection,
    customer_id: str,
    member: store.Member,
    points: Decimal,
    policy: PointsPolicy,
    reason: str,
    by: str,
    key: str,
    now: datetime,
) -> tuple[Decimal, Decimal]:
    """Take `points` first to expire first; (debt, active) after it."""
    lots = store.live_lots(conn, customer_id, now)
    active = sum((lot.remaining for lot in lots if not is_pending(lot, now)), ZERO)
    if active < points and policy.negative_balance == "forbid":
        raise Refused(f"not enough points: {_pts(active)} available, {_pts(points)} asked")
    taken, short = fifo(lots, points, now)
    store.set_remaining(conn, [lot for lot, _ in taken])
    rows = [
        _ledger_row(
            customer_id, ADJUST_DEBIT, -p, lot.id, now, reason, f"adjust:{key}:{i}", by, key
        )
        for i, (lot, p) in enumerate(taken)
    ]
    debt = member.debt
    if short > 0:
        rows.append(
            _ledger_row(
                customer_id, ADJUST_DEBIT, -short, None, now, reason, f"adjust:{key}:debt", by, key
            )
        )
        debt += short
        store.set_debt(conn, customer_id, debt)
    store.add_ledger(conn, rows)
    return debt, active - (points - short)
