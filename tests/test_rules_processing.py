"""Events through the rules into the store, on SQLite and PostgreSQL: effects, atomicity,
exactly-once, versions without a restart, and properties of the points ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

import crmflow.processing as processing
from crmflow.ingest import import_file
from crmflow.processing import ConcurrentProcessing, process_chunk, process_pending
from journeys.models import MessageNode
from journeys.templates import render_message
from journeys.validate import load_journey
from rules.pack import load_pack
from store.models import (
    AuditRow,
    CouponRow,
    CustomerRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
    PointsLedgerRow,
    TagRow,
)
from store.profiles import load_profile
from tests.rules_helpers import REPO, deploy_dir, event, import_rows, points, rules_dir, wipe


def count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def test_example_programme_end_to_end(engine: Engine) -> None:
    version = deploy_dir(engine, REPO / "examples/rules")
    import_file(engine, REPO / "examples/customers.jsonl", "customers")
    report = import_file(engine, REPO / "examples/events.jsonl", "events")
    assert report.processed == report.stored == report.received
    assert report.rules_version == version
    assert count(engine, EventRow, EventRow.processed_at.is_(None)) == 0
    with engine.connect() as conn:
        p = load_profile(conn, "C0002")
    assert p is not None
    lots, ledger = points(engine, "C0002")
    assert p.points_balance == lots == ledger > 0
    assert p.tier in ("silver", "gold", "platinum")
    assert p.tier_history and p.tier_history[-1].to_tier == p.tier
    assert p.history and all(h.rules_version == version for h in p.history)
    assert {h.rule for h in p.history} >= {"earn-on-purchase", "upgrade-on-spend"}

    # re-importing the same file applies nothing twice
    ledger_rows = count(engine, PointsLedgerRow)
    again = import_file(engine, REPO / "examples/events.jsonl", "events")
    assert (again.stored, again.duplicates, again.processed) == (0, again.received, 0)
    assert count(engine, PointsLedgerRow) == ledger_rows
    assert process_pending(engine).events == 0


def test_a_crash_mid_chunk_leaves_nothing_and_a_retry_applies_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    rows = [event(i, f"C{i % 3}", amount=100.0 + i) for i in range(10)]

    def crash(*_a: Any, **_k: Any) -> int:
        raise RuntimeError("worker killed")

    monkeypatch.setattr(processing, "bump_state_versions", crash)  # after every write
    with pytest.raises(RuntimeError, match="worker killed"):
        import_rows(engine, tmp_path / "e.jsonl", rows)
    assert count(engine, EventRow) == 0  # event and effects share the transaction
    assert count(engine, PointsLedgerRow) == 0
    monkeypatch.undo()
    report = import_rows(engine, tmp_path / "e.jsonl", rows)
    assert report.processed == 10
    assert count(engine, PointsLedgerRow, PointsLedgerRow.kind == "earn") == 10


def test_an_event_processed_elsewhere_rolls_the_chunk_back(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "A", amount=50.0)])
    with engine.connect() as conn:
        pack = processing.active_pack(conn)
    assert pack is not None
    from datetime import UTC, datetime

    again = {
        "event_id": "e1",
        "customer_id": "A",
        "type": "purchase",
        "occurred_at": datetime(2026, 11, 1, 2, tzinfo=UTC),
        "properties": {"amount": 50.0},
    }
    with pytest.raises(ConcurrentProcessing), engine.begin() as conn:
        process_chunk(conn, pack, [again])
    assert count(engine, PointsLedgerRow) == 1


def test_events_stored_before_any_rules_are_processed_later_with_the_same_result(
    engine: Engine, tmp_path: Path
) -> None:
    stream = [
        event(i, f"C{i % 4}", at=f"2026-10-{1 + i:02d}T10:00:00+08:00", amount=float(300 * i))
        for i in range(1, 20)
    ]
    first = import_rows(engine, tmp_path / "e.jsonl", stream)
    assert (first.processed, first.unprocessed) == (0, 19)
    deploy_dir(engine, REPO / "examples/rules")
    assert process_pending(engine, chunk_size=7).events == 19

    def snapshot() -> dict[str, Any]:
        with engine.connect() as conn:
            out = {}
            for c in ("C0", "C1", "C2", "C3"):
                p = load_profile(conn, c)
                assert p is not None
                out[c] = (p.tier, p.points_balance, sorted(t.tag for t in p.tags))
            return out

    later = snapshot()
    wipe(engine)
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", stream, chunk_size=5)
    assert snapshot() == later


RULES_V1 = """
rules:
  - name: tag-a
    on: purchase
    then: [{add_tag: a}]
  - name: needs-a
    on: purchase
    when: tags contains a
    then: [{add_tag: saw-a}]
