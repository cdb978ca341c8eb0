"""Every automation on a seeded database, SQLite and PostgreSQL, results checked row by row;
the same run date twice; an attempt that died mid-step resumed from its last chunk.

Each runs twice: through AutomationWorkflow on the Temporal dev server (a worker of its own
on this database), and with the activities called directly (begin, every step, finish —
what the workflow sequences), which also lets a test stop an attempt between chunks.
tests/test_schedules.py covers the Schedules themselves."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, insert, select
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.automation_activities import AutomationActivities
from crmflow.contracts.automations import (
    STEPS,
    AutomationInput,
    BeginRequest,
    FinishRequest,
    RunSummary,
    StepRequest,
)
from crmflow.settings import Settings
from rules.tiers import GRACE_TAG
from store.models import (
    AuditRow,
    AutomationRunRow,
    CouponRow,
    CustomerRow,
    EventRow,
    FollowUpTaskRow,
    OutboxMessageRow,
    PointsLedgerRow,
    PointsLotRow,
    TagRow,
    TierHistoryRow,
)
from tests.rules_helpers import REPO, deploy_dir
from workflows.automation import AutomationWorkflow

SH = ZoneInfo("Asia/Shanghai")
AS_OF = datetime(2026, 11, 20, 2, 0, tzinfo=SH)  # a nightly run at 02:00 Shanghai time
UTC = ZoneInfo("UTC")


def acts(engine: Engine) -> AutomationActivities:
    return AutomationActivities(engine, Settings(), {})


# set by the `via` fixture when runs go through Temporal
TEMPORAL: dict[str, Any] = {}


@pytest.fixture(params=["temporal", "activities"])
async def via(
    request: pytest.FixtureRequest, engine: Engine, dev_env: WorkflowEnvironment
) -> AsyncIterator[str]:
    if request.param == "activities":
        yield "activities"
        return
    queue = f"automations-{uuid.uuid4()}"
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[AutomationWorkflow],
            activities=acts(engine).all(),
            activity_executor=pool,
        ):
            TEMPORAL.update(client=dev_env.client, queue=queue)
            try:
                yield "temporal"
            finally:
                TEMPORAL.clear()


async def run(
    engine: Engine,
    automation: str,
    params: dict[str, Any] | None = None,
    as_of: datetime = AS_OF,
    wf: str = "wf-1",
    schedule: str | None = None,
) -> RunSummary:
    inp = AutomationInput(
        schedule=schedule or f"test-{automation}",
        automation=automation,
        timezone="Asia/Shanghai",
        params=params or {},
    )
    if TEMPORAL:
        return await TEMPORAL["client"].execute_workflow(
            AutomationWorkflow.run,
            inp.model_copy(update={"as_of": as_of}),
            id=f"automation-{inp.schedule}-{wf}-{uuid.uuid4().hex[:8]}",
            task_queue=TEMPORAL["queue"],
        )
    a = acts(engine)
    start = a.begin(BeginRequest(input=inp, as_of=as_of, workflow_id=wf))
    for step in STEPS[automation]:
        await a.step(StepRequest(run_id=start.run_id, step=step, input=inp))
    return a.finish(FinishRequest(run_id=start.run_id))


def customers(engine: Engine, *rows: dict[str, Any]) -> None:
    base = {
        "timezone": "Asia/Shanghai",
        "consent": {"email": True},
        "attributes": {},
        "owner": None,
        "tier": None,
        "lifecycle_stage": "member",
        "name": None,
    }
    created = datetime(2025, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(CustomerRow),
            [{**base, "created_at": created, "updated_at": created, **r} for r in rows],
        )


def versions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(CustomerRow.customer_id, CustomerRow.state_version)).all())


def events_of(engine: Engine, type_: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(EventRow.event_id, EventRow.customer_id, EventRow.properties)
                .where(EventRow.type == type_)
                .order_by(EventRow.event_id)
            ).all()
        )


def ago(days: float, hours: float = 0) -> datetime:
    return AS_OF - timedelta(days=days, hours=hours)


@pytest.fixture
def programme(engine: Engine) -> Engine:
    """The example programme and rule pack deployed."""
    deploy_dir(engine, REPO / "examples/rules")
    return engine


# --------------------------------------------------------------------------- points expiry


def lot(n: int, cid: str, earned: float, remaining: float, expires: datetime | None) -> dict:
    return {
        "id": n,
        "customer_id": cid,
        "earned": Decimal(str(earned)),
        "remaining": Decimal(str(remaining)),
        "earned_at": datetime(2025, 11, 1, tzinfo=UTC),
        "expires_at": expires,
        "lot_key": f"lot-{n}",
    }


async def test_points_expiry_expires_due_lots_and_warns_ahead(via: str, engine: Engine) -> None:
    customers(engine, {"customer_id": "c1"}, {"customer_id": "c2"}, {"customer_id": "c3"})
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLotRow),
            [
                lot(1, "c1", 100, 100, ago(1)),  # due
                lot(2, "c1", 60, 0, ago(2)),  # due but spent
                lot(3, "c1", 50, 50, ago(-10)),  # in 10 days: warned
                lot(4, "c1", 20, 20, ago(-10)),  # same day: one warning, 70 points
                lot(5, "c1", 70, 70, ago(-100)),  # far off
                lot(6, "c2", 80, 30, ago(0)),  # due exactly now, partly spent
                lot(7, "c3", 10, 10, None),  # never expires
                lot(8, "c2", 5, 5, ago(-25)),  # in 25 days: warned
            ],
        )
    before = versions(engine)
    summary = await run(engine, "points_expiry", {"notice_days": 30, "chunk_size": 1})
    assert summary.status == "completed"
    assert summary.counts["lots_expired"] == 2
    assert summary.counts["points_expired"] == 130
    assert summary.counts["expiring_notices"] == 2
    with engine.connect() as conn:
        remaining = dict(conn.execute(select(PointsLotRow.id, PointsLotRow.remaining)).all())
        ledger = conn.execute(
            select(
                PointsLedgerRow.lot_id,
                PointsLedgerRow.customer_id,
                PointsLedgerRow.amount,
                PointsLedgerRow.kind,
                PointsLedgerRow.dedupe_key,
            ).order_by(PointsLedgerRow.lot_id)
        ).all()
    assert {k: float(v) for k, v in remaining.items()} == {
        1: 0,
        2: 0,
        3: 50,
        4: 20,
        5: 70,
        6: 0,
        7: 10,
        8: 5,
    }
    assert [(r[0], r[1], float(r[2]), r[3], r[4]) for r in ledger] == [
        (1, "c1", -100.0, "expire", "expire:1"),
        (6, "c2", -30.0, "expire", "expire:6"),
    ]
    after = versions(engine)
    assert after["c1"] > before["c1"] and after["c2"] > before["c2"]
    assert after["c3"] == before["c3"]
    warned = events_of(engine, "points_expiring")
    day_c1 = ago(-10).astimezone(SH).date().isoformat()
    day_c2 = ago(-25).astimezone(SH).date().isoformat()
    assert [(e[0], e[1]) for e in warned] == [
        (f"points_expiring:{day_c1}:c1", "c1"),
        (f"points_expiring:{day_c2}:c2", "c2"),
    ]
    c1 = warned[0][2]
    assert c1["amount"] == 70 and c1["date"] == day_c1 and c1["total_expiring"] == 70
    assert warned[1][2]["amount"] == 5

    # the same run date again: a second attempt that changes nothing
    again = await run(engine, "points_expiry", {"notice_days": 30}, wf="wf-2")
    assert again.attempt == 2
    assert again.counts.get("lots_expired", 0) == 0
    assert again.counts.get("events_stored", 0) == 0
    with engine.connect() as conn:
        assert len(conn.execute(select(PointsLedgerRow.id)).all()) == 2
    assert len(events_of(engine, "points_expiring")) == 2
    # the next day warns nobody again for the same expiry dates
    await run(engine, "points_expiry", {"notice_days": 30}, as_of=AS_OF + timedelta(days=1))
    assert len(events_of(engine, "points_expiring")) == 2


async def test_expiry_notices_skip_nobody_when_nights_are_missed(via: str, engine: Engine) -> None:
    """Notices 3 days ahead; the runs of the 3 nights after AS_OF never happen. The next run
    still warns about the lots the missed nights would have (one expires 4 days after
    AS_OF, another 5), once each."""
    customers(engine, {"customer_id": "g1"}, {"customer_id": "g2"}, {"customer_id": "g3"})
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLotRow),
            [
                lot(1, "g1", 10, 10, ago(-4)),
                lot(2, "g2", 20, 20, ago(-5)),
                lot(3, "g3", 30, 30, ago(-2, -1)),  # expires during the gap: expired later
            ],
        )
    params = {"notice_days": 3}
    first = await run(engine, "points_expiry", params, schedule="gap")
    assert first.counts["expiring_notices"] == 1  # g3, within 3 days
    later = await run(engine, "points_expiry", params, as_of=ago(-3), wf="d3", schedule="gap")
    assert later.counts["expiring_notices"] == 2
    assert later.counts["lots_expired"] == 1  # g3's, expired in the gap, now recorded
    assert sorted(e[1] for e in events_of(engine, "points_expiring")) == ["g1", "g2", "g3"]


async def test_an_attempt_that_died_resumes_after_its_last_committed_chunk(engine: Engine) -> None:
    customers(engine, *({"customer_id": f"c{i}"} for i in range(10)))
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLotRow),
            [lot(i + 1, f"c{i % 10}", 10 + i, 10 + i, ago(1)) for i in range(25)],
        )
    a = acts(engine)
    inp = AutomationInput(
        schedule="expiry",
        automation="points_expiry",
        timezone="Asia/Shanghai",
        params={"chunk_size": 4, "notice_days": 0},
    )
    start = a.begin(BeginRequest(input=inp, as_of=AS_OF, workflow_id="first"))
    req = StepRequest(run_id=start.run_id, step="expire", input=inp)
    for _ in range(3):  # three chunks committed, then the worker dies
        a._chunk(req)
    with engine.connect() as conn:
        row = conn.execute(select(AutomationRunRow)).one()
    assert (row.step, row.cursor, row.status) == ("expire", "12", "running")
    assert row.counts["lots_expired"] == 12
    # a new workflow for the same date takes the attempt over where it stopped
    resumed = a.begin(BeginRequest(input=inp, as_of=AS_OF, workflow_id="second"))
    assert (resumed.run_id, resumed.attempt, resumed.step, resumed.resumed) == (
        start.run_id,
        1,
        "expire",
        True,
    )
    done = await a.step(req)
    assert done.counts["lots_expired"] == 13
    summary = a.finish(FinishRequest(run_id=start.run_id))
    assert summary.counts["lots_expired"] == 25
    assert summary.counts["points_expired"] == sum(10 + i for i in range(25))
    with engine.connect() as conn:
        keys = conn.execute(select(PointsLedgerRow.dedupe_key)).scalars().all()
    assert sorted(k or "" for k in keys) == sorted(f"expire:{i + 1}" for i in range(25))


# --------------------------------------------------------------------------- tag expiry


async def test_tag_expiry_removes_expired_tags_with_an_audit_trail(
    via: str, engine: Engine
) -> None:
    customers(engine, {"customer_id": "t1"}, {"customer_id": "t2"})
    with engine.begin() as conn:
        conn.execute(
            insert(TagRow),
            [
                {"customer_id": "t1", "tag": "sla-missed", "expires_at": ago(1)},
                {"customer_id": "t1", "tag": "vip", "expires_at": None},
                {"customer_id": "t2", "tag": "churn-risk", "expires_at": ago(-1)},
                {"customer_id": "t2", "tag": "birthday-month", "expires_at": ago(0, 1)},
            ],
        )
    summary = await run(engine, "tag_expiry", {"chunk_size": 1})
    assert summary.counts == {"tags_expired": 2, "customers": 2}
    with engine.connect() as conn:
        left = conn.execute(select(TagRow.customer_id, TagRow.tag).order_by(TagRow.tag)).all()
        trail = conn.execute(
            select(AuditRow.customer_id, AuditRow.rule, AuditRow.kind, AuditRow.detail).order_by(
                AuditRow.customer_id
            )
        ).all()
    assert [tuple(r) for r in left] == [("t2", "churn-risk"), ("t1", "vip")]
    assert [(r[0], r[1], r[2], r[3]["tag"]) for r in trail] == [
        ("t1", "automation:test-tag_expiry", "remove_tag", "sla-missed"),
        ("t2", "automation:test-tag_expiry", "remove_tag", "birthday-month"),
    ]
    again = await run(engine, "tag_expiry", wf="again")
    assert again.counts == {}


# --------------------------------------------------------------------------- tier review


def purchase(n: int, cid: str, amount: float, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"p{n}",
        "customer_id": cid,
        "type": "purchase",
        "occurred_at": at,
        "received_at": at,
        "processed_at": at,
        "properties": {"amount": amount},
    }


async def test_tier_review_upgrades_starts_grace_and_downgrades_after_it(
    via: str,
    programme: Engine,
) -> None:
    engine = programme
    customers(
        engine,
        {"customer_id": "u1", "tier": "basic", "lifecycle_stage": "member"},
        {"customer_id": "u2", "tier": "gold", "lifecycle_stage": "member"},
        {"customer_id": "u3", "tier": "gold", "lifecycle_stage": "member"},
        {"customer_id": "u4", "tier": "silver", "lifecycle_stage": "member"},
        {"customer_id": "u5", "tier": None, "lifecycle_stage": "lead"},
    )
    with engine.begin() as conn:
        conn.execute(
            insert(EventRow),
            [
                purchase(1, "u1", 9000, ago(10)),
                purchase(2, "u2", 100, ago(20)),
                purchase(3, "u2", 50000, ago(400)),  # outside the 365-day window
                purchase(4, "u3", 2500, ago(30)),
                purchase(5, "u4", 3000, ago(3)),
            ],
        )
        conn.execute(
            insert(TagRow),
            [
                {"customer_id": "u3", "tag": GRACE_TAG, "created_at": ago(40)},
                {"customer_id": "u4", "tag": GRACE_TAG, "created_at": ago(5)},
            ],
        )
    summary = await run(engine, "tier_review", {"chunk_size": 2})
    assert summary.counts["members_reviewed"] == 4
    assert summary.counts["upgrade"] == 1
    assert summary.counts["downgrade"] == 1
    assert summary.counts["grace_start"] == 1
    assert summary.counts["grace_end"] == 1
    with engine.connect() as conn:
        tiers = dict(conn.execute(select(CustomerRow.customer_id, CustomerRow.tier)).all())
        history = conn.execute(
            select(
                TierHistoryRow.customer_id, TierHistoryRow.from_tier, TierHistoryRow.to_tier
            ).order_by(TierHistoryRow.customer_id)
        ).all()
        grace = (
            conn.execute(
                select(TagRow.customer_id)
                .where(TagRow.tag == GRACE_TAG)
                .order_by(TagRow.customer_id)
            )
            .scalars()
            .all()
        )
    assert tiers == {"u1": "gold", "u2": "gold", "u3": "silver", "u4": "silver", "u5": None}
    assert [tuple(r) for r in history] == [("u1", "basic", "gold"), ("u3", "gold", "silver")]
    assert grace == ["u2"]
    changed = events_of(engine, "tier_changed")
    assert [(e[1], e[2]["from_tier"], e[2]["to_tier"], e[2]["direction"]) for e in changed] == [
        ("u1", "basic", "gold", "upgrade"),
        ("u3", "gold", "silver", "downgrade"),
    ]
    assert changed[0][0] == "tier_changed:2026-11-20:u1"

    again = await run(engine, "tier_review", wf="again")
    assert {k: v for k, v in again.counts.items() if k != "members_reviewed"} == {}
    # 31 days later u2's grace period is over: down to the tier its spend reaches
    later = await run(engine, "tier_review", as_of=AS_OF + timedelta(days=31), wf="later")
    assert later.counts["downgrade"] == 1
    with engine.connect() as conn:
        assert (
            conn.execute(
                select(CustomerRow.tier).where(CustomerRow.customer_id == "u2")
            ).scalar_one()
            == "basic"
        )


# --------------------------------------------------------------------------- churn scan


async def test_churn_scan_flags_lapsing_regulars_through_the_rules(
    via: str, programme: Engine
) -> None:
    engine = programme
    customers(
        engine,
        {"customer_id": "m1", "lifecycle_stage": "member", "owner": "sales.amy"},
        {"customer_id": "m2", "lifecycle_stage": "member"},
        {"customer_id": "m3", "lifecycle_stage": "lead"},
        {"customer_id": "m4", "lifecycle_stage": "member"},
    )
    with engine.begin() as conn:
        conn.execute(
            insert(EventRow),
            [
                purchase(1, "m1", 100, ago(100)),
                purchase(2, "m1", 100, ago(90)),
                purchase(3, "m1", 100, ago(80)),  # usual gap 10 days, now 80: lapsing
                purchase(4, "m2", 100, ago(5)),
                purchase(5, "m3", 100, ago(200)),
                purchase(6, "m4", 100, ago(300)),
                purchase(7, "m4", 100, ago(200)),
                purchase(8, "m4", 100, ago(100)),  # usual gap 100 days, now 100: as usual
            ],
        )
    summary = await run(engine, "churn_scan", {"chunk_size": 1})
    assert summary.counts["customers_scanned"] == 3
    assert summary.counts["churn_checks"] == 2  # m1 and m4 (m2 bought 5 days ago)
    checks = events_of(engine, "churn_scan")
    assert [e[0] for e in checks] == ["churn_scan:2026-11-20:m1", "churn_scan:2026-11-20:m4"]
    with engine.connect() as conn:
        tags = (
            conn.execute(select(TagRow.customer_id).where(TagRow.tag == "churn-risk"))
            .scalars()
            .all()
        )
        tasks = conn.execute(select(FollowUpTaskRow.customer_id, FollowUpTaskRow.owner)).all()
        coupons = conn.execute(select(CouponRow.customer_id, CouponRow.value)).all()
    assert tags == ["m1"]
    assert [tuple(t) for t in tasks] == [("m1", "sales.amy")]
    assert [(c[0], float(c[1])) for c in coupons] == [("m1", 50.0)]
    again = await run(engine, "churn_scan", wf="again")
    assert again.counts.get("events_stored", 0) == 0
    with engine.connect() as conn:
        assert len(conn.execute(select(CouponRow.id)).all()) == 1


# --------------------------------------------------------------------------- lead SLA


async def test_lead_sla_returns_leads_to_the_pool_and_tells_the_manager(
    via: str,
    programme: Engine,
) -> None:
    engine = programme
    customers(
        engine,
        {
            "customer_id": "l1",
            "lifecycle_stage": "lead",
            "owner": "sales.amy",
            "created_at": ago(3),
        },
        {
            "customer_id": "l2",
            "lifecycle_stage": "lead",
            "owner": "sales.amy",
            "created_at": ago(9),
        },
        {"customer_id": "l3", "lifecycle_stage": "prospect", "owner": "sales.bob"},
        {"customer_id": "l4", "lifecycle_stage": "lead", "owner": None, "created_at": ago(9)},
        {"customer_id": "l5", "lifecycle_stage": "customer", "owner": "sales.bob"},
    )

    def follow_up(n: int, cid: str, at: datetime) -> dict[str, Any]:
        return {**purchase(n, cid, 0, at), "type": "sales_follow_up", "properties": {}}

    with engine.begin() as conn:
        conn.execute(
            insert(EventRow), [follow_up(1, "l2", ago(0, 10)), follow_up(2, "l3", ago(2, 12))]
        )
    params = {
        "sla_hours": 48,
        "managers": {"sales.amy": "amy.boss@acme.example"},
        "default_manager": "sales.head@acme.example",
        "chunk_size": 2,
    }
    summary = await run(engine, "lead_sla", params)
    assert summary.counts["leads_scanned"] == 3
    assert summary.counts["sla_missed"] == 2
    assert summary.counts["leads_returned"] == 2
    assert summary.counts["managers_told"] == 2
    with engine.connect() as conn:
        owners = dict(conn.execute(select(CustomerRow.customer_id, CustomerRow.owner)).all())
        missed = (
            conn.execute(
                select(TagRow.customer_id)
                .where(TagRow.tag == "sla-missed")
                .order_by(TagRow.customer_id)
            )
            .scalars()
            .all()
        )
        mail = conn.execute(
            select(
                OutboxMessageRow.address, OutboxMessageRow.subject, OutboxMessageRow.body_text
            ).order_by(OutboxMessageRow.address)
        ).all()
    assert owners == {"l1": None, "l2": "sales.amy", "l3": None, "l4": None, "l5": "sales.bob"}
    assert missed == ["l1", "l3"]
    assert [m[0] for m in mail] == ["amy.boss@acme.example", "sales.head@acme.example"]
    subjects, bodies = [m[1] or "" for m in mail], [m[2] or "" for m in mail]
    assert "1 lead(s) of sales.amy" in subjects[0] and "- l1" in bodies[0]
    assert "sales.bob" in subjects[1] and "- l3" in bodies[1] and "60 h" in bodies[1]
    await run(engine, "lead_sla", params, wf="again")
    with engine.connect() as conn:
        assert len(conn.execute(select(OutboxMessageRow.id)).all()) == 2


# --------------------------------------------------------------------------- date events


async def test_date_events_on_the_customers_own_day(via: str, engine: Engine) -> None:
    as_of = datetime(2027, 2, 28, 0, 30, tzinfo=UTC)  # 08:30 in Shanghai, 16:30 (27th) in LA
    customers(
        engine,
        {"customer_id": "b1", "attributes": {"birthday": "1990-02-28"}},
        {"customer_id": "b2", "attributes": {"birthday": "1992-02-29"}},  # leap day: the 28th
        {
            "customer_id": "b3",
            "attributes": {"birthday": "1990-02-28"},
            "timezone": "America/Los_Angeles",
        },
        {"customer_id": "b4", "attributes": {"birthday": "1990-03-01"}},
        {"customer_id": "b5", "attributes": {"birthday": "not a date"}},
        {"customer_id": "a1", "attributes": {"member_since": "2024-02-28"}},
        {"customer_id": "a2", "created_at": datetime(2025, 2, 27, 20, 0, tzinfo=UTC)},  # 28th SH
        {"customer_id": "a3", "attributes": {"member_since": "2027-02-28"}},  # joined today
    )
    summary = await run(engine, "date_events", as_of=as_of)
    assert summary.counts["birthdays"] == 2
    assert summary.counts["anniversaries"] == 2
    births = events_of(engine, "birthday")
    assert [(e[0], e[2]["age"]) for e in births] == [
        ("birthday:2027-02-28:b1", 37),
        ("birthday:2027-02-28:b2", 35),
    ]
    years = events_of(engine, "membership_anniversary")
    assert [(e[1], e[2]["years"]) for e in years] == [("a1", 3), ("a2", 2)]
    again = await run(engine, "date_events", as_of=as_of, wf="again")
    assert again.counts.get("events_stored", 0) == 0
    # the Los Angeles customer's day comes when it is the 28th there
    later = as_of + timedelta(hours=10)
    await run(engine, "date_events", as_of=later, wf="later", schedule="date-events-2")
    assert [e[1] for e in events_of(engine, "birthday")] == ["b1", "b2", "b3"]


async def test_date_events_catch_up_every_day_since_the_last_completed_run(
    via: str, engine: Engine
) -> None:
    """The daily run of 1 March, then nothing until 6 March (four nights missed): the run of
    the 6th covers every customer's local day since the one the run of the 1st covered."""
    customers(
        engine,
        {"customer_id": "s1", "attributes": {"birthday": "1990-03-01"}},
        {"customer_id": "s2", "attributes": {"birthday": "1990-03-03"}},  # a missed night
        {"customer_id": "s3", "attributes": {"birthday": "1990-03-06"}},  # the day itself
        {"customer_id": "s4", "attributes": {"birthday": "1990-03-07"}},  # tomorrow
        {"customer_id": "s5", "attributes": {"birthday": "1990-02-27"}},  # before the 1st
        {
            "customer_id": "l1",
            "attributes": {"birthday": "1990-03-01"},  # 1 March came in LA after the run
            "timezone": "America/Los_Angeles",
        },
        {
            "customer_id": "l2",
            "attributes": {"birthday": "1990-03-06"},  # still the 5th in LA
            "timezone": "America/Los_Angeles",
        },
    )
    first = datetime(2027, 3, 1, 0, 5, tzinfo=SH)  # 28 February, 08:05 in Los Angeles
    await run(engine, "date_events", as_of=first, wf="d1", schedule="daily")
    assert [e[0] for e in events_of(engine, "birthday")] == ["birthday:2027-03-01:s1"]
    sixth = datetime(2027, 3, 6, 0, 5, tzinfo=SH)
    summary = await run(engine, "date_events", as_of=sixth, wf="d6", schedule="daily")
    assert sorted(e[0] for e in events_of(engine, "birthday")) == [
        "birthday:2027-03-01:l1",
        "birthday:2027-03-01:s1",
        "birthday:2027-03-03:s2",
        "birthday:2027-03-06:s3",
    ]
    assert summary.counts["birthdays"] == 3
    ages = {e[1]: (e[2]["date"], e[2]["age"]) for e in events_of(engine, "birthday")}
    assert ages["s2"] == ("2027-03-03", 37)
    # the next night covers one day: the 7th in Shanghai, the 6th in Los Angeles
    seventh = datetime(2027, 3, 7, 0, 5, tzinfo=SH)
    again = await run(engine, "date_events", as_of=seventh, wf="d7", schedule="daily")
    assert again.counts["birthdays"] == 2  # s4 and l2
    assert sorted(e[1] for e in events_of(engine, "birthday")) == [
        "l1",
        "l2",
        "s1",
        "s2",
        "s3",
        "s4",
    ]


