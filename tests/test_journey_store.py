"""store/journeys.py's statements on the send path, on SQLite and PostgreSQL: the profile in one
query, the delivery ledger, the step log, sends counted for caps; and `journey_deliver` when
another attempt of the same step records it between its reads and its writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, insert, select

from activities.channels.outbox import OutboxChannel
from activities.journey_activities import JourneyActivities
from crmflow.contracts.journeys import DeliverRequest
from crmflow.settings import Settings
from store import journeys as jstore
from store.models import (
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    JourneyStepRow,
    OutboxMessageRow,
    PointsLotRow,
    TagRow,
)

AT = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def reference_profile(conn: Connection, customer_id: str, at: datetime) -> dict[str, Any] | None:
    """The profile as three queries read it (customer, balance, tags): what the one query
    must return."""
    c = conn.execute(
        select(CustomerRow.__table__).where(CustomerRow.customer_id == customer_id)
    ).first()
    if c is None:
        return None
    balance = conn.execute(
        select(func.coalesce(func.sum(PointsLotRow.remaining), 0)).where(
            PointsLotRow.customer_id == customer_id,
            PointsLotRow.remaining > 0,
            (PointsLotRow.expires_at.is_(None)) | (PointsLotRow.expires_at > at),
        )
    ).scalar_one()
    tags = sorted(
        conn.execute(
            select(TagRow.tag).where(
                TagRow.customer_id == customer_id,
                (TagRow.expires_at.is_(None)) | (TagRow.expires_at > at),
            )
        ).scalars()
    )
    return {
        "customer_id": c.customer_id,
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "timezone": c.timezone or "UTC",
        "locale": c.locale,
        "consent": dict(c.consent or {}),
        "lifecycle_stage": c.lifecycle_stage,
        "owner": c.owner,
        "tier": c.tier,
        "attributes": dict(c.attributes or {}),
        "points_balance": float(balance),
        "tags": tags,
    }


def seed(engine: Engine) -> None:
    day = timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            insert(CustomerRow),
            [
                {
                    "customer_id": "A",
                    "name": "Ann",
                    "email": "a@example.com",
                    "timezone": "Asia/Shanghai",
                    "locale": "zh-CN",
                    "consent": {"email": True, "sms": False},
                    "tier": "gold",
                    "attributes": {"city": "Shanghai"},
                },
                {
                    "customer_id": "B",
                    "name": "Bo",
                    "email": None,
                    "timezone": "",  # not set: the profile says UTC
                    "locale": None,
                    "consent": {},
                    "tier": None,
                    "attributes": {},
                },
            ],
        )
        conn.execute(
            insert(TagRow),
            [
                {"customer_id": "A", "tag": "vip", "expires_at": AT + day},
                {"customer_id": "A", "tag": "early", "expires_at": None},
                {"customer_id": "A", "tag": "lapsed", "expires_at": AT - day},
                {"customer_id": "A", "tag": "now", "expires_at": AT},  # expires at `at`: gone
            ],
        )
        lots = [
            (Decimal("100.5"), AT + day),
            (Decimal("25"), None),
            (Decimal("40"), AT - day),  # expired
            (Decimal("0"), AT + day),  # used up
        ]
        conn.execute(
            insert(PointsLotRow),
            [
                {
                    "customer_id": "A",
                    "earned": remaining + 10,
                    "remaining": remaining,
                    "earned_at": AT - 10 * day,
                    "expires_at": expires,
                }
                for remaining, expires in lots
            ],
        )


def test_the_profile_is_one_query_with_the_unexpired_tags_and_points(engine: Engine) -> None:
    seed(engine)
    with engine.connect() as conn:
        a = jstore.message_profile(conn, "A", AT)
        b = jstore.message_profile(conn, "B", AT)
        assert a == reference_profile(conn, "A", AT)
        assert b == reference_profile(conn, "B", AT)
        assert jstore.message_profile(conn, "nobody", AT) is None
        later = AT + timedelta(days=2)  # vip and the 100.5 lot have expired by then
        assert jstore.message_profile(conn, "A", later) == reference_profile(conn, "A", later)
    assert a is not None and b is not None
    assert a["tags"] == ["early", "vip"] and a["points_balance"] == 125.5
    assert a["consent"] == {"email": True, "sms": False} and a["attributes"] == {"city": "Shanghai"}
    assert b["tags"] == [] and b["points_balance"] == 0.0 and b["timezone"] == "UTC"


def test_the_ledger_opens_once_and_closes(engine: Engine) -> None:
    seed(engine)
    with engine.begin() as conn:
        kw: dict[str, Any] = {"customer_id": "A", "channel": "email", "at": AT}
        assert jstore.open_delivery(conn, dedupe_key="k", status="sending", **kw)
        assert not jstore.open_delivery(conn, dedupe_key="k", status="suppressed", **kw)
        assert jstore.find_delivery(conn, "k") == jstore.Delivery("sending", None, None)
        jstore.set_delivery_status(conn, "k", "retrying")
        assert jstore.find_delivery(conn, "k") == jstore.Delivery("retrying", None, None)
        jstore.close_delivery(conn, "k", "sent", AT, {"via": "email"})
        assert jstore.find_delivery(conn, "k") == jstore.Delivery("sent", None, AT)
        assert conn.execute(select(DeliveryRow.meta)).scalar_one() == {"via": "email"}
        jstore.close_delivery(conn, "k", "failed", AT, {"error": "x"})
        assert jstore.find_delivery(conn, "k") == jstore.Delivery("failed", None, None)
        assert jstore.find_delivery(conn, "other") is None


def test_steps_log_once_and_enrollments_move(engine: Engine) -> None:
    seed(engine)
    with engine.begin() as conn:
        jstore.ensure_enrollment(
            conn, workflow_id="w", journey="j", version="v", customer_id="A", entry_no=1,
            entered_at=AT, node="first",
        )  # fmt: skip
        jstore.ensure_enrollment(
            conn, workflow_id="w", journey="j", version="v2", customer_id="A", entry_no=2,
            entered_at=AT + timedelta(hours=1),
        )  # fmt: skip
        step: dict[str, Any] = {
            "workflow_id": "w", "journey": "j", "version": "v", "customer_id": "A",
            "node": "first", "at": AT,
        }  # fmt: skip
        assert jstore.record_step(conn, jstore.step_row(step_key="s1", kind="entered", **step))
        assert not jstore.record_step(conn, jstore.step_row(step_key="s1", kind="sent", **step))
        jstore.record_steps(
            conn,
            [
                jstore.step_row(step_key="s1", kind="sent", **step),
                jstore.step_row(step_key="s2", kind="sent", reason="r", variant="B", **step),
            ],
        )
        jstore.record_steps(conn, [])
        logged = conn.execute(
            select(JourneyStepRow.step_key, JourneyStepRow.kind, JourneyStepRow.reason)
            .order_by(JourneyStepRow.step_key)
        ).all()  # fmt: skip
        assert [tuple(r) for r in logged] == [("s1", "entered", None), ("s2", "sent", "r")]

        def enrollment() -> tuple[Any, ...]:
            e = EnrollmentRow
            return tuple(
                conn.execute(
                    select(e.version, e.status, e.node, e.node_since, e.variant, e.finished_at,
                           e.outcome)
                ).one()
            )  # fmt: skip

        assert enrollment() == ("v", "active", "first", AT, None, None, None)
        later = AT + timedelta(minutes=5)
        jstore.move_enrollment(conn, "w", node="pause", at=later, variant="B")
        assert enrollment() == ("v", "active", "pause", later, "B", None, None)
        jstore.move_enrollment(conn, "w", node=None, at=later, finish="exited", outcome="why")
        assert enrollment() == ("v", "exited", None, later, "B", later, "why")


@pytest.mark.parametrize("recorded", ["sent", "sending"])
async def test_a_step_recorded_by_another_attempt_meanwhile_is_not_opened_twice(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, recorded: str
) -> None:
    """Deliver reads first and writes last: when another attempt of the same step records
    it in between, its insert finds the key, and deliver carries on as if it had come
    second: a decided step's outcome is returned as it is; one still `sending` is sent
    again with the same dedupe key (the outbox keeps one row)."""
    seed(engine)
    with engine.begin() as conn:
        jstore.open_delivery(
            conn, dedupe_key="w:first:1", customer_id="A", channel="email", status=recorded,
            at=AT,
        )  # fmt: skip
    real = jstore.find_delivery
    calls: list[str] = []

    def unseen_once(conn: Connection, key: str) -> jstore.Delivery | None:
        calls.append(key)
        return None if len(calls) == 1 else real(conn, key)

    monkeypatch.setattr(jstore, "find_delivery", unseen_once)
    conf = Settings(frequency_cap_messages=0, quiet_hours_start="00:00", quiet_hours_end="00:00")
    acts = JourneyActivities(engine, conf, {"outbox": OutboxChannel(engine)})
    req = DeliverRequest(
        workflow_id="w", journey="j", version="v", customer_id="A", node="first",
        step_key="w:first:1", channel="email", template={"subject": "Hi", "text": "t"},
        next_node="second", entered_at=AT, at=AT,
    )  # fmt: skip
    result = await acts.deliver(req)
    assert calls == ["w:first:1", "w:first:1"]
    assert result.status == "sent"
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxMessageRow.dedupe_key)).scalars().all()
        status = conn.execute(select(DeliveryRow.status)).scalars().all()
        node = conn.execute(select(EnrollmentRow.node)).scalar_one()
    if recorded == "sent":  # the other attempt's outcome: nothing sent, nothing logged
        assert result.sent_at == AT and rows == [] and node == "first"
    else:
        assert rows == ["w:first:1"] and node == "second"
    assert status == ["sent"]
