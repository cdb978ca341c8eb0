"""From fired rules to concrete changes: pure planning of each effect, applied to the state.

`apply_rules` takes the rules that fired for one event (already in conflict order: priority,
then file order) and, effect by effect in that order, works out the concrete change (points
after rate, multiplier, rounding and caps; the lots a debit consumes first-in-first-out; the
tier an upgrade reaches), applies it to the in-memory `ProfileState` so the next effect and
the next event see it, and returns the changes as data for the store to write.

Conflicts inside one event: every effect applies in order, so for single-valued things (tier,
stage, owner) the last one wins; an effect that would change nothing (a tag already there, a
tier already held) is recorded as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from rules.compiler import CompiledPack, CompiledRule
from rules.expressions import Evaluator, parse_expression
from rules.facts import EventFacts, Lot, ProfileState, order_of, zone
from rules.ledger import ZERO, cents, clawback_due, fifo, settle_debt, take_from
from rules.models import (
    AddTag,
    AssignOwner,
    AwardPoints,
    CouponArgs,
    DeductPoints,
    DowngradeTier,
    EnrollJourney,
    JourneyEvent,
    NoExpiry,
    PeriodEndExpiry,
    Program,
    RemoveTag,
    RetentionAction,
    ReturnToPool,
    Rule,
    SetStage,
    SetTier,
    UpgradeTier,
)
from rules.tiers import qualified_for

CENT = Decimal("0.01")


@dataclass
class Change:
    """One applied (or skipped) effect, as the store writes it and the audit trail shows it."""

    rule: str
    # add_tag, remove_tag, earn, debit, clawback, tier, stage, owner, journey, task, coupon
    kind: str
    detail: dict[str, Any]
    skipped: str | None = None  # the reason, when the effect changed nothing


@dataclass
class Outcome:
    fired: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


def _money(value: float) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_DOWN)


def _round_points(value: float, how: str) -> float:
    if how == "floor":
        return float(math.floor(value + 1e-9))
    if how == "ceil":
        return float(math.ceil(value - 1e-9))
    return float(round(value))


def lot_expiry(program: Program, earned_at: datetime, tz: str) -> datetime | None:
    """When points earned at `earned_at` expire under the programme's policy."""
    policy = program.points.expiry
    if isinstance(policy, NoExpiry):
        return None
    if not isinstance(policy, PeriodEndExpiry):
        return earned_at + timedelta(days=policy.days)
    local_zone = zone(tz) or ZoneInfo("UTC")
    local = earned_at.astimezone(local_zone)
    months = {"month": 1, "quarter": 3, "year": 12}[policy.period]
    start_month = (local.month - 1) // months * months  # 0-based start of the current period
    end_index = local.year * 12 + start_month + months * policy.periods
    year, month = divmod(end_index, 12)
    return datetime(year, month + 1, 1, tzinfo=local_zone).astimezone(UTC)


def _local_day_bounds(at: datetime, tz: str) -> tuple[datetime, datetime]:
    """The start and end (exclusive) of the customer's local calendar day holding `at`."""
    local = at.astimezone(zone(tz) or UTC)
    return _day_bounds(tz, local.year, local.month, local.day)


@lru_cache(maxsize=8192)
def _day_bounds(tz: str, year: int, month: int, day: int) -> tuple[datetime, datetime]:
    zone_info = zone(tz) or UTC
    end = date(year, month, day) + timedelta(days=1)
    return (
        datetime(year, month, day, tzinfo=zone_info),
        datetime(end.year, end.month, end.day, tzinfo=zone_info),
    )


def qualified_tier(program: Program, facts: dict[str, Any]) -> str:
    """The highest tier whose threshold the customer's qualifying metric reaches (the facts'
    spend over the policy's window where the facts have it, else over 365 days)."""
    days = program.tier_policy.window_days
    spend_key = f"spend_{days}d" if days in (30, 90) else "spend_365d"
    spend = float(facts.get(spend_key) or 0)
    return qualified_for(program, spend, float(facts.get("points_earned_365d") or 0))


@lru_cache(maxsize=4096)
def _expression(text: str) -> Evaluator:
    return parse_expression(text)[0]


def _key(*parts: object) -> str:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=10).hexdigest()


