"""The points ledger under any sequence of operations, on SQLite and PostgreSQL, with debts
forbidden and allowed: a hypothesis state machine.

Purchases (two-decimal amounts, a new order each), full and partial refunds, redemptions
(refused or not), their reversals, operator credits and debits (qualifying or not), and the
clock moving on (the nightly run activating
pending lots and expiring old ones) — in any order. After every step the stored rows must
keep the ledger's identities, read straight from the tables with exact decimals (not through
crmflow's own totals):

- the lots hold what the ledger says, less the debt: Σ lots.remaining - Σ ledger (transfers
  aside) = customers.points_debt;
- no order is clawed back more than it earned, nor twice: each order's clawback is exactly
  its points * the share of it refunded (rounded to the cent), computed here on its own;
- no entry of zero; under `forbid` no lot below zero;
- the points a member can spend now are what the profile says, and the statement's totals
  add up: active + pending + spent + expired + clawed back + debited - debt = earned +
  credited.

At the end the same operations are replayed into an empty database, events one per chunk:
the ledger and the lots come out the same.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, select

from automations.models import PointsExpiryParams
from crmflow.ingest import import_file
from crmflow.services import points as points_service
from crmflow.services import rewards as rewards_service
from crmflow.services.errors import Refused
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from rules.rewards import RewardsFile
from store import automations
from store.models import CustomerRow, OrderRefundRow, PointsLedgerRow, PointsLotRow
from store.profiles import load_profile
from tests.rules_helpers import PROGRAM, deploy_dir, wipe

CENT = Decimal("0.01")
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MEMBER = "M"
EARN = """
rules:
  - name: earn
    on: purchase
    then: [{award_points: {amount: event.amount, multiplier: none}}]
"""


def programme(tmp: Path, policy: str) -> Path:
    """Pending for 7 days, capped at 1,000 a purchase, lots expiring 30 days on."""
    text = (
        PROGRAM.replace("per_event_cap: 50000", "per_event_cap: 1000")
        .replace("expiry: {policy: rolling, days: 365}", "expiry: {policy: rolling, days: 30}")
        .replace("pending_days: 0", "pending_days: 7")
        .replace("negative_balance: forbid", f"negative_balance: {policy}")
    )
    (tmp / "program.yaml").write_text(text)
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "rules.yaml").write_text(EARN)
    return rules


REWARDS = RewardsFile.model_validate(
    {
        "rewards": [
            {"id": "mug", "name": "Mug", "kind": "gift", "cost": 120},
            {"id": "tote", "name": "Tote bag", "kind": "gift", "cost": 45.5},
            {"id": "spa", "name": "Spa hour", "kind": "service", "cost": 900},
        ]
    }
)


@dataclass
class Order:
    order_id: str
    amount: Decimal
    refunded: Decimal = Decimal(0)


@dataclass
class World:
    """What the operations did, to replay them; and the orders, to check clawbacks."""

    log: list[tuple[str, Any]] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)


def _d(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


class Player:
    """Runs operations against one database: events go in through a file import, buffered
    and imported in chunks of `chunk` (before anything else reads the store)."""

    def __init__(self, engine: Engine, tmp: Path, chunk: int) -> None:
        self.engine = engine
        self.tmp = tmp
        self.chunk = chunk
        self.buffer: list[dict[str, Any]] = []
        self.files = 0
        self.rt = Runtime(Settings(home=tmp / "home"), engine)
        rewards_service.apply(self.rt, REWARDS)
        member = tmp / "member.jsonl"
        member.write_text(json.dumps({"customer_id": MEMBER, "lifecycle_stage": "member"}) + "\n")
        import_file(engine, member, "customers")

    def event(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)

    def flush(self) -> None:
        if not self.buffer:
            return
        self.files += 1
        path = self.tmp / f"events-{self.files}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in self.buffer))
        report = import_file(self.engine, path, "events", chunk_size=self.chunk)
        assert report.rejected == 0, report
        self.buffer.clear()

    def tick(self, at: datetime) -> None:
        self.flush()
        params = PointsExpiryParams(notice_days=0, chunk_size=3)
        ctx = automations.RunContext("nightly", at.date().isoformat(), at, "UTC", params)
        for step in (automations.expire_points, automations.activate_points):
            cursor: str | None = None
            while True:
                with self.engine.begin() as conn:
                    chunk = step(conn, ctx, cursor)
                cursor = chunk.cursor
                if chunk.done:
                    break

    def redeem(self, reward: str, key: str, at: datetime) -> bool:
        """True when redeemed; a refusal (not enough points, say) changes nothing."""
        self.flush()
        try:
            points_service.redeem(self.rt, MEMBER, reward, key=key, by="till 1", now=at)
        except Refused:
            return False
        return True

    def reverse(self, key: str, at: datetime) -> None:
        self.flush()
        points_service.reverse(self.rt, key, by="desk", now=at)

    def adjust(self, amount: Decimal, qualifying: bool, key: str, at: datetime) -> bool:
        self.flush()
        try:
            points_service.adjust(
                self.rt,
                MEMBER,
                amount,
                reason="goodwill" if amount > 0 else "correction",
                by="Ops One",
                qualifying=qualifying,
                key=key,
                now=at,
            )
        except Refused:
            return False
        return True

    def play(self, op: str, arg: Any) -> None:
        if op == "event":
            self.event(arg)
        elif op == "tick":
            self.tick(arg)
        elif op == "redeem":
            self.redeem(*arg)
        elif op == "reverse":
            self.reverse(*arg)
        elif op == "adjust":
            self.adjust(*arg)
        else:  # pragma: no cover - every operation is one of the above
            raise AssertionError(op)


def ledger_rows(engine: Engine) -> Counter[tuple[Any, ...]]:
    """The ledger as a multiset; a lot is named by its key (ids differ between databases
    and runs: PostgreSQL does not reuse them), also inside the nightly run's dedupe keys."""
    led, lot = PointsLedgerRow, PointsLotRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                led.kind, led.amount, led.order_id, led.ref, led.dedupe_key, led.at, lot.lot_key
            ).outerjoin(lot, lot.id == led.lot_id)
        ).all()
    out: Counter[tuple[Any, ...]] = Counter()
    for kind, amount, oid, ref, key, at, lot_key in rows:
        if kind in ("expire", "activate"):
            key = f"{kind}:{lot_key}"
        out[(kind, _d(amount), oid, ref, key, at, lot_key)] += 1
    return out


