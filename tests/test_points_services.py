"""Redemption, reversal and operator adjustments (crmflow/services/points.py) and the rewards
catalogue (crmflow/services/rewards.py), on SQLite and PostgreSQL: every refusal's text,
idempotent keys, reversal to the source lot and to a new lot after the nightly expiry,
coupons, stock, debt, and the totals' identity."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from crmflow.services import points, rewards
from crmflow.services.errors import Conflict, Invalid, NotFound, Refused
from crmflow.services.runtime import Runtime
from rules.models import Program
from rules.rewards import Reward, RewardsFile
from store.automations import qualifying_totals
from store.ingest import ensure_customers
from store.models import (
    CouponRow,
    CustomerRow,
    PointsLedgerRow,
    PointsLotRow,
    RedemptionRow,
    RewardRow,
)
from tests.api_helpers import make_settings
from tests.rules_helpers import deploy_dir

NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)

PROGRAM = """\
program: Points Test
welcome_tier: basic
tiers:
  - {name: basic, rank: 0, qualify: {metric: spend, threshold: 0}}
  - {name: silver, rank: 1, qualify: {metric: spend, threshold: 2000}}
  - {name: gold, rank: 2, qualify: {metric: spend, threshold: 8000}}
points:
  per_event_cap: 1000
  expiry: {policy: rolling, days: 365}
  pending_days: 7
  negative_balance: NEGATIVE
"""

RULES = """\
rules:
  - name: earn-on-purchase
    on: purchase
    then:
      - award_points: {amount: event.amount, earn_rate: true, reason: purchase}