"""
RULES_V2 = """
rules:
  - name: tag-b
    on: purchase
    then: [{add_tag: b}]
"""


def tags_of(engine: Engine, customer: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(TagRow.tag).where(TagRow.customer_id == customer)).scalars())


@pytest.mark.parametrize("chunk_size", [1, 100])
def test_effects_are_visible_to_the_next_event(
    engine: Engine, tmp_path: Path, chunk_size: int
) -> None:
    deploy_dir(engine, rules_dir(tmp_path, RULES_V1))
    rows = [event(1, "A", amount=1.0), event(2, "A", at="2026-11-02T10:00:00+08:00", amount=1.0)]
    import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=chunk_size)
    assert tags_of(engine, "A") == {"a", "saw-a"}
    with engine.connect() as conn:
        fired = conn.execute(
            select(AuditRow.event_id, AuditRow.rule).where(AuditRow.customer_id == "A")
        ).all()
    assert ("e1", "needs-a") not in fired  # the first event did not see its own tag yet
    assert ("e2", "needs-a") in fired


def test_a_new_rules_version_loads_without_a_restart(engine: Engine, tmp_path: Path) -> None:
    v1 = deploy_dir(engine, rules_dir(tmp_path / "one", RULES_V1))
    import_rows(engine, tmp_path / "1.jsonl", [event(1, "A", amount=1.0)])
    v2 = deploy_dir(engine, rules_dir(tmp_path / "two", RULES_V2))
    assert v1 != v2
    import_rows(engine, tmp_path / "2.jsonl", [event(2, "A", amount=1.0)])
    assert tags_of(engine, "A") == {"a", "b"}
    with engine.connect() as conn:
        versions = dict(conn.execute(select(AuditRow.event_id, AuditRow.rules_version)).all())
    assert versions == {"e1": v1, "e2": v2}


def test_a_deduction_larger_than_the_balance_is_refused_and_fifo_debits(
    engine: Engine, tmp_path: Path
) -> None:
    spend = """
rules:
  - name: earn
    on: purchase
    then: [{award_points: {amount: event.amount, multiplier: none}}]
  - name: voucher
    on: points_redeemed
    then: [{deduct_points: {amount: event.amount, reason: voucher}}]