def lot_rows(engine: Engine) -> Counter[tuple[Any, ...]]:
    lot = PointsLotRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                lot.lot_key,
                lot.earned,
                lot.remaining,
                lot.earned_at,
                lot.expires_at,
                lot.order_id,
                lot.available_at,
            )
        ).all()
    return Counter((k, _d(e), _d(r), at, exp, o, av) for k, e, r, at, exp, o, av in rows)


class LedgerMachine(RuleBasedStateMachine):
    engine: Engine
    tmp: Path
    policy: str

    orders = Bundle("orders")
    redemptions = Bundle("redemptions")

    def __init__(self) -> None:
        super().__init__()
        wipe(self.engine)
        deploy_dir(self.engine, programme(self.tmp, self.policy))
        self.clock = START
        self.world = World()
        self.n = 0
        self.player = Player(self.engine, self.tmp, chunk=3)

    # -- operations --------------------------------------------------------------------

    def _event(self, type_: str, **props: Any) -> None:
        self.n += 1
        self.clock += timedelta(minutes=7)
        row = {
            "event_id": f"x{self.n}",
            "customer_id": MEMBER,
            "type": type_,
            "occurred_at": self.clock.isoformat(),
            "properties": props,
        }
        self.world.log.append(("event", row))
        self.player.event(row)

    @rule(target=orders, cents=st.integers(min_value=1, max_value=400_000))
    def purchase(self, cents: int) -> str:
        amount = Decimal(cents) / 100
        oid = f"SO{self.n + 1}"
        self.world.orders[oid] = Order(oid, amount)
        self._event("purchase", amount=float(amount), order_id=oid)
        return oid

    @rule(order=orders, share=st.sampled_from([None, Decimal("0.25"), Decimal("0.5"), Decimal(1)]))
    def refund(self, order: str, share: Decimal | None) -> None:
        o = self.world.orders[order]
        if share is None:
            o.refunded = o.amount
            self._event("refund", order_id=order)
            return
        money = (o.amount * share).quantize(CENT)
        o.refunded = min(o.refunded + money, o.amount)
        self._event("refund", order_id=order, amount=float(money))

    @rule(order=consumes(orders))
    def refund_in_full(self, order: str) -> None:
        self.refund(order, None)

    def _now(self) -> datetime:
        self.n += 1
        self.clock += timedelta(minutes=7)
        return self.clock

    @rule(target=redemptions, reward=st.sampled_from(["mug", "tote", "spa"]))
    def redeem(self, reward: str) -> str:
        key = f"r{self.n + 1}"
        at = self._now()
        self.world.log.append(("redeem", (reward, key, at)))
        # a refused redemption leaves a key that reverses nothing: the reversal says so
        return key if self.player.redeem(reward, key, at) else ""

    @rule(key=consumes(redemptions))
    def reverse(self, key: str) -> None:
        if not key:
            return
        at = self._now()
        self.world.log.append(("reverse", (key, at)))
        self.player.reverse(key, at)

    @rule(cents=st.integers(min_value=-200_000, max_value=300_000).filter(bool), q=st.booleans())
    def adjust(self, cents: int, q: bool) -> None:
        amount = Decimal(cents) / 100
        key = f"a{self.n + 1}"
        at = self._now()
        self.world.log.append(("adjust", (amount, q, key, at)))
        self.player.adjust(amount, q, key, at)

    @rule(days=st.integers(min_value=0, max_value=40))
    def tick(self, days: int) -> None:
        self.clock += timedelta(days=days, hours=1)
        self.world.log.append(("tick", self.clock))
        self.player.tick(self.clock)

    # -- invariants, on the raw rows ----------------------------------------------------

    @invariant()
    def ledger_holds(self) -> None:
        self.player.flush()
        check(self.engine, self.world, self.policy, self.clock)
        totals_add_up(self.player.rt, self.clock)

    def teardown(self) -> None:
        self.player.flush()
        expected_ledger, expected_lots = ledger_rows(self.engine), lot_rows(self.engine)
        wipe(self.engine)
        deploy_dir(self.engine, programme(self.tmp, self.policy))
        again = Player(self.engine, self.tmp, chunk=1)
        for op, arg in self.world.log:
            again.play(op, arg)
        again.flush()
        assert ledger_rows(self.engine) == expected_ledger
        assert lot_rows(self.engine) == expected_lots