"""


def deploy_program(engine: Engine, tmp: Path, negative: str = "forbid") -> Program:
    folder = tmp / f"pack-{negative}"
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    (folder / "program.yaml").write_text(PROGRAM.replace("NEGATIVE", negative))
    (folder / "rules" / "points.yaml").write_text(RULES)
    deploy_dir(engine, folder / "rules")
    from crmflow.processing import active_pack

    with engine.connect() as conn:
        pack = active_pack(conn)
    assert pack is not None
    return pack.program


@pytest.fixture
def rt(engine: Engine, tmp_path: Path) -> Iterator[Runtime]:
    yield Runtime(make_settings(tmp_path), engine)


def member(engine: Engine, customer_id: str = "C1", tier: str | None = None) -> None:
    with engine.begin() as conn:
        ensure_customers(conn, {customer_id}, NOW - timedelta(days=400))
        conn.execute(
            update(CustomerRow)
            .where(CustomerRow.customer_id == customer_id)
            .values(tier=tier, lifecycle_stage="member", is_stub=False)
        )


def lot(
    engine: Engine,
    points_: int | str,
    *,
    customer_id: str = "C1",
    earned_days_ago: int = 30,
    expires_in_days: int | None = 300,
    available_in_days: int | None = None,
) -> int:
    """A lot (with its `earn` entry, as the rules write them); its id."""
    amount = Decimal(str(points_))
    earned_at = NOW - timedelta(days=earned_days_ago)
    with engine.begin() as conn:
        lot_id = conn.execute(
            insert(PointsLotRow)
            .values(
                customer_id=customer_id,
                earned=amount,
                remaining=amount,
                earned_at=earned_at,
                expires_at=None
                if expires_in_days is None
                else NOW + timedelta(days=expires_in_days),
                available_at=None
                if available_in_days is None
                else NOW + timedelta(days=available_in_days),
                source="earn-on-purchase",
            )
            .returning(PointsLotRow.id)
        ).scalar_one()
        conn.execute(
            insert(PointsLedgerRow).values(
                customer_id=customer_id,
                lot_id=lot_id,
                kind="earn" if available_in_days is None else "pending",
                amount=amount,
                at=earned_at,
                reason="purchase",
                dedupe_key=f"earn:test-{lot_id}",
                qualifying=True,
            )
        )
    return int(lot_id)


def catalogue(rt: Runtime, *items: dict[str, Any]) -> None:
    rewards.apply(rt, RewardsFile(rewards=[Reward.model_validate(i) for i in items]))


COFFEE = {
    "id": "coffee",
    "name": "Coffee voucher",
    "kind": "coupon",
    "cost": 500,
    "stock": 10,
    "per_member_limit": 2,
    "coupon": {"value": 30, "valid_days": 30, "code_prefix": "CAFE"},
}
MUG = {"id": "mug", "name": "Mug", "kind": "gift", "cost": 300}
LOUNGE = {
    "id": "lounge",
    "name": "Airport lounge",
    "kind": "service",
    "cost": 800,
    "min_tier": "gold",
}


def remaining(engine: Engine, *lot_ids: int) -> list[Decimal]:
    with engine.connect() as conn:
        found = dict(
            conn.execute(
                select(PointsLotRow.id, PointsLotRow.remaining).where(PointsLotRow.id.in_(lot_ids))
            ).all()
        )
    return [Decimal(str(found[i])).quantize(Decimal("0.01")) for i in lot_ids]


def ledger(engine: Engine, kind: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        query = select(PointsLedgerRow).order_by(PointsLedgerRow.id)
        if kind:
            query = query.where(PointsLedgerRow.kind == kind)
        return list(conn.execute(query))


def version(engine: Engine, customer_id: str = "C1") -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(CustomerRow.state_version).where(CustomerRow.customer_id == customer_id)
            ).scalar_one()
        )


def debt(engine: Engine, customer_id: str = "C1") -> Decimal:
    with engine.connect() as conn:
        value = conn.execute(
            select(CustomerRow.points_debt).where(CustomerRow.customer_id == customer_id)
        ).scalar_one()
    return Decimal(str(value)).quantize(Decimal("0.01"))


def check_identity(rt: Runtime, customer_id: str = "C1") -> points.PointsTotals:
    """The totals add up, and the lots against the ledger leave exactly the debt."""
    t = points.statement(rt, customer_id, at=NOW).totals
    left = t.active + t.pending + t.spent + t.expired + t.clawed_back + t.debited - t.debt
    assert round(left, 2) == round(t.earned + t.credited, 2), t
    with rt.engine.connect() as conn:
        lots = conn.execute(
            select(func.coalesce(func.sum(PointsLotRow.remaining), 0)).where(
                PointsLotRow.customer_id == customer_id
            )
        ).scalar_one()
        entries = conn.execute(
            select(func.coalesce(func.sum(PointsLedgerRow.amount), 0)).where(
                PointsLedgerRow.customer_id == customer_id, PointsLedgerRow.kind != "activate"
            )
        ).scalar_one()
    assert round(float(lots) - float(entries), 2) == round(t.debt, 2)
    return t


# --------------------------------------------------------------------------- redeem


def test_a_redemption_takes_the_first_to_expire_first(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    late = lot(engine, 400, expires_in_days=300)
    soon = lot(engine, 200, expires_in_days=10, earned_days_ago=355)
    never = lot(engine, 1000, expires_in_days=None)
    catalogue(rt, MUG)
    before = version(engine)
    done = points.redeem(rt, "C1", "mug", key="till-1", by="Li Na", now=NOW)
    assert (done.status, done.cost, done.code, done.by, done.balance) == (
        "done",
        300,
        None,
        "Li Na",
        1300,
    )
    assert remaining(engine, soon, late, never) == [Decimal(0), Decimal(300), Decimal(1000)]
    rows = [
        (r.lot_id, float(r.amount), r.actor, r.ref, r.dedupe_key) for r in ledger(engine, "redeem")
    ]
    assert rows == [
        (soon, -200.0, "Li Na", "till-1", "redeem:till-1:0"),
        (late, -100.0, "Li Na", "till-1", "redeem:till-1:1"),
    ]
    assert version(engine) == before + 1
    assert rewards.list_rewards(rt, now=NOW)[0].issued == 1
    t = check_identity(rt)
    assert (t.balance, t.spent) == (1300, 300)


def test_the_same_key_again_is_the_same_redemption_and_another_content_a_conflict(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    member(engine, "C2")
    lot(engine, 1000)
    catalogue(rt, MUG, {**MUG, "id": "cup", "name": "Cup"})
    first = points.redeem(rt, "C1", "mug", key="k1", by="till", now=NOW)
    again = points.redeem(rt, "C1", "mug", key="k1", by="till", now=NOW)
    assert again == first
    assert len(ledger(engine, "redeem")) == 1
    with pytest.raises(Conflict, match="key 'k1' was used for another redemption"):
        points.redeem(rt, "C1", "cup", key="k1", by="till", now=NOW)
    with pytest.raises(Conflict, match=r"\(customer C1, reward mug\)"):
        points.redeem(rt, "C2", "mug", key="k1", by="till", now=NOW)
    assert rewards.list_rewards(rt, now=NOW)[1].issued == 1


def test_every_refusal_says_why_and_changes_nothing(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    member(engine, "G", tier="gold")
    lot(engine, 350)
    lot(engine, 120, available_in_days=3)  # pending: inside the return window
    lot(engine, 5000, customer_id="G")
    catalogue(
        rt,
        COFFEE,
        MUG,
        LOUNGE,
        {**MUG, "id": "later", "valid_from": "2026-12-01T00:00:00+08:00"},
        {**MUG, "id": "over", "valid_to": "2026-11-01T00:00:00Z"},
        {**MUG, "id": "scarce", "stock": 0},
        {**MUG, "id": "once", "per_member_limit": 1, "cost": 10},
        {**MUG, "id": "gone"},
    )
    catalogue(
        rt,
        COFFEE,
        MUG,
        LOUNGE,
        {**MUG, "id": "later", "valid_from": "2026-12-01T00:00:00+08:00"},
        {**MUG, "id": "over", "valid_to": "2026-11-01T00:00:00Z"},
        {**MUG, "id": "scarce", "stock": 0},
        {**MUG, "id": "once", "per_member_limit": 1, "cost": 10},
    )  # `gone` withdrawn
    points.redeem(rt, "G", "once", key="g-once", by=None, now=NOW)
    before = (version(engine), len(ledger(engine)))

    def refused(customer: str, reward: str) -> str:
        with pytest.raises(Refused) as info:
            points.redeem(rt, customer, reward, key=f"k-{customer}-{reward}", by=None, now=NOW)
        return str(info.value)

    assert refused("C1", "gone") == "reward gone is withdrawn"
    assert refused("C1", "later") == "reward later is not available before 2026-11-30 16:00 UTC"
    assert refused("C1", "over") == "reward over ended on 2026-11-01 00:00 UTC"
    assert refused("C1", "lounge") == "reward lounge needs tier gold; the member is basic"
    assert refused("G", "once") == "limit reached: once redeemed 1 times (limit 1)"
    assert refused("C1", "coffee") == "not enough points: 350 available (120 pending), 500 needed"
    assert refused("G", "scarce") == "out of stock: scarce"
    # a refusal rolls back everything, the customer's bump included
    assert (version(engine), len(ledger(engine))) == before
    with pytest.raises(NotFound, match="no customer with id 'nobody'"):
        points.redeem(rt, "nobody", "mug", key="k", by=None, now=NOW)
    with pytest.raises(NotFound, match="no reward with id 'nothing'"):
        points.redeem(rt, "C1", "nothing", key="k", by=None, now=NOW)
    with pytest.raises(Invalid, match="key: must be 1 to 200 characters"):
        points.redeem(rt, "C1", "mug", key="k" * 201, by=None, now=NOW)
    with pytest.raises(Invalid, match="NUL"):
        points.redeem(rt, "C1", "mug", key="k\x00", by=None, now=NOW)
    # silver is below gold too; gold itself may
    assert points.redeem(rt, "G", "lounge", key="g-lounge", by=None, now=NOW).status == "done"


def test_a_coupon_reward_issues_a_code_from_the_key_and_a_reversal_voids_it(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    lot(engine, 1000)
    catalogue(rt, COFFEE)
    done = points.redeem(rt, "C1", "coffee", key="order-77", by="till", now=NOW)
    expected = "CAFE-" + hashlib.blake2b(b"order-77").hexdigest()[:8]
    assert done.code == expected
    with engine.connect() as conn:
        coupon = conn.execute(select(CouponRow).where(CouponRow.code == expected)).one()
    assert (coupon.customer_id, float(coupon.value), coupon.voided_at) == ("C1", 30.0, None)
    assert coupon.expires_at == NOW + timedelta(days=30)
    later = NOW + timedelta(hours=1)
    back = points.reverse(rt, "order-77", by="manager", now=later)
    assert (back.status, back.reversed_by, back.reversed_at, back.code) == (
        "reversed",
        "manager",
        later,
        expected,
    )
    with engine.connect() as conn:
        voided = conn.execute(
            select(CouponRow.voided_at).where(CouponRow.code == expected)
        ).scalar_one()
    assert voided == later


def test_a_reversal_returns_the_points_to_their_lots_and_the_stock(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    a = lot(engine, 200, expires_in_days=10)
    b = lot(engine, 600, expires_in_days=200)
    catalogue(rt, {**COFFEE, "stock": 1})
    points.redeem(rt, "C1", "coffee", key="r1", by="till", now=NOW)
    assert remaining(engine, a, b) == [Decimal(0), Decimal(300)]
    assert rewards.list_rewards(rt, now=NOW)[0].stock_left == 0
    before = version(engine)
    back = points.reverse(rt, "r1", by="manager", now=NOW)
    assert back.balance == 800
    assert remaining(engine, a, b) == [Decimal(200), Decimal(600)]
    assert version(engine) == before + 1
    rows = [
        (r.lot_id, float(r.amount), r.actor, r.dedupe_key)
        for r in ledger(engine, "redeem_reversal")
    ]
    assert rows == [(a, 200.0, "manager", "reverse:r1:0"), (b, 300.0, "manager", "reverse:r1:1")]
    assert rewards.list_rewards(rt, now=NOW)[0].stock_left == 1
    with engine.connect() as conn:
        status = conn.execute(select(RedemptionRow.status).where(RedemptionRow.key == "r1"))
        assert status.scalar_one() == "reversed"
    with pytest.raises(Refused) as info:
        points.reverse(rt, "r1", by="manager", now=NOW)
    assert str(info.value) == "redemption r1 is already reversed (at 2026-11-20 02:00 UTC)"
    with pytest.raises(NotFound, match="no redemption with key 'nope'"):
        points.reverse(rt, "nope", by="manager", now=NOW)
    # the stock it gave back can be issued again
    points.redeem(rt, "C1", "coffee", key="r2", by="till", now=NOW)
    t = check_identity(rt)
    assert (t.spent, t.balance) == (500, 300)


def test_a_reversal_after_the_nightly_expiry_makes_a_new_lot_with_the_old_dates(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    old = lot(engine, 300, expires_in_days=2, earned_days_ago=363)
    keep = lot(engine, 500, expires_in_days=200)
    catalogue(rt, MUG)
    points.redeem(rt, "C1", "mug", key="r1", by="till", now=NOW)
    assert remaining(engine, old, keep) == [Decimal(0), Decimal(500)]
    # three days later the nightly run has expired `old`: it has nothing left, so its
    # `expire` entry is for 0 points — a refill now would never expire
    later = NOW + timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLedgerRow).values(
                customer_id="C1",
                lot_id=old,
                kind="expire",
                amount=Decimal("-0.00"),
                at=NOW + timedelta(days=2),
                reason="points expired",
                dedupe_key=f"expire:{old}",
            )
        )
    points.reverse(rt, "r1", by="manager", now=later)
    assert remaining(engine, old) == [Decimal(0)]
    (entry,) = ledger(engine, "redeem_reversal")
    assert entry.lot_id not in (old, keep)
    with engine.connect() as conn:
        new, original = (
            conn.execute(select(PointsLotRow).where(PointsLotRow.id == i)).one()
            for i in (entry.lot_id, old)
        )
    assert (float(new.earned), float(new.remaining)) == (300.0, 300.0)
    assert (new.earned_at, new.expires_at) == (original.earned_at, original.expires_at)
    assert new.lot_key.startswith("rev:") and len(new.lot_key) <= 40
    # the returned points are past their date: expired, not spendable
    t = points.statement(rt, "C1", at=later).totals
    assert (t.active, t.expired, t.spent) == (500, 300, 0)


def test_a_reversal_pays_the_debt_first(engine: Engine, rt: Runtime, tmp_path: Path) -> None:
    deploy_program(engine, tmp_path, "allow")
    member(engine)
    a = lot(engine, 300)
    catalogue(rt, MUG)
    points.redeem(rt, "C1", "mug", key="r1", by="till", now=NOW)
    points.adjust(rt, "C1", -100, reason="damaged goods", by="ops", key="d1", now=NOW)
    assert debt(engine) == 100
    points.reverse(rt, "r1", by="ops", now=NOW)
    assert debt(engine) == 0
    assert remaining(engine, a) == [Decimal(200)]
    t = check_identity(rt)
    assert (t.balance, t.debt, t.debited) == (200, 0, 100)


# --------------------------------------------------------------------------- adjust


def test_a_credit_is_never_capped_and_qualifies_only_when_asked(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    program = deploy_program(engine, tmp_path)
    assert program.points.per_event_cap == 1000
    member(engine)
    done = points.adjust(rt, "C1", 2500, reason="goodwill: late delivery", by="Wang Fang", now=NOW)
    assert (done.amount, done.qualifying, done.balance, done.by) == (2500, False, 2500, "Wang Fang")
    (entry,) = ledger(engine, "adjust_credit")
    assert (float(entry.amount), entry.qualifying, entry.actor, entry.reason) == (
        2500.0,
        False,
        "Wang Fang",
        "goodwill: late delivery",
    )
    assert entry.ref == done.key and entry.dedupe_key == f"adjust:{done.key}:0"
    with engine.connect() as conn:
        credit = conn.execute(select(PointsLotRow).where(PointsLotRow.id == entry.lot_id)).one()
        _, earned = qualifying_totals(conn, program, ["C1"], NOW + timedelta(seconds=1))
    # never pending, expiring under the programme's policy from now
    assert (float(credit.remaining), credit.available_at) == (2500.0, None)
    assert credit.expires_at == NOW + timedelta(days=365)
    assert "C1" not in earned or not earned["C1"]
    points.adjust(rt, "C1", 2500, reason="migration", by="ops", qualifying=True, now=NOW)
    flags = sorted(bool(r.qualifying) for r in ledger(engine, "adjust_credit"))
    assert flags == [False, True]
    with engine.connect() as conn:
        _, earned = qualifying_totals(conn, program, ["C1"], NOW + timedelta(seconds=1))
    assert float(earned["C1"]) == 2500  # the qualifying one only
    t = check_identity(rt)
    assert (t.credited, t.earned, t.balance) == (5000, 0, 5000)


def test_a_debit_takes_first_to_expire_first_and_a_short_one_is_refused_under_forbid(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path, "forbid")
    member(engine)
    a = lot(engine, 100, expires_in_days=5)
    b = lot(engine, 400, expires_in_days=50)
    lot(engine, 80, available_in_days=2)  # pending: not spendable
    done = points.adjust(rt, "C1", "-150.50", reason="fraud check", by="ops", now=NOW)
    assert (done.amount, done.balance, done.debt) == (-150.5, 349.5, 0)
    assert remaining(engine, a, b) == [Decimal(0), Decimal("349.50")]
    before = (version(engine), len(ledger(engine)))
    with pytest.raises(Refused) as info:
        points.adjust(rt, "C1", -400, reason="fraud check", by="ops", now=NOW)
    assert str(info.value) == "not enough points: 349.50 available, 400 asked"
    assert (version(engine), len(ledger(engine))) == before
    t = check_identity(rt)
    assert (t.debited, t.pending) == (150.5, 80)


def test_a_short_debit_under_allow_is_a_debt_that_the_next_credit_pays_first(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path, "allow")
    member(engine)
    a = lot(engine, 100)
    done = points.adjust(rt, "C1", -250, reason="chargeback", by="ops", key="cb-1", now=NOW)
    assert (done.balance, done.debt) == (-150, 150)
    assert remaining(engine, a) == [Decimal(0)]
    rows = [(r.lot_id, float(r.amount), r.dedupe_key) for r in ledger(engine, "adjust_debit")]
    assert rows == [(a, -100.0, "adjust:cb-1:0"), (None, -150.0, "adjust:cb-1:debt")]
    assert debt(engine) == 150
    assert check_identity(rt).balance == -150
    # a redemption needs a positive balance
    catalogue(rt, MUG)
    with pytest.raises(Refused, match="not enough points: 0 available, 300 needed"):
        points.redeem(rt, "C1", "mug", key="m1", by=None, now=NOW)
    credit = points.adjust(rt, "C1", 200, reason="goodwill", by="ops", now=NOW)
    assert (credit.debt, credit.balance) == (0, 50)
    (entry,) = ledger(engine, "adjust_credit")
    assert float(entry.amount) == 200.0
    assert remaining(engine, entry.lot_id) == [Decimal(50)]
    t = check_identity(rt)
    assert (t.balance, t.debt, t.credited, t.debited) == (50, 0, 200, 250)


def test_adjustments_are_idempotent_by_key_and_check_their_input(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    first = points.adjust(rt, "C1", 300, reason="goodwill", by="ops", key="a1", now=NOW)
    again = points.adjust(rt, "C1", 300, reason="goodwill", by="ops", key="a1", now=NOW)
    assert again == first
    assert len(ledger(engine, "adjust_credit")) == 1
    with pytest.raises(Conflict, match="key 'a1' was used for another adjustment"):
        points.adjust(rt, "C1", 400, reason="goodwill", by="ops", key="a1", now=NOW)
    with pytest.raises(Conflict):
        points.adjust(rt, "C1", 300, reason="other", by="ops", key="a1", now=NOW)
    with pytest.raises(NotFound, match="no customer with id 'nobody'"):
        points.adjust(rt, "nobody", 10, reason="x", by="ops", now=NOW)
    for amount, message in [
        (0, "amount: must be a number other than 0"),
        ("1.005", "amount: at most two decimals"),
        ("2e9", "amount: at most 1,000,000,000 either way"),
        ("abc", "amount: 'abc' is not a number"),
        ("nan", "amount: must be a number other than 0"),
    ]:
        with pytest.raises(Invalid) as info:
            points.adjust(rt, "C1", amount, reason="x", by="ops", now=NOW)  # type: ignore[arg-type]
        assert str(info.value) == message
    with pytest.raises(Invalid, match="reason: must be 1 to 500 characters"):
        points.adjust(rt, "C1", 10, reason="", by="ops", now=NOW)
    with pytest.raises(Invalid, match="reason: must not contain a NUL character"):
        points.adjust(rt, "C1", 10, reason="a\x00b", by="ops", now=NOW)
    with pytest.raises(Invalid, match="key: must be 1 to 200 characters"):
        points.adjust(rt, "C1", 10, reason="x", by="ops", key="k" * 201, now=NOW)


# --------------------------------------------------------------------------- rewards


def test_applying_a_catalogue_upserts_withdraws_and_keeps_what_was_issued(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    lot(engine, 5000)
    first = rewards.apply(rt, RewardsFile.model_validate({"rewards": [COFFEE, MUG]}))
    assert (first.created, first.updated, first.unchanged, first.withdrawn) == (
        ["coffee", "mug"],
        [],
        [],
        [],
    )
    points.redeem(rt, "C1", "coffee", key="c1", by=None, now=NOW)
    dry = rewards.apply(
        rt,
        RewardsFile.model_validate({"rewards": [{**COFFEE, "cost": 450}, LOUNGE]}),
        dry_run=True,
    )
    assert (dry.dry_run, dry.created, dry.updated, dry.withdrawn) == (
        True,
        ["lounge"],
        ["coffee"],
        ["mug"],
    )
    assert [r.id for r in rewards.list_rewards(rt)] == ["coffee", "mug"]  # nothing changed
    rewards.apply(rt, RewardsFile.model_validate({"rewards": [{**COFFEE, "cost": 450}, LOUNGE]}))
    listed = {r.id: r for r in rewards.list_rewards(rt, now=NOW)}
    assert sorted(listed) == ["coffee", "lounge"]
    coffee = listed["coffee"]
    assert (coffee.cost, coffee.issued, coffee.stock_left, coffee.status) == (
        450,
        1,
        9,
        "available",
    )
    assert coffee.coupon is not None and coffee.coupon.code_prefix == "CAFE"
    everything = {r.id: r for r in rewards.list_rewards(rt, withdrawn=True, now=NOW)}
    assert (everything["mug"].active, everything["mug"].status) == (False, "withdrawn")
    again = rewards.apply(
        rt, RewardsFile.model_validate({"rewards": [{**COFFEE, "cost": 450}, LOUNGE, MUG]})
    )
    assert (again.unchanged, again.updated, again.created) == (["coffee", "lounge"], ["mug"], [])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RewardRow)).scalar_one() == 3


def test_tiers_are_checked_against_the_active_programme(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    bad = RewardsFile.model_validate({"rewards": [{**LOUNGE, "min_tier": "diamond"}]})
    with pytest.raises(rewards.RewardsInvalid, match="no programme"):
        rewards.apply(rt, RewardsFile.model_validate({"rewards": [LOUNGE]}))
    deploy_program(engine, tmp_path)
    with pytest.raises(rewards.RewardsInvalid) as info:
        rewards.validate(rt, bad)
    assert str(info.value) == (
        "rewards.0.min_tier: unknown tier 'diamond'; the tiers are basic, silver, gold"
    )
    summary = rewards.validate(rt, RewardsFile.model_validate({"rewards": [LOUNGE]}))
    assert summary.rewards == ["lounge"] and summary.program is not None
    assert summary.program.startswith("rules version ")
    # a file is checked against the programme beside it, with file and line
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "program.yaml").write_text(PROGRAM.replace("NEGATIVE", "allow"))
    path = tmp_path / "cat" / "rewards.yaml"
    path.write_text("rewards:\n  - {id: x, name: X, kind: gift, cost: 5, min_tier: diamond}\n")
    with pytest.raises(rewards.RewardsInvalid) as info:
        rewards.validate(None, path)
    assert [str(e) for e in info.value.errors] == [
        f"{path}:2: rewards.0.min_tier: unknown tier 'diamond'; the tiers are basic, silver, gold"
    ]
    assert rewards.json_schema()["title"] == "crmflow rewards file"


def test_two_members_racing_for_one_key_get_one_redemption_and_one_conflict(
    engine: Engine, rt: Runtime, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    for who in ("C1", "C2"):
        member(engine, who)
        lot(engine, 1000, customer_id=who)
    catalogue(rt, MUG)
    outcomes: list[str] = []

    def go(who: str) -> None:
        try:
            points.redeem(rt, who, "mug", key="shared", by=None, now=NOW)
            outcomes.append("done")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=go, args=(who,)) for who in ("C1", "C2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "done"]
    assert len(ledger(engine, "redeem")) == 1


def test_a_key_taken_between_look_up_and_insert_is_found_on_the_second_run(
    engine: Engine, rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made certain: the first run's look-up misses the other request's row."""
    deploy_program(engine, tmp_path)
    for who in ("C1", "C2"):
        member(engine, who)
        lot(engine, 1000, customer_id=who)
    catalogue(rt, MUG)
    points.redeem(rt, "C1", "mug", key="shared", by=None, now=NOW)
    points.adjust(rt, "C1", 5, reason="x", by="ops", key="adj", now=NOW)
    real_context, real_adjustment = points.store.redeem_context, points._stored_adjustment
    misses = {"redemption": 1, "adjustment": 1}

    def context(conn: Any, *args: str) -> Any:
        found = real_context(conn, *args)
        if misses["redemption"]:
            misses["redemption"] -= 1
            found.known_key = False
        return found

    def adjustment(conn: Any, key: str) -> Any:
        if misses["adjustment"]:
            misses["adjustment"] -= 1
            return None
        return real_adjustment(conn, key)

    monkeypatch.setattr(points.store, "redeem_context", context)
    monkeypatch.setattr(points, "_stored_adjustment", adjustment)
    with pytest.raises(Conflict, match="was used for another redemption"):
        points.redeem(rt, "C2", "mug", key="shared", by=None, now=NOW)
    again = points.adjust(rt, "C1", 5, reason="x", by="ops", key="adj", now=NOW)
    assert again.amount == 5
    assert misses == {"redemption": 0, "adjustment": 0}
    assert len(ledger(engine, "redeem")) == 1 and len(ledger(engine, "adjust_credit")) == 1
    check_identity(rt, "C2")


