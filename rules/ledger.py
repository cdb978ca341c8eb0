"""The points ledger's vocabulary and arithmetic, as plain functions of plain values.

Every change to a member's points is one typed ledger entry (`KINDS`). The rules (a refund's
clawback, a deduction) and the services (redemption, reversal, operator adjustment) take
points the same way, through `fifo`: from lots that are spendable at the moment — points
left, not expired, past their return window — the first to expire first. What cannot be
taken becomes a *debt*, which every later credit settles first (`settle_debt`). A refund
claws back what its order earned, pro rata, and never twice (`clawback_due`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol, TypeVar

CENT = Decimal("0.01")
ZERO = Decimal(0)

EARN = "earn"  # + points a rule awarded, spendable at once
PENDING = "pending"  # + points a purchase earned, spendable after the return window
ACTIVATE = "activate"  # a pending lot became spendable: a transfer, counted in no total
REDEEM = "redeem"  # - points spent on a reward
REDEEM_REVERSAL = "redeem_reversal"  # + a redemption undone
CLAWBACK = "clawback"  # - what a refunded order had earned
ADJUST_CREDIT = "adjust_credit"  # + by an operator (never capped)
ADJUST_DEBIT = "adjust_debit"  # - by an operator, or by a rule's deduct_points
EXPIRE = "expire"  # - what was left of a lot at its expiry

KINDS = (
    EARN,
    PENDING,
    ACTIVATE,
    REDEEM,
    REDEEM_REVERSAL,
    CLAWBACK,
    ADJUST_CREDIT,
    ADJUST_DEBIT,
    EXPIRE,
)
EARNED_KINDS = (EARN, PENDING)  # what qualifies for a tier on `points_earned`
REDEEMED_KINDS = (REDEEM, REDEEM_REVERSAL)  # net: a reversed redemption spent nothing

# The one map from ledger kinds to the figures KPIs report (each as a positive number).
KIND_FIGURES: dict[str, str] = {
    EARN: "points_issued",
    PENDING: "points_issued",
    REDEEM: "points_redeemed",
    REDEEM_REVERSAL: "points_redeemed",
    CLAWBACK: "points_clawed_back",
    EXPIRE: "points_expired",
}

_FAR = datetime.max.replace(tzinfo=UTC)


class LotLike(Protocol):
    """What `fifo` needs of a lot: the rules' `Lot` and the services' rows both have it."""

    remaining: Decimal
    earned_at: datetime
    expires_at: datetime | None
    available_at: datetime | None


L = TypeVar("L", bound=LotLike)


def cents(value: Decimal | float | int | str) -> Decimal:
    """An amount of points or money to the cent (SQLite hands `Numeric` back as a float)."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def is_live(lot: LotLike, at: datetime) -> bool:
    """Has points left and has not expired at `at` (pending or not)."""
    return lot.remaining > 0 and (lot.expires_at is None or lot.expires_at > at)


def is_pending(lot: LotLike, at: datetime) -> bool:
    """Live, but still inside its return window at `at`."""
    return is_live(lot, at) and lot.available_at is not None and lot.available_at > at


def is_spendable(lot: LotLike, at: datetime) -> bool:
    return is_live(lot, at) and (lot.available_at is None or lot.available_at <= at)


def fifo_key(lot: LotLike) -> tuple[datetime, datetime]:
    """The first to expire goes first; then the oldest."""
    return (lot.expires_at or _FAR, lot.earned_at)


def fifo(lots: Iterable[L], need: Decimal, at: datetime) -> tuple[list[tuple[L, Decimal]], Decimal]:
    """Take `need` points from the lots spendable at `at`, first to expire first. Changes the
    lots' `remaining`; returns what was taken from each and what could not be taken."""
    taken: list[tuple[L, Decimal]] = []
    left = need
    for lot in sorted((x for x in lots if is_spendable(x, at)), key=fifo_key):
        if left <= 0:
            break
        take = min(lot.remaining, left)
        lot.remaining -= take
        left -= take
        taken.append((lot, take))
    return taken, left


def take_from(lots: Iterable[LotLike], need: Decimal, at: datetime) -> Decimal:
    """Take up to `need` from `lots` (live ones, in the given order, pending included);
    returns what is still to take. A refund cancels its own order's lots this way."""
    left = need
    for lot in lots:
        if left <= 0:
            break
        if not is_live(lot, at):
            continue
        take = min(lot.remaining, left)
        lot.remaining -= take
        left -= take
    return left


def settle_debt(debt: Decimal, credit: Decimal) -> Decimal:
    """How much of a new credit goes to paying the debt (the rest stays in the new lot)."""
    return min(max(debt, ZERO), credit)


@dataclass
class OrderState:
    """A purchase as its refunds see it: what it cost, what it earned, what has already been
    refunded (money) and clawed back (points)."""

    order_id: str
    purchased_at: datetime | None
    amount: Decimal
    points: Decimal = ZERO
    refunded: Decimal = ZERO
    clawed: Decimal = ZERO


def clawback_due(order: OrderState, refund_amount: Decimal | None) -> tuple[Decimal, Decimal]:
    """(points to claw back now, money this refund takes off the order).

    The refunds of an order add up to at most the order: the points to take back are the
    order's points * (money refunded so far / the order's amount), minus what earlier
    refunds of it already took. A refund without an amount refunds the rest of the order."""
    before = order.refunded
    if refund_amount is None:
        total = max(order.amount, before)
    else:
        total = min(before + refund_amount, order.amount)
    if order.amount <= 0 or total >= order.amount:
        target = order.points
    else:
        target = (order.points * total / order.amount).quantize(CENT, rounding=ROUND_HALF_UP)
    return max(target - order.clawed, ZERO), max(total - before, ZERO)
