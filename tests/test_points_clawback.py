"""Refunds claw back what their order earned, on SQLite and PostgreSQL: the issue's capped
order, partial refunds, a debt under `forbid`, a negative balance under `allow`, a pending lot
cancelled inside the return window, spend lowered at the purchase's time, and orders of an
earlier import."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from crmflow.processing import active_pack, evaluate_facts
from store.models import AuditRow, CustomerRow, OrderRefundRow, PointsLedgerRow, PointsLotRow
from store.profiles import load_profile
from tests.rules_helpers import PROGRAM, deploy_dir, event, import_rows

EARN = """
rules:
  - name: earn
    on: purchase
    then: [{award_points: {amount: event.amount, multiplier: none}}]
  - name: spend
    on: points_redeemed
    then: [{deduct_points: {amount: event.amount, reason: voucher}}]
"""
LATER = datetime(2026, 6, 1, tzinfo=UTC)


def programme(tmp: Path, **points: Any) -> Path:
    """A rules folder: the example programme with a per-event cap of 1,000 and `points`."""
    text = PROGRAM.replace("per_event_cap: 50000", "per_event_cap: 1000")
    for key, value in points.items():
        text = text.replace(f"  {key}: ", f"  {key}: {value}  # was: ", 1)
    d = tmp / "rules"
    d.mkdir(parents=True, exist_ok=True)
    (tmp / "program.yaml").write_text(text)
    (d / "rules.yaml").write_text(EARN)
    return d


def ledger(engine: Engine, customer: str) -> list[tuple[str, float, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(PointsLedgerRow.kind, PointsLedgerRow.amount, PointsLedgerRow.order_id)
            .where(PointsLedgerRow.customer_id == customer)
            .order_by(PointsLedgerRow.id)
        ).all()
    return [(k, float(a), o) for k, a, o in rows]


def debt(engine: Engine, customer: str) -> float:
    with engine.connect() as conn:
        value = conn.execute(
            select(CustomerRow.points_debt).where(CustomerRow.customer_id == customer)
        ).scalar_one()
    return float(value)


def skipped(engine: Engine, event_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            select(AuditRow.skipped).where(AuditRow.event_id == event_id, AuditRow.rule == "refund")
        ).scalar_one()


def buy(n: int, order: str, amount: float, day: int, customer: str = "A") -> dict[str, Any]:
    return event(n, customer, at=f"2026-01-{day:02d}T10:00:00+00:00", amount=amount, order_id=order)


def refund(n: int, order: str | None, day: int, amount: float | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {} if order is None else {"order_id": order}
    if amount is not None:
        props["amount"] = amount
    return event(n, "A", "refund", at=f"2026-01-{day:02d}T10:00:00+00:00", **props)


@pytest.mark.parametrize("policy", ["forbid", "allow"])
def test_a_refund_claws_back_the_orders_points_not_its_amount(
    engine: Engine, tmp_path: Path, policy: str
) -> None:
    deploy_dir(engine, programme(tmp_path, negative_balance=policy))
    rows = [
        buy(1, "SO1", 3000.0, 1),  # capped: earns 1,000
        event(2, "A", "points_redeemed", at="2026-01-02T10:00:00+00:00", amount=800.0),
        refund(3, "SO1", 3),  # the whole order: 1,000 back, 800 of them already spent
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows)
    assert ledger(engine, "A") == [
        ("earn", 1000.0, "SO1"),
        ("adjust_debit", -800.0, None),
        ("clawback", -200.0, "SO1"),
        ("clawback", -800.0, "SO1"),  # beyond the balance: never skipped, a debt
    ]
    assert debt(engine, "A") == 800.0
    with engine.connect() as conn:
        p = load_profile(conn, "A", at=LATER)
    assert p is not None
    # the profile shows the spendable points and the debt apart (the points statement nets
    # them where the programme allows a negative balance)
    assert (p.points_balance, p.points_debt) == (0.0, 800.0)
    # the next earning settles the debt first
    import_rows(engine, tmp_path / "f.jsonl", [buy(4, "SO2", 500.0, 4)])
    assert debt(engine, "A") == 300.0
    with engine.connect() as conn:
        lot = conn.execute(
            select(PointsLotRow.earned, PointsLotRow.remaining).where(
                PointsLotRow.order_id == "SO2"
            )
        ).one()
    assert (float(lot.earned), float(lot.remaining)) == (500.0, 0.0)


def test_partial_refunds_claw_back_pro_rata_and_never_twice(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, programme(tmp_path))
    rows = [
        buy(1, "SO1", 3000.0, 1),
        buy(2, "SO2", 400.0, 2),
        refund(3, "SO1", 3, amount=1500.0),
        refund(4, "SO1", 4, amount=1500.0),
        refund(5, "SO1", 5, amount=10.0),
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=2)
    claws = [(a, o) for k, a, o in ledger(engine, "A") if k == "clawback"]
    assert claws == [(-500.0, "SO1"), (-500.0, "SO1")]
    assert skipped(engine, "e5") == "order SO1 is already clawed back in full"
    with engine.connect() as conn:
        refunds = conn.execute(
            select(OrderRefundRow.event_id, OrderRefundRow.amount, OrderRefundRow.points).order_by(
                OrderRefundRow.id
            )
        ).all()
    assert [(e, float(a), float(p)) for e, a, p in refunds] == [
        ("e3", 1500.0, 500.0),
        ("e4", 1500.0, 500.0),
        ("e5", 0.0, 0.0),  # the order is refunded in full already: no money left to refund
    ]
    with engine.connect() as conn:
        p = load_profile(conn, "A", at=LATER)
    assert p is not None and p.points_balance == 400.0  # SO2's lot is untouched


def test_a_refund_in_another_import_finds_its_order_in_the_store(
    engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, programme(tmp_path))
    import_rows(engine, tmp_path / "a.jsonl", [buy(1, "SO1", 600.0, 1), buy(2, "SO2", 300.0, 2)])
    import_rows(engine, tmp_path / "b.jsonl", [refund(3, "SO1", 3, amount=150.0)])
    import_rows(engine, tmp_path / "c.jsonl", [refund(4, "SO1", 4)])
    claws = [(a, o) for k, a, o in ledger(engine, "A") if k == "clawback"]
    assert claws == [(-150.0, "SO1"), (-450.0, "SO1")]
    with engine.connect() as conn:
        p = load_profile(conn, "A", at=LATER)
    assert p is not None and p.points_balance == 300.0


def test_refunds_without_an_order_or_points_say_why(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, programme(tmp_path))
    rows = [
        buy(1, "SO1", 0.5, 1),  # earns nothing (rounded down)
        refund(2, None, 2, amount=10.0),
        refund(3, "NOPE", 3),
        refund(4, "SO1", 4),
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows)
    assert skipped(engine, "e2") == "the refund names no order"
    assert skipped(engine, "e3") == "no purchase with order NOPE"
    assert skipped(engine, "e4") == "order SO1 earned no points"
    assert [k for k, _a, _o in ledger(engine, "A")] == []


def test_a_refund_inside_the_return_window_cancels_the_pending_lot(
    engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, programme(tmp_path, pending_days=14))
    rows = [
        event(0, "A", "points_redeemed", at="2025-12-01T10:00:00+00:00", amount=1.0),
        buy(1, "SO1", 200.0, 1),
        buy(2, "SO2", 300.0, 2),
        refund(3, "SO2", 5),
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows)
    with engine.connect() as conn:
        lots = conn.execute(
            select(
                PointsLotRow.order_id, PointsLotRow.remaining, PointsLotRow.available_at
            ).order_by(PointsLotRow.id)
        ).all()
    assert [(o, float(r)) for o, r, _ in lots] == [("SO1", 200.0), ("SO2", 0.0)]
    assert lots[0].available_at == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert [k for k, _a, _o in ledger(engine, "A")] == ["pending", "pending", "clawback"]
    assert debt(engine, "A") == 0.0
    with engine.connect() as conn:
        during = load_profile(conn, "A", at=datetime(2026, 1, 10, tzinfo=UTC))
        after = load_profile(conn, "A", at=datetime(2026, 1, 20, tzinfo=UTC))
    assert during is not None and after is not None
    # pending points are not spendable until the window closes
    assert during.points_balance == 0.0
    assert after.points_balance == 200.0


def test_a_refund_lowers_spend_at_the_purchase_time(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, programme(tmp_path))
    import_rows(
        engine,
        tmp_path / "e.jsonl",
        [buy(1, "SO1", 3000.0, 1), buy(2, "SO2", 500.0, 2), refund(3, "SO1", 3, amount=1000.0)],
    )
    with engine.connect() as conn:
        pack = active_pack(conn)
        assert pack is not None
        before = evaluate_facts(conn, pack, "A", datetime(2026, 1, 2, 12, tzinfo=UTC))
        after = evaluate_facts(conn, pack, "A", datetime(2026, 1, 3, 12, tzinfo=UTC))
    assert before["spend_365d"] == 3500.0
    assert after["spend_365d"] == 2500.0
    # earned points fall by what was clawed back: 1,000 + 500 - 333.33
    assert after["points_earned_365d"] == pytest.approx(1166.67)
    with engine.connect() as conn:
        row = conn.execute(select(OrderRefundRow.points, OrderRefundRow.purchased_at)).one()
    assert Decimal(str(row.points)) == Decimal("333.33")
    assert row.purchased_at == datetime(2026, 1, 1, 10, tzinfo=UTC)


def test_the_tier_review_sees_refunds_at_the_purchase_time(engine: Engine, tmp_path: Path) -> None:
    from store.automations import qualifying_totals

    deploy_dir(engine, programme(tmp_path))
    import_rows(
        engine,
        tmp_path / "e.jsonl",
        [buy(1, "SO1", 3000.0, 1), buy(2, "SO2", 500.0, 2), refund(3, "SO1", 3, amount=1000.0)],
    )
    with engine.connect() as conn:
        pack = active_pack(conn)
        assert pack is not None
        before = qualifying_totals(conn, pack.program, ["A"], datetime(2026, 1, 2, 12, tzinfo=UTC))
        after = qualifying_totals(conn, pack.program, ["A"], datetime(2026, 1, 3, 12, tzinfo=UTC))
    assert (float(before[0]["A"]), float(before[1]["A"])) == (3500.0, 1500.0)
    assert after[0]["A"] == 2500.0
    assert after[1]["A"] == pytest.approx(1166.67)