def test_the_driver_stores_what_the_orm_stores(engine: Engine) -> None:
    """The redemption's statements bypass SQLAlchemy's types: the stored values must be the
    ones the ORM writes (times, numbers, flags), byte for byte."""
    from sqlalchemy import text

    from store import points as store

    member(engine)
    at = datetime(2026, 11, 20, 10, 0, 0, 5, tzinfo=UTC).astimezone()
    row = {
        "customer_id": "C1",
        "lot_id": None,
        "kind": "adjust_debit",
        "amount": Decimal("-12.50"),
        "at": at,
        "event_id": None,
        "reason": "r",
        "dedupe_key": "",
        "order_id": None,
        "qualifying": True,
        "actor": "a",
        "ref": "k",
    }
    with engine.begin() as conn:
        conn.execute(insert(PointsLedgerRow).values(**{**row, "dedupe_key": "orm"}))
        store.add_ledger(conn, [{**row, "dedupe_key": "driver"}])
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT dedupe_key, CAST(at AS VARCHAR), CAST(amount AS VARCHAR), "
                "CAST(qualifying AS VARCHAR) FROM points_ledger ORDER BY dedupe_key"
            )
        ).all()
        read = conn.execute(select(PointsLedgerRow.at, PointsLedgerRow.amount)).all()
    (d_key, *driver), (o_key, *orm) = found
    assert (d_key, o_key) == ("driver", "orm")
    assert driver == orm
    assert {r.at for r in read} == {at} and {float(r.amount) for r in read} == {-12.5}