class _Planner:
    def __init__(
        self, pack: CompiledPack, state: ProfileState, event: EventFacts, facts: dict[str, Any]
    ) -> None:
        self.pack = pack
        self.program = pack.program
        self.state = state
        self.event = event
        self.facts = facts
        self.at = event.occurred_at
        self.out: list[Change] = []

    def change(self, rule: str, kind: str, skipped: str | None = None, **detail: Any) -> None:
        self.out.append(Change(rule, kind, detail, skipped))

    def amount(self, raw: float | str) -> float | None:
        if isinstance(raw, int | float):
            return float(raw)
        return _expression(raw)(self.facts)

    # -- effects -----------------------------------------------------------------------

    def add_tag(self, rule: str, tag: str, ttl_days: float | None) -> None:
        expires = self.at + timedelta(days=ttl_days) if ttl_days else None
        live = tag in self.state.live_tags(self.at)
        if live and self.state.tags.get(tag) == expires:
            self.change(rule, "add_tag", "the tag is already there", tag=tag)
            return
        self.state.tags[tag] = expires
        self.change(rule, "add_tag", tag=tag, expires_at=expires)

    def remove_tag(self, rule: str, tag: str) -> None:
        if tag not in self.state.tags:
            self.change(rule, "remove_tag", "the customer does not have the tag", tag=tag)
            return
        del self.state.tags[tag]
        self.change(rule, "remove_tag", tag=tag)

    def award(self, rule: str, index: int, eff: AwardPoints) -> None:
        args = eff.award_points
        base = self.amount(args.amount)
        if base is None:
            self.change(rule, "earn", "the amount's facts are missing", expression=args.amount)
            return
        points = base * (self.program.points.earn_rate if args.earn_rate else 1.0)
        if args.multiplier == "tier":
            tier = self.program.tier(self.state.tier or self.program.welcome_tier)
            points *= tier.benefits.points_multiplier if tier else 1.0
        points = _round_points(points, self.program.points.rounding)
        capped = None
        cap = self.program.points.per_event_cap
        if cap is not None and points > cap:
            points, capped = cap, "per_event_cap"
        daily = self.program.points.daily_cap
        if daily is not None:
            start, end = _local_day_bounds(self.at, self.state.timezone)
            earned_today = sum(a for t, a in self.state.earnings if start <= t < end)
            if earned_today + points > daily:
                points, capped = max(daily - earned_today, 0.0), "daily_cap"
        if points <= 0:
            reason = f"capped to 0 by {capped}" if capped else "the amount is not positive"
            self.change(rule, "earn", reason, points=0)
            return
        value = _money(points)
        key = _key(self.event.event_id, rule, index)
        policy = self.program.points
        purchase = self.event.type == self.program.purchase_event
        # purchase points wait out the return window; their expiry counts from its end
        pending = purchase and policy.pending_days > 0
        available = self.at + timedelta(days=policy.pending_days) if pending else None
        expires = lot_expiry(self.program, available or self.at, self.state.timezone)
        order_id = order_of(self.event, self.program) if purchase else None
        settled = settle_debt(self.state.debt, value)  # a debt is paid before anything else
        self.state.debt -= settled
        self.state.lots.append(
            Lot(
                key=key,
                remaining=value - settled,
                earned_at=self.at,
                expires_at=expires,
                order_id=order_id,
                available_at=available,
            )
        )
        self.state.earnings.append((self.at, float(value)))
        if order_id is not None and order_id in self.state.orders:
            self.state.orders[order_id].points += value
        self.change(
            rule,
            "earn",
            points=float(value),
            lot_key=key,
            expires_at=expires,
            reason=args.reason,
            capped=capped,
            order_id=order_id,
            available_at=available,
            debt_settled=float(settled) if settled else None,
        )

    def deduct(self, rule: str, index: int, eff: DeductPoints) -> None:
        args = eff.deduct_points
        wanted = self.amount(args.amount)
        if wanted is None or wanted <= 0:
            self.change(rule, "debit", "the amount is missing or not positive", requested=wanted)
            return
        need = _money(wanted)
        balance = self.state.balance(self.at)
        if balance < need:
            # a rule's deduction never makes a debt: larger than the balance, it is refused
            self.change(
                rule, "debit", "insufficient points", requested=float(need), balance=float(balance)
            )
            return
        taken, _ = fifo(self.state.lots, need, self.at)
        allocations = [
            {"lot_key": lot.key, "lot_id": lot.id, "amount": float(take)} for lot, take in taken
        ]
        self.change(
            rule,
            "debit",
            points=float(need),
            allocations=allocations,
            reason=args.reason,
            dedupe=_key(self.event.event_id, rule, index),
        )

    def set_tier(self, rule: str, tier: str, how: str) -> None:
        current = self.state.tier
        if tier == current:
            self.change(rule, "tier", f"already {tier}", to_tier=tier)
            return
        self.state.tier = tier
        self.facts["tier"] = tier
        tier_def = self.program.tier(tier)
        self.facts["tier_rank"] = tier_def.rank if tier_def else 0
        self.change(rule, "tier", from_tier=current, to_tier=tier, how=how)

    def move_tier(self, rule: str, direction: int, mode: str) -> None:
        order = self.program.ordered_tiers()
        names = [t.name for t in order]
        current = self.state.tier or self.program.welcome_tier
        pos = names.index(current) if current in names else 0
        if mode == "qualified":
            target = names.index(qualified_tier(self.program, self.facts))
            if (target - pos) * direction <= 0:
                word = "upgrade" if direction > 0 else "downgrade"
                self.change(rule, "tier", f"no {word}: qualifies for {names[target]}")
                return
        else:
            target = min(max(pos + direction, 0), len(names) - 1)
            if target == pos:
                self.change(rule, "tier", "already at the end of the tier ladder")
                return
        self.set_tier(rule, names[target], "upgrade" if direction > 0 else "downgrade")

    def retention(self, rule: str, index: int, eff: RetentionAction) -> None:
        args = eff.retention_action
        if args.task:
            self.change(
                rule,
                "task",
                title=args.task,
                owner=self.state.owner,
                due_at=self.at + timedelta(days=args.due_days),
            )
        if args.coupon:
            code, value, expires_at = self._coupon(rule, index, args.coupon)
            self.change(rule, "coupon", code=code, value=value, expires_at=expires_at)

    def _coupon(self, rule: str, index: int, c: CouponArgs) -> tuple[str, float, datetime]:
        """The coupon a retention action issues: its code (stable for the event, rule and
        effect), value and expiry."""
        code = f"{c.code_prefix}-{_key(self.event.event_id, rule, index)[:8].upper()}"
        return code, c.value, self.at + timedelta(days=c.valid_days)

    def _handover(self, rule: Rule) -> dict[str, Any]:
        """What a rule's journey effects hand to the journey besides their own data: the
        coupon its retention action issues (`data.coupon_code`, `coupon_value`,
        `coupon_expires_at`), so the message that should carry it can."""
        for i, eff in enumerate(rule.then):
            if isinstance(eff, RetentionAction) and eff.retention_action.coupon:
                code, value, expires_at = self._coupon(rule.name, i, eff.retention_action.coupon)
                return {
                    "coupon_code": code,
                    "coupon_value": value,
                    "coupon_expires_at": expires_at.date().isoformat(),
                }
        return {}

    def apply(self, compiled: CompiledRule) -> None:
        rule = compiled.rule.name
        handover = self._handover(compiled.rule)
        for i, eff in enumerate(compiled.rule.then):
            if isinstance(eff, AddTag):
                self.add_tag(rule, eff.add_tag.tag, eff.add_tag.ttl_days)
            elif isinstance(eff, RemoveTag):
                self.remove_tag(rule, eff.remove_tag)
            elif isinstance(eff, AwardPoints):
                self.award(rule, i, eff)
            elif isinstance(eff, DeductPoints):
                self.deduct(rule, i, eff)
            elif isinstance(eff, SetTier):
                self.set_tier(rule, eff.set_tier, "set")
            elif isinstance(eff, UpgradeTier):
                self.move_tier(rule, +1, eff.upgrade_tier)
            elif isinstance(eff, DowngradeTier):
                self.move_tier(rule, -1, eff.downgrade_tier)
            elif isinstance(eff, EnrollJourney):
                a = eff.enroll_journey
                data = {**handover, **a.data}
                self.change(rule, "journey", command="enroll", journey=a.journey, data=data)
            elif isinstance(eff, JourneyEvent):
                b = eff.journey_event
                data = {**handover, **b.data}
                self.change(
                    rule, "journey", command="event", journey=b.journey, event=b.event, data=data
                )
            elif isinstance(eff, RetentionAction):
                self.retention(rule, i, eff)
            elif isinstance(eff, AssignOwner):
                self.owner(rule, eff.assign_owner)
            elif isinstance(eff, ReturnToPool):
                if eff.return_to_pool:
                    self.owner(rule, None)
            elif isinstance(eff, SetStage):
                self.stage(rule, eff.set_stage)

    def owner(self, rule: str, owner: str | None) -> None:
        if self.state.owner == owner:
            self.change(rule, "owner", "no change", to_owner=owner)
            return
        before, self.state.owner = self.state.owner, owner
        self.facts["has_owner"] = owner is not None
        self.change(rule, "owner", from_owner=before, to_owner=owner)

    def stage(self, rule: str, stage: str) -> None:
        if self.state.lifecycle_stage == stage:
            self.change(rule, "stage", f"already {stage}", to_stage=stage)
            return
        before, self.state.lifecycle_stage = self.state.lifecycle_stage, stage
        self.facts["lifecycle_stage"] = stage
        self.change(rule, "stage", from_stage=before, to_stage=stage)
        if stage == "member" and self.state.tier is None:
            # a new member starts in the welcome tier, whatever made them a member
            self.set_tier(rule, self.program.welcome_tier, "welcome")