"""
    deploy_dir(engine, rules_dir(tmp_path, spend))
    rows = [
        event(1, "A", at="2026-01-01T10:00:00+08:00", amount=100.0),
        event(2, "A", at="2026-02-01T10:00:00+08:00", amount=100.0),
        event(3, "A", "points_redeemed", at="2026-03-01T10:00:00+08:00", amount=150.0),
        event(4, "A", "points_redeemed", at="2026-03-02T10:00:00+08:00", amount=500.0),
    ]
    import_rows(engine, tmp_path / "e.jsonl", rows)
    with engine.connect() as conn:
        p = load_profile(conn, "A", at=datetime(2026, 3, 3, tzinfo=UTC))
        refused = conn.execute(
            select(AuditRow.skipped).where(AuditRow.event_id == "e4", AuditRow.kind == "debit")
        ).scalar_one()
        kinds = conn.execute(
            select(PointsLedgerRow.kind, PointsLedgerRow.amount, PointsLedgerRow.actor)
            .where(PointsLedgerRow.event_id == "e3")
            .order_by(PointsLedgerRow.id)
        ).all()
    assert p is not None
    assert p.points_balance == 50.0
    assert [(lot.earned, lot.remaining) for lot in p.expiring_lots] == [(100.0, 50.0)]
    assert refused == "insufficient points"
    # a rule's deduction is an adjustment by that rule, lot by lot, oldest first
    assert [(k, float(a), by) for k, a, by in kinds] == [
        ("adjust_debit", -100.0, "rule:voucher"),
        ("adjust_debit", -50.0, "rule:voucher"),
    ]
    assert points(engine, "A") == (50.0, 50.0)


def test_churn_risk_starts_a_retention_action_and_a_lapsed_lead_returns_to_the_pool(
    engine: Engine, tmp_path: Path
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    customers = [
        {"customer_id": "M", "lifecycle_stage": "member", "owner": "sales.bo"},
        {"customer_id": "L", "lifecycle_stage": "lead", "owner": "sales.amy"},
    ]
    import_rows(engine, tmp_path / "c.jsonl", customers, kind="customers")
    buys = [event(f"b{m}", "M", at=f"2026-0{m}-01T10:00:00+08:00", amount=100.0) for m in (1, 2, 3)]
    later = [
        event("s1", "M", "sign_in", at="2026-08-01T10:00:00+08:00"),
        event("l1", "L", "page_view", at="2099-01-01T10:00:00+08:00"),
    ]
    import_rows(engine, tmp_path / "e.jsonl", buys + later)
    assert "churn-risk" in tags_of(engine, "M")
    with engine.connect() as conn:
        task = conn.execute(select(FollowUpTaskRow.owner, FollowUpTaskRow.title)).one()
        coupon = conn.execute(select(CouponRow.code, CouponRow.value)).one()
        outbox = conn.execute(
            select(
                JourneyCommandRow.journey, JourneyCommandRow.event, JourneyCommandRow.data
            ).where(JourneyCommandRow.customer_id == "M")
        ).all()
        lead = conn.execute(select(CustomerRow.owner).where(CustomerRow.customer_id == "L")).one()
    assert task.owner == "sales.bo"
    assert coupon.code.startswith("BACK-") and float(coupon.value) == 50.0
    handed = {(o.journey, o.event): o.data for o in outbox}
    # the coupon the retention action issued reaches the journey that should carry it
    assert handed[("winback", "churn_risk")] == {
        "coupon_code": coupon.code,
        "coupon_value": 50.0,
        "coupon_expires_at": "2026-08-31",
    }
    winback = load_journey(REPO / "examples/journeys/winback.yaml").journey
    node = winback.nodes["discount_email"]
    assert isinstance(node, MessageNode)
    profile = {"customer_id": "M", "name": "Mei", "attributes": {}, "consent": {}}
    shown = render_message(node, profile, data=handed[("winback", "churn_risk")])
    assert f"50 CNY off your next order with code {coupon.code}, valid until 2026-08-31." in (
        shown.text or ""
    )
    assert lead.owner is None
    assert "sla-missed" in tags_of(engine, "L")


def test_five_thousand_customers_in_one_process(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    rows = [event(i, f"K{i}", amount=float(10 + i % 3000)) for i in range(5000)]
    report = import_rows(engine, tmp_path / "e.jsonl", rows)
    assert report.processed == 5000
    assert count(engine, PointsLedgerRow) == 5000
    assert count(engine, TagRow, TagRow.tag == "big-spender") == sum(
        1 for i in range(5000) if 10 + i % 3000 >= 1000
    )


@settings(
    max_examples=12,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from(["purchase", "refund"]),
            st.integers(min_value=1, max_value=4000),
            st.integers(min_value=0, max_value=400),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_ledger_properties_and_replay(
    engine: Engine, tmp_path: Path, stream: list[tuple[str, str, int, int]]
) -> None:
    wipe(engine)
    deploy_dir(engine, REPO / "examples/rules")
    rows = [
        event(n, c, t, at="2026-01-01T00:00:00+00:00", amount=float(a))
        for n, (c, t, a, _day) in enumerate(stream)
    ]
    for n, (_c, _t, _a, day) in enumerate(stream):
        rows[n]["occurred_at"] = f"2025-{1 + day // 31 % 12:02d}-{1 + day % 28:02d}T10:00:00+00:00"
    import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=7)

    def profiles() -> dict[str, tuple[Any, ...]]:
        out = {}
        with engine.connect() as conn:
            for c in sorted({c for c, *_ in stream}):
                # balances are read as of a moment: after the stream (2025), before any of
                # its lots expires (rolling 365 days), so every lot still counts
                p = load_profile(conn, c, at=datetime(2025, 12, 31, tzinfo=UTC))
                assert p is not None
                out[c] = (p.tier, p.points_balance, tuple(sorted(t.tag for t in p.tags)))
        return out

    first = profiles()
    for c, (_tier, balance, _tags) in first.items():
        lots, ledger = points(engine, c)
        assert balance == lots == ledger  # balance is what the lots hold, and the ledger says
        assert balance >= 0
    with engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).where(
                    select(PointsLedgerRow.id).where(PointsLedgerRow.amount == 0).exists()
                )
            ).scalar_one()
            == 0
        )
    wipe(engine)
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=3)
    assert profiles() == first
    _ = load_pack  # the compiled pack is cached per process and version


def _comparable(state: Any) -> tuple[Any, ...]:
    return (
        state.customer_id,
        state.tier,
        state.lifecycle_stage,
        state.owner,
        state.consent,
        state.attributes,
        state.tags,
        [
            (lot.key, lot.remaining, lot.earned_at, lot.expires_at, lot.order_id, lot.available_at)
            for lot in state.lots
        ],
        sorted(state.purchases),
        sorted(state.earnings),
        state.last_follow_up_at,
        state.debt,
        sorted(state.refunds),
        sorted(state.credits),
        state.orders,
    )


def test_rule_state_kept_across_chunks_equals_a_fresh_load(engine: Engine, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from crmflow.rules_runtime import rules_runtime
    from crmflow.state_cache import prune
    from store.rule_state import load_states

    deploy_dir(engine, REPO / "examples/rules")
    customers = [f"S{i}" for i in range(6)]
    rows = []
    for n in range(90):
        kind = ["purchase", "purchase", "refund", "sales_follow_up"][n % 4]
        day = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=7 * n)  # spans 21 months
        amount = float(50 + 37 * n % 900)
        # a refund names the order its customer placed six events before, and refunds part
        # of it: the orders of earlier chunks are read from the store
        order = f"O{n - 6}" if kind == "refund" else f"O{n}"
        if kind == "refund":
            amount = float(50 + 37 * (n - 6) % 900) / 2
        rows.append(
            event(n, customers[n * 7 % 6], kind, at=day.isoformat(), amount=amount, order_id=order)
        )
    import_rows(engine, tmp_path / "e.jsonl", rows, chunk_size=4)
    cache = rules_runtime(engine).states
    with engine.connect() as conn:
        pack = processing.active_pack(conn)
        assert pack is not None
        versions = processing.lock_customers(conn, customers)
        program = pack.program
        cached = cache.take(processing.state_key(pack), versions)
        assert sorted(cached) == customers  # every one was kept, and still current
        since = datetime(2026, 9, 1, tzinfo=UTC) - timedelta(days=366)
        fresh = load_states(
            conn,
            customers,
            since,
            purchase_event=program.purchase_event,
            spend_property=program.spend_property,
            follow_up_event=program.follow_up_event,
        )
    for cid in customers:
        prune(cached[cid], since)
        assert _comparable(cached[cid]) == _comparable(fresh[cid])
        # a kept lot may not know its id yet (it was inserted in bulk); a known one is right
        ids = {lot.key: lot.id for lot in fresh[cid].lots}
        assert all(lot.id in (None, ids[lot.key]) for lot in cached[cid].lots)
    assert any(s.lots for s in fresh.values()) and any(s.purchases for s in fresh.values())


def test_a_change_from_outside_the_rules_is_seen_by_the_next_chunk(
    engine: Engine, tmp_path: Path
) -> None:
    rules = rules_dir(
        tmp_path,
        """
