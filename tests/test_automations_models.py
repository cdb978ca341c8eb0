"""The pure parts of scheduled automations: cron checks and previews, the schedules file's
errors (with lines), and the tier policy's decisions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from automations.cron import cron_problem, next_runs
from automations.models import PointsExpirySchedule, SchedulesFile
from crmflow.schedules import fingerprint, load_schedules, parse_when, runs_between
from rules.models import Program
from rules.source import SourceError, yaml_load
from rules.tiers import TierStanding, qualified_for, review_tier
from tests.rules_helpers import REPO

PROGRAM = Program.model_validate(yaml_load((REPO / "examples/program.yaml").read_text()))
NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("0 2 * * *", None),
        ("@daily", None),
        ("*/15 9-17 * * 1-5", None),
        ("61 2 * * *", "out of range"),
        ("0 2 * *", "has 4 field(s)"),
        ("0 2 * * * *", "has 6 field(s)"),
        ("0 0 30 2 *", "ever fires"),
        ("every day", "has 2 field(s)"),
    ],
)
def test_cron_expressions_are_checked_with_the_reason(expr: str, problem: str | None) -> None:
    found = cron_problem(expr)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "five fields" in found


def test_previews_follow_the_zone_and_its_daylight_saving_shift() -> None:
    after = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
    runs = next_runs("30 2 * * *", "America/New_York", after, 3)
    # 02:30 New York time is 07:30 UTC in winter and 06:30 UTC once clocks go forward
    # (2026-03-08, when 02:30 does not exist at all)
    utc = [r.astimezone(UTC).isoformat() for r in runs]
    assert utc[0] == "2026-03-07T07:30:00+00:00"
    assert utc[2] == "2026-03-09T06:30:00+00:00"
    assert all(r.tzinfo is not None for r in runs)
    sh = next_runs("0 2 * * *", "Asia/Shanghai", NOW, 2)
    assert [r.isoformat() for r in sh] == [
        "2026-11-21T02:00:00+08:00",
        "2026-11-22T02:00:00+08:00",
    ]


def test_the_example_schedules_file_is_valid() -> None:
    f = load_schedules(REPO / "examples/schedules.yaml")
    assert {s.automation for s in f.schedules} == {
        "points_expiry",
        "tier_review",
        "tag_expiry",
        "churn_scan",
        "lead_sla",
        "date_events",
        "kpi_digest",
        "model_fit",
    }
    assert all(s.timezone == "Asia/Shanghai" for s in f.schedules)


def test_a_bad_schedules_file_names_each_problem_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "timezone: Mars/Base\n"
        "schedules:\n"
        "  - name: expiry\n"
        '    cron: "61 2 * * *"\n'
        "    automation: points_expiry\n"
        "    params: {notice_days: -1, bogus: 1}\n"
        "    catchup_window: soon\n"
        "  - name: expiry\n"
        '    cron: "0 3 * * *"\n'
        "    automation: tag_expiry\n"
    )
    with pytest.raises(SourceError) as caught:
        load_schedules(path)
    found = {(e.line, e.message.split(":")[0]) for e in caught.value.errors}
    assert (1, "timezone") in found
    assert (4, "schedules.0.cron") in found
    assert (6, "schedules.0.params.notice_days") in found
    assert (6, "schedules.0.params.bogus") in found
    assert (7, "schedules.0.catchup_window") in found
    path.write_text(
        "schedules:\n"
        "  - {name: a, cron: '0 2 * * *', automation: tag_expiry}\n"
        "  - {name: a, cron: '0 3 * * *', automation: tag_expiry}\n"
    )
    with pytest.raises(SourceError) as caught:
        load_schedules(path)
    assert "'a' repeated" in str(caught.value)
    path.write_text("[]\n")
    with pytest.raises(SourceError, match="is a mapping"):
        load_schedules(path)


def test_the_fingerprint_changes_with_the_definition_but_not_with_paused() -> None:
    base = {"name": "x", "cron": "0 2 * * *", "automation": "points_expiry", "timezone": "UTC"}
    one = PointsExpirySchedule.model_validate(base)
    assert fingerprint(one, "q") == fingerprint(
        PointsExpirySchedule.model_validate({**base, "paused": True}), "q"
    )
    assert fingerprint(one, "q") != fingerprint(one, "other-queue")
    changed = PointsExpirySchedule.model_validate({**base, "params": {"notice_days": 7}})
    assert fingerprint(one, "q") != fingerprint(changed, "q")


def test_backfill_windows_are_whole_local_days() -> None:
    s = SchedulesFile.model_validate(
        {"timezone": "Asia/Shanghai", "schedules": [{**_daily(), "name": "n"}]}
    ).get("n")
    start = parse_when("2026-11-01", "Asia/Shanghai", end=False)
    end = parse_when("2026-11-03", "Asia/Shanghai", end=True)
    assert [t.isoformat() for t in runs_between(s, start, end)] == [
        "2026-11-01T02:00:00+08:00",
        "2026-11-02T02:00:00+08:00",
        "2026-11-03T02:00:00+08:00",
    ]
    assert parse_when("2026-11-01T10:00+00:00", "Asia/Shanghai", end=False).hour == 10
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_when("yesterday", "UTC", end=False)


def _daily() -> dict[str, str]:
    return {"cron": "0 2 * * *", "automation": "points_expiry"}


# --------------------------------------------------------------------------- tier policy


def standing(tier: str, spend: float, **kw: object) -> TierStanding:
    return TierStanding(tier=tier, spend=spend, points_earned=0, **kw)  # type: ignore[arg-type]


def test_qualified_for_takes_the_highest_threshold_reached() -> None:
    assert qualified_for(PROGRAM, 0, 0) == "basic"
    assert qualified_for(PROGRAM, 1999.99, 0) == "basic"
    assert qualified_for(PROGRAM, 2000, 0) == "silver"
    assert qualified_for(PROGRAM, 25000, 0) == "platinum"


def test_grace_period_policy() -> None:
    today = NOW.date()
    up = review_tier(PROGRAM, standing("silver", 9000), NOW, today)
    assert (up.action, up.to_tier) == ("upgrade", "gold")
    start = review_tier(PROGRAM, standing("gold", 100), NOW, today)
    assert (start.action, start.to_tier) == ("grace_start", "gold")
    assert "grace until 2026-12-20" in start.reason
    inside = review_tier(
        PROGRAM, standing("gold", 100, grace_since=NOW - timedelta(days=29)), NOW, today
    )
    assert inside.action == "keep" and "in grace until" in inside.reason
    over = review_tier(
        PROGRAM, standing("gold", 2500, grace_since=NOW - timedelta(days=30)), NOW, today
    )
    assert (over.action, over.from_tier, over.to_tier) == ("downgrade", "gold", "silver")
    back = review_tier(
        PROGRAM, standing("gold", 8000, grace_since=NOW - timedelta(days=3)), NOW, today
    )
    assert back.action == "grace_end"
    assert review_tier(PROGRAM, standing("gold", 8000), NOW, today).action == "keep"
    no_grace = PROGRAM.model_copy(deep=True)
    no_grace.tier_policy.downgrade.grace_days = 0  # type: ignore[union-attr]
    now_down = review_tier(no_grace, standing("gold", 0), NOW, today)
    assert (now_down.action, now_down.to_tier) == ("downgrade", "basic")


def test_anniversary_policy_downgrades_on_the_membership_anniversary_only() -> None:
    program = Program.model_validate(
        {
            **PROGRAM.model_dump(),
            "tier_policy": {"window_days": 365, "downgrade": {"policy": "anniversary"}},
        }
    )
    joined = date(2023, 11, 25)
    changed = datetime(2026, 1, 10, tzinfo=UTC)
    before = review_tier(
        program,
        standing("gold", 100, tier_since=changed, anniversary=joined),
        NOW,
        date(2026, 11, 24),
    )
    assert before.action == "keep" and "anniversary" in before.reason
    on = review_tier(
        program,
        standing("gold", 100, tier_since=changed, anniversary=joined),
        NOW + timedelta(days=5),
        date(2026, 11, 25),
    )
    assert (on.action, on.to_tier) == ("downgrade", "basic")
    assert "2026-11-25" in on.reason
    # moved to gold after this year's anniversary: kept until next year's
    recent = review_tier(
        program,
        standing("gold", 100, tier_since=datetime(2026, 11, 26, tzinfo=UTC), anniversary=joined),
        NOW + timedelta(days=10),
        date(2026, 11, 30),
    )
    assert recent.action == "keep"
    leap = review_tier(
        program,
        standing(
            "gold", 0, tier_since=datetime(2026, 1, 1, tzinfo=UTC), anniversary=date(2024, 2, 29)
        ),
        datetime(2027, 2, 28, tzinfo=UTC),
        date(2027, 2, 28),
    )
    assert leap.action == "downgrade"
    unknown = review_tier(program, standing("gold", 0), NOW, NOW.date())
    assert unknown.action == "keep" and "no membership date" in unknown.reason
    assert ZoneInfo("UTC")  # zone data present