def test_the_days_a_date_run_covers() -> None:
    from automations.models import DateEventsParams
    from store.automations import RunContext, covered_days

    params = DateEventsParams()
    as_of = datetime(2027, 3, 6, 0, 5, tzinfo=SH)
    ctx = RunContext("d", "2027-03-06", as_of, "Asia/Shanghai", params, since=None)
    assert covered_days(ctx, "Asia/Shanghai", 31) == (date(2027, 3, 6), date(2027, 3, 6))
    ctx = RunContext(
        "d", "2027-03-06", as_of, "Asia/Shanghai", params, since=as_of - timedelta(days=5)
    )
    assert covered_days(ctx, "Asia/Shanghai", 31) == (date(2027, 3, 2), date(2027, 3, 6))
    assert covered_days(ctx, "America/Los_Angeles", 31) == (date(2027, 3, 1), date(2027, 3, 5))
    assert covered_days(ctx, "Asia/Shanghai", 2) == (date(2027, 3, 5), date(2027, 3, 6))


# --------------------------------------------------------------------------- KPI digest


async def test_kpi_digest_writes_json_and_html_and_mails_them(
    via: str, engine: Engine, tmp_path: Path
) -> None:
    customers(engine, {"customer_id": "k1", "lifecycle_stage": "member", "tier": "gold"})
    with engine.begin() as conn:
        conn.execute(
            insert(EventRow), [purchase(1, "k1", 120, ago(2)), purchase(2, "k1", 80, ago(1))]
        )
    out = tmp_path / "kpi"
    params = {"window_days": 7, "out_dir": str(out), "email_to": ["ops@acme.example"]}
    summary = await run(engine, "kpi_digest", params, schedule="weekly-kpi")
    assert summary.counts == {"reports_written": 1, "emails": 1}
    import json

    figures = json.loads((out / "weekly-kpi-2026-11-20.json").read_text())
    assert figures["buyers"] == 1 and figures["repeat_buyers"] == 1 and figures["revenue"] == 200
    html = (out / "weekly-kpi-2026-11-20.html").read_text()
    assert "<svg" in html and "gold" in html
    with engine.connect() as conn:
        mail = conn.execute(
            select(
                OutboxMessageRow.dedupe_key, OutboxMessageRow.address, OutboxMessageRow.body_html
            )
        ).all()
    assert [(m[0], m[1]) for m in mail] == [
        ("kpi_digest:weekly-kpi:2026-11-20:ops@acme.example", "ops@acme.example")
    ]
    assert mail[0][2] == html