rules:
  - name: vip-attribute
    on: purchase
    when: attributes.segment == "vip"
    then: [{add_tag: vip}]
""",
    )
    deploy_dir(engine, rules)
    import_rows(engine, tmp_path / "c.jsonl", [{"customer_id": "V", "name": "V"}], "customers")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "V", amount=10.0)])
    assert tags_of(engine, "V") == set()  # its state is now kept by this process
    import_rows(
        engine,
        tmp_path / "c.jsonl",
        [{"customer_id": "V", "name": "V", "attributes": {"segment": "vip"}}],
        "customers",
    )
    import_rows(engine, tmp_path / "e.jsonl", [event(2, "V", amount=10.0)])
    assert tags_of(engine, "V") == {"vip"}


def test_a_chunk_that_fails_after_changing_states_leaves_no_trace_in_the_kept_states(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "F", amount=100.0)])
    from store.rule_state import ChunkWriter

    def fail(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ChunkWriter, "write", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        import_rows(engine, tmp_path / "e.jsonl", [event(2, "F", amount=5000.0)])
    monkeypatch.undo()
    # the failed chunk's in-memory earn (5,000 points) must not be seen by the next one
    import_rows(engine, tmp_path / "e.jsonl", [event(3, "F", amount=1.0)])
    lots, ledger = points(engine, "F")
    assert lots == ledger == 101.0


def test_an_event_another_import_stored_meanwhile_undoes_the_chunk(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crmflow.event_chunks as ingest
    from store.ingest import WriteCounts

    deploy_dir(engine, REPO / "examples/rules")
    import_rows(engine, tmp_path / "e.jsonl", [event(1, "R", amount=100.0)])

    def blind(_conn: Any, rows: list[dict[str, Any]], _now: Any, _at: Any = None) -> Any:
        return WriteCounts(), list(rows)  # as if e1 had arrived after the look-up

    monkeypatch.setattr(ingest, "new_events", blind)
    with pytest.raises(ConcurrentProcessing, match="1 of 2"):
        import_rows(
            engine, tmp_path / "e.jsonl", [event(1, "R", amount=100.0), event(2, "R", amount=7.0)]
        )
    assert count(engine, EventRow) == 1  # e2 went with the undone chunk
    assert points(engine, "R") == (100.0, 100.0)