def check(engine: Engine, world: World, policy: str, now: datetime) -> None:
    led, lot, ref = PointsLedgerRow, PointsLotRow, OrderRefundRow
    with engine.connect() as conn:
        entries = conn.execute(select(led.kind, led.amount, led.order_id)).all()
        lots = conn.execute(
            select(lot.remaining, lot.earned, lot.expires_at, lot.available_at, lot.order_id)
        ).all()
        debt = conn.execute(
            select(CustomerRow.points_debt).where(CustomerRow.customer_id == MEMBER)
        ).scalar()
        refunds = conn.execute(select(ref.order_id, ref.points)).all()
        profile = load_profile(conn, MEMBER, at=now) if debt is not None else None
    debt = _d(debt or 0)
    amounts = [(k, _d(a), o) for k, a, o in entries]
    assert all(a != 0 for _k, a, _o in amounts), "an entry of nothing"
    moved = sum((a for k, a, _o in amounts if k != "activate"), Decimal(0))
    held = sum((_d(r) for r, *_ in lots), Decimal(0))
    assert held - moved == debt, (held, moved, debt)
    assert debt >= 0
    if policy == "forbid":
        assert all(_d(r) >= 0 for r, *_ in lots)
    # each order: clawed back exactly its points * the share refunded, never more
    earned: dict[str | None, Decimal] = Counter()  # type: ignore[assignment]
    for kind, amount, oid in amounts:
        if kind in ("earn", "pending") and oid is not None:
            earned[oid] += amount
    clawed: dict[str | None, Decimal] = Counter()  # type: ignore[assignment]
    for kind, amount, oid in amounts:
        if kind == "clawback":
            clawed[oid] -= amount
    recorded: dict[str | None, Decimal] = Counter()  # type: ignore[assignment]
    for oid, points in refunds:
        recorded[oid] += _d(points)
    for oid, order in world.orders.items():
        points = earned.get(oid, Decimal(0))
        share = min(order.refunded, order.amount) / order.amount
        due = (points * share).quantize(CENT, rounding=ROUND_HALF_UP)
        got = clawed.get(oid, Decimal(0))
        assert got == due == recorded.get(oid, Decimal(0)), (oid, order, points, got, due)
        assert got <= points
    # what can be spent now: lots past their return window and not expired
    spendable = sum(
        (
            _d(r)
            for r, _e, exp, av, _o in lots
            if _d(r) > 0 and (exp is None or exp > now) and (av is None or av <= now)
        ),
        Decimal(0),
    )
    if profile is not None:
        assert _d(profile.points_balance) == spendable
        assert _d(profile.points_debt) == debt


def totals_add_up(rt: Runtime, now: datetime) -> None:
    """The statement's totals (crmflow's own reading) add up, and agree with the rows."""
    t = points_service.statement(rt, MEMBER, ledger=0, at=now).totals
    left = _d(t.active) + _d(t.pending) + _d(t.spent) + _d(t.expired) + _d(t.clawed_back)
    left += _d(t.debited) - _d(t.debt)
    assert left == _d(t.earned) + _d(t.credited), t


@pytest.mark.parametrize("policy", ["forbid", "allow"])
def test_the_ledger_keeps_its_identities_under_any_operations(
    engine: Engine, tmp_path: Path, policy: str
) -> None:
    machine = type(
        "Machine", (LedgerMachine,), {"engine": engine, "tmp": tmp_path, "policy": policy}
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=10,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