def apply_rules(
    pack: CompiledPack,
    fired: list[CompiledRule],
    state: ProfileState,
    event: EventFacts,
    facts: dict[str, Any],
) -> Outcome:
    """Apply the fired rules' effects, in order, to `state`; return the changes."""
    planner = _Planner(pack, state, event, facts)
    for compiled in fired:
        planner.apply(compiled)
    return Outcome(fired=[c.rule.name for c in fired], changes=planner.out)


REFUND_RULE = "refund"


def plan_refund(program: Program, state: ProfileState, event: EventFacts) -> list[Change]:
    """A refund event's own effect, before any rule sees it: take back the points its order
    earned (`clawback_due`) — from the order's own lots first (a pending lot is cancelled),
    then from the other spendable lots, first to expire first, and what is left becomes the
    member's debt — and lower the spend, at the purchase's time. Returns one `clawback`
    change (skipped, with the reason, when no points are taken); the store records every
    refund (`order_refunds`) from it, skipped or not."""
    if event.type != program.refund_event:
        return []
    at = event.occurred_at
    raw = event.properties.get(program.spend_property)
    amount = (
        cents(raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool) and raw >= 0
        else None
    )
    oid = order_of(event, program)
    order = state.orders.get(oid) if oid is not None else None
    detail: dict[str, Any] = {"order_id": oid, "points": 0.0, "debt": 0.0, "allocations": []}

    def done(
        skipped: str | None, purchased_at: datetime, money: Decimal, points: Decimal
    ) -> list[Change]:
        detail.update(purchased_at=purchased_at, amount=float(money))
        state.refunds.append((purchased_at, at, float(money), float(points)))
        return [Change(REFUND_RULE, "clawback", detail, skipped)]

    if order is None:
        # spend still falls, at the refund's time: there is no purchase to put it against
        reason = "the refund names no order" if oid is None else f"no purchase with order {oid}"
        return done(reason, at, amount or ZERO, ZERO)
    due, money = clawback_due(order, amount)
    order.refunded += money
    purchased = order.purchased_at or at
    if program.points.clawback == "none":
        return done("points.clawback is none", purchased, money, ZERO)
    if order.points <= 0:
        return done(f"order {oid} earned no points", purchased, money, ZERO)
    if due <= 0:
        return done(f"order {oid} is already clawed back in full", purchased, money, ZERO)
    order.clawed += due
    before = {id(lot): lot.remaining for lot in state.lots}
    own = [lot for lot in state.lots if lot.order_id == oid]
    left = take_from(own, due, at)
    if left > 0:
        _, left = fifo(state.lots, left, at)
    state.debt += left
    detail["allocations"] = [
        {"lot_key": lot.key, "lot_id": lot.id, "amount": float(before[id(lot)] - lot.remaining)}
        for lot in state.lots
        if lot.remaining != before[id(lot)]
    ]
    detail.update(points=float(due), debt=float(left))
    return done(None, purchased, money, due)
