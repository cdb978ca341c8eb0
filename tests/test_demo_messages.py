"""The demo's new sign-ups (`crmflow.demo_messages`): quiet hours never hold all three, the
sign-ups are idempotent across runs, and the report reads the messages back as each customer
got them, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crmflow import demo_messages as dm
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from journeys.timing import in_quiet_hours
from store.models import DeliveryRow, EnrollmentRow, OutboxMessageRow

IDS = [p.customer_id for p in dm.DEMO_SIGN_UPS]


def test_quiet_hours_never_hold_all_three_sign_ups() -> None:
    """Every quarter hour of a year (both DST changes in London and Los Angeles): one of the
    three may be sent to now and for the next hour still — the demo's wait is a minute."""
    s = Settings()
    t = datetime(2026, 1, 1, tzinfo=UTC)
    while t < datetime(2027, 1, 1, tzinfo=UTC):
        assert any(
            not in_quiet_hours(t, p.timezone, s.quiet_hours_start, s.quiet_hours_end)
            and not in_quiet_hours(
                t + timedelta(hours=1), p.timezone, s.quiet_hours_start, s.quiet_hours_end
            )
            for p in dm.DEMO_SIGN_UPS
        ), t
        t += timedelta(minutes=15)


def test_send_times_by_the_customers_clock() -> None:
    now = datetime(2026, 12, 3, 17, 24, tzinfo=UTC)  # 01:24 in Shanghai, 09:24 in LA
    assert dm.send_times(Settings(), now) == {
        "C0901": datetime(2026, 12, 4, 0, 0, tzinfo=UTC),  # 08:00 in Shanghai
        "C0902": now,
        "C0903": now,
    }


def test_sign_ups_twice_are_duplicates(engine: Engine, tmp_path: Path) -> None:
    rt = Runtime(Settings(home=tmp_path / "home"), engine)
    first = datetime(2026, 12, 3, 17, 24, 5, 123456, tzinfo=UTC)
    customers, events = dm.add_sign_ups(rt, first)
    assert (customers.stored, events.stored, events.conflicts) == (3, 3, 0)
    # a later run: the events carry the first run's time, so nothing changes
    customers, events = dm.add_sign_ups(rt, first + timedelta(days=1, minutes=3))
    assert (customers.stored, customers.updated, customers.duplicates) == (0, 0, 3)
    assert (events.stored, events.duplicates, events.conflicts) == (0, 3, 0)
    stamps = {e.occurred_at for e in dm.sign_up_events(engine, datetime.now(UTC), dm.DEMO_SIGN_UPS)}
    assert stamps == {first.replace(microsecond=0)}


def test_report_reads_messages_as_the_customer_got_them(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    since = datetime(2026, 12, 3, 17, 24, tzinfo=UTC)
    dm.add_sign_ups(Runtime(settings, engine), since - timedelta(days=1))
    text = "Hi Amelia Clarke,\n\nWelcome!\n\nUnsubscribe: https://crm.example.com/unsubscribe/" + (
        "x" * 200
    )
    with Session(engine) as s, s.begin():
        for cid in IDS:
            s.add(
                EnrollmentRow(
                    workflow_id=f"journey:welcome:{cid}",
                    journey="welcome",
                    version="v1",
                    customer_id=cid,
                    node="hello",
                    entered_at=since - timedelta(days=1),
                )
            )
        # C0902 this run through the outbox; C0903 on an earlier run; C0901 held
        s.add(
            DeliveryRow(
                dedupe_key="journey:welcome:C0902:hello:1",
                customer_id="C0902",
                channel="email",
                status="sent",
                subject="Welcome to Acme Rewards, Amelia Clarke",
                body=text,
                meta={"via": "outbox"},
                sent_at=since + timedelta(seconds=5),
            )
        )
        s.add(
            OutboxMessageRow(
                dedupe_key="journey:welcome:C0902:hello:1",
                customer_id="C0902",
                channel="email",
                address="amelia.clarke@example.com",
                subject="Welcome to Acme Rewards, Amelia Clarke",
                body_text=text,
            )
        )
        s.add(
            DeliveryRow(
                dedupe_key="journey:welcome:C0903:hello:1",
                customer_id="C0903",
                channel="email",
                status="sent",
                subject="Welcome to Acme Rewards, Diego Alvarez",
                body="Hi Diego Alvarez,",
                meta={"via": "outbox"},
                sent_at=since - timedelta(hours=20),
            )
        )
    now = since + timedelta(seconds=10)  # 01:24 in Shanghai: quiet hours hold C0901
    report = dm.messages_report(engine, settings, since, now, waited=1.0)
    assert report.sent_this_run == 1 and report.by_channel == {"email": 1}
    assert [(m.customer_id, m.this_run) for m in report.shown] == [
        ("C0902", True),
        ("C0903", False),
    ]
    amelia = report.shown[0]
    assert amelia.to == "a***@example.com" and amelia.via == "outbox"
    assert amelia.lines[:2] == ["Hi Amelia Clarke,", "Welcome!"]
    assert amelia.lines[2].startswith("Unsubscribe: https://crm.example.com/unsubscribe/")
    assert amelia.lines[2].endswith("…") and len(amelia.lines[2]) < 80
    assert report.shown[1].to == "d***@example.com"  # no outbox row: the profile's address
    [held] = report.waiting
    assert held.customer_id == "C0901" and "quiet hours" in held.reason
    assert held.until == datetime(2026, 12, 4, 0, 0, tzinfo=UTC)
    assert held.until_local == "2026-12-04 08:00 Asia/Shanghai"
    lines = dm.describe(report, smtp=False)
    assert lines[0].startswith("  Messages sent during this run: 1 (SMTP is not configured")
    assert "      Subject: Welcome to Acme Rewards, Amelia Clarke" in lines
    assert any("2026-12-03 17:24 Europe/London" in line for line in lines)
    assert any("Zhou Xin (C0901, Asia/Shanghai): held by quiet hours" in line for line in lines)