async def test_points_expiry_activates_lots_whose_return_window_closed(
    via: str, engine: Engine
) -> None:
    customers(engine, {"customer_id": "c1"}, {"customer_id": "c2"})
    with engine.begin() as conn:
        conn.execute(
            insert(PointsLotRow),
            [
                {**lot(1, "c1", 100, 100, ago(-300)), "available_at": ago(1)},  # window closed
                {**lot(2, "c1", 40, 0, ago(-300)), "available_at": ago(2)},  # closed, refunded
                {**lot(3, "c2", 70, 70, ago(-300)), "available_at": ago(-3)},  # still pending
                {**lot(4, "c2", 10, 10, ago(-300)), "available_at": None},  # never pending
            ],
        )
    before = versions(engine)
    summary = await run(engine, "points_expiry", {"notice_days": 0, "chunk_size": 1})
    assert summary.counts["lots_activated"] == 2
    assert summary.counts["points_activated"] == 100
    with engine.connect() as conn:
        activated = conn.execute(
            select(PointsLotRow.id).where(PointsLotRow.activated_at.is_not(None))
        ).scalars()
        ledger = conn.execute(
            select(PointsLedgerRow.lot_id, PointsLedgerRow.kind, PointsLedgerRow.amount)
        ).all()
        assert sorted(activated) == [1, 2]
    # a lot with nothing left is marked, but writes no entry of nothing
    assert [(i, k, float(a)) for i, k, a in ledger] == [(1, "activate", 100.0)]
    assert versions(engine)["c1"] > before["c1"]
    again = await run(engine, "points_expiry", {"notice_days": 0}, wf="wf-2")
    assert again.counts.get("lots_activated", 0) == 0
    with engine.connect() as conn:
        assert len(conn.execute(select(PointsLedgerRow.id)).all()) == 1
