"""Pure checks of issue 17 on the example rollout: the migration gate needs a check of the
file the template names (with enough rows, reconciled with the store when imported), a plan
past the holiday calendar warns, notices count lateness in working days and a back-dated
project's first notices are one summary per person."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from projects.health import health, status_report
from projects.models import MigrationSummary, load_holidays, load_team, load_template
from projects.plan import calendar_warnings
from projects.reminders import due_notices, lateness, next_wakeup
from projects.state import (
    ProjectState,
    check_item,
    complete_milestone,
    gate_blockers,
    new_project,
    record_migration_check,
    start_stage,
)

ROLLOUT = Path(__file__).resolve().parents[1] / "examples" / "rollout"
T0 = datetime(2025, 3, 3, 2, tzinfo=UTC)  # 10:00 in Shanghai


def example(start: date = date(2025, 3, 3), now: datetime = T0) -> ProjectState:
    return new_project(
        "acme",
        "acme",
        load_template(ROLLOUT / "crm-rollout.yaml"),
        None,
        load_team(ROLLOUT / "team.yaml"),
        load_holidays(ROLLOUT / "holidays.yaml"),
        start,
        now,
    )


def summary(source: str, rows: int, **extra: object) -> MigrationSummary:
    return MigrationSummary.model_validate(
        {
            "checked_at": T0,
            "source": source,
            "rows_in": rows,
            "rows_out": rows,
            "rejected": 0,
            "fill_rates": {"name": 1.0, "phone": 1.0, "email": 1.0},
            "duplicate_rows": 0,
            "invalid_rows": 0,
            "amount_source": Decimal("100.00"),
            "amount_mapped": Decimal("100.00"),
            **extra,
        }
    )


def migration_blockers(s: ProjectState) -> list[str]:
    return [b for b in gate_blockers(s, "migration-sign-off") if "migration check" in b]


def test_the_migration_gate_needs_the_named_file_with_enough_rows() -> None:
    s = example()
    assert migration_blockers(s) == [
        "no migration check has been recorded; run the migration check on the source data first"
    ]
    # a clean, hand-picked three rows under another name
    assert record_migration_check(s, summary("/tmp/clean.csv", 3)) == [
        "the check was of 'clean.csv'; the template's migration gate needs a check of 'legacy.csv'",
        "the source has 3 rows; the template needs a check of at least 35",
    ]
    [blocker] = migration_blockers(s)
    assert blocker.startswith("the latest migration check (2025-03-03, /tmp/clean.csv) does not")
    # the same three rows renamed: still too few
    assert record_migration_check(s, summary("legacy.csv", 3)) == [
        "the source has 3 rows; the template needs a check of at least 35"
    ]
    # the export itself, hash recorded: the gate opens
    good = summary("exports/legacy.csv", 40, source_sha256="ab" * 32)
    assert record_migration_check(s, good) == []
    assert migration_blockers(s) == []
    assert s.migration_check is not None and s.migration_check.source_sha256 == "ab" * 32
    # imported, but the store holds fewer rows and less money than were migrated
    short = good.model_copy(update={"target_rows": 38, "amount_target": Decimal("90.00")})
    assert record_migration_check(s, short) == [
        "the store holds 38 of the 40 migrated rows",
        "the target's amounts differ from the migrated ones by 10.00, above the tolerance 0.01",
    ]
    assert migration_blockers(s)


def test_a_plan_past_the_holiday_calendar_warns() -> None:
    s = example()
    assert status_report(s, T0).warnings == []
    late = example(date(2027, 9, 6), datetime(2027, 9, 6, 2, tzinfo=UTC))
    assert late.plan.finish > date(2027, 12, 31)
    [warning] = status_report(late, datetime(2027, 9, 6, 2, tzinfo=UTC)).warnings
    assert warning == (
        f"the plan runs to {late.plan.finish}, past the holiday calendar, which knows the days "
        "off until 2027-12-31: after that only weekends are days off; add the holidays of "
        "2028 to the holidays file"
    )
    assert calendar_warnings(late.calendar, date(2024, 6, 3), date(2025, 1, 1)) == [
        "the plan starts on 2024-06-03, before the holiday calendar, which knows the days off "
        "from 2025-01-01"
    ]
    assert calendar_warnings(None, date(2024, 6, 3), date(2030, 1, 1)) == []


def test_the_2026_calendar_is_the_official_one() -> None:
    cal = example().work_calendar()
    # Spring Festival 2026: 15-23 February off, Saturdays 14 and 28 February worked
    assert [cal.is_working(date(2026, 2, d)) for d in (13, 14, 16, 23, 24, 28)] == [
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    # National Day 2026: 1-7 October off, Sunday 20 September and Saturday 10 October worked
    assert not any(cal.is_working(date(2026, 10, d)) for d in range(1, 8))
    assert cal.is_working(date(2026, 9, 20)) and cal.is_working(date(2026, 10, 10))
    assert not cal.is_working(date(2027, 2, 9))  # the 2027 Spring Festival


def test_lateness_counts_working_days_and_days() -> None:
    s = example()
    due = date(2025, 3, 14)
    assert lateness(s, due, due + timedelta(days=449)) == "304 working days late (449 days)"
    # counted by hand: weekdays after the due date up to 2026-06-06, less the holidays
    # file's weekday holidays, plus its make-up Saturdays and Sundays
    assert lateness(s, date(2025, 3, 11), date(2025, 3, 12)) == "1 working day late"


def test_a_back_dated_project_starts_with_one_summary_per_person() -> None:
    now = datetime(2026, 5, 26, 2, tzinfo=UTC)
    s = example(now=now)  # planned from 2025-03-03, created 449 days later
    first = due_notices(s, now, policy_days=True)
    assert {n.kind for n in first} == {"summary"}
    assert sorted(r.email for n in first for r in n.recipients) == sorted(
        p.email for p in s.team.people
    )
    pm = next(n for n in first if n.recipients[0].name == "Peter Wang")
    assert "Milestone 'Project kick-off'" in pm.text and "(449 days)" in pm.text
    # the old way: one notice per item and level, all at once
    assert len(due_notices(s, now, policy_days=False)) > 100
    # once sent (with what they stand for), nothing is due again
    s.sent.update(dict.fromkeys([n.key for n in first], now))
    s.sent.update(dict.fromkeys([k for n in first for k in n.covers], now))
    assert due_notices(s, now + timedelta(days=3), policy_days=True) == []
    assert next_wakeup(s, now, policy_days=True) is None


def test_escalations_found_late_go_out_on_their_policy_days() -> None:
    s = example()
    # requirements done on time except one item, found overdue later: level 1 now, level 2
    # two working days after it (policy: after 1, 3 and 5 working days), not on the same day
    complete_milestone(s, "kick-off", "Peter Wang", T0)
    for item, who in [
        ("stakeholder-interviews", "Lily Zhao"),
        ("smart-goals", "Lily Zhao"),
        ("kpi-baseline", "Marco Liu"),
    ]:
        check_item(s, item, who, T0)
    s.sent["acme:first"] = T0  # not the project's first notices
    late = datetime(2025, 3, 27, 2, tzinfo=UTC)  # the budget was due 2025-03-14
    got = [n for n in due_notices(s, late, policy_days=True) if n.ref == "budget"]
    assert [n.level for n in got] == ["escalate-1"]
    assert "is 9 working days late (13 days)" in got[0].text
    s.sent[got[0].key] = late
    assert [n.ref for n in due_notices(s, late, policy_days=True) if n.ref == "budget"] == []
    wake = next_wakeup(s, late, policy_days=True)
    assert wake is not None and wake <= datetime(2025, 3, 31, 1, tzinfo=UTC)
    level2 = [
        n
        for n in due_notices(s, datetime(2025, 3, 31, 2, tzinfo=UTC), policy_days=True)
        if n.ref == "budget"
    ]
    assert [n.level for n in level2] == ["escalate-2"]
    assert level2[0].send_at == datetime(2025, 3, 31, 1, tzinfo=UTC)  # 09:00 Monday


def test_a_stage_started_early_by_override_turns_health_amber() -> None:
    s = example()
    assert health(s, T0).status == "green"
    start_stage(s, "vendor-selection", "Peter Wang", T0, override="RFP is urgent")
    h = health(s, T0)
    assert h.status == "amber"
    assert [(r.kind, r.ref, r.message) for r in h.reasons] == [
        (
            "stage",
            "vendor-selection",
            "stage 'Vendor selection' started on 2025-03-03 before 'Requirements & SMART "
            "goals' finished (override: RFP is urgent)",
        )
    ]


def test_the_next_reminder_is_woken_for_after_an_earlier_one_went_out() -> None:
    s = example()
    s.sent["acme:first"] = T0
    # the budget is due 2025-03-14: reminders 5 and 1 working days before, at 09:00
    at_remind5 = datetime(2025, 3, 7, 1, tzinfo=UTC)
    [r5] = [n for n in due_notices(s, at_remind5, policy_days=True) if n.ref == "budget"]
    assert r5.level == "remind-5"
    s.sent[r5.key] = at_remind5
    # send whatever else falls due before the 13th, as the workflow would
    now, wakes = at_remind5, []
    while True:
        wake = next_wakeup(s, now, policy_days=True)
        assert wake is not None
        if wake >= datetime(2025, 3, 13, tzinfo=UTC):
            break
        s.sent.update(dict.fromkeys([n.key for n in due_notices(s, wake, policy_days=True)], wake))
        now = wake
        wakes.append(wake)
    # the one working day reminder still wakes the project (it did not, once the five day
    # one had gone out)
    assert wake == datetime(2025, 3, 13, 1, tzinfo=UTC)
    assert "acme:budget:remind-1:2025-03-14" in {
        n.key for n in due_notices(s, wake, policy_days=True)
    }
