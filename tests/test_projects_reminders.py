"""Reminders and escalations: the right people at the right (working) day, each notice once."""

from __future__ import annotations

from datetime import UTC, date, datetime

from projects.models import Holiday, HolidayCalendar, Team, check_template
from projects.reminders import Notice, due_notices, next_wakeup
from projects.state import ProjectState, check_item, mark_sent, new_project, sign_off
from rules.source import parse_yaml

TEMPLATE = """\
template: t
title: T
stages:
  - id: build
    name: Build
    duration: 5
    checklist:
      - {id: spec, title: Spec written, owner: business_owner}
      - {id: extra, title: Nice to have, owner: business_owner, required: false}
  - id: launch
    name: Launch
    duration: 1
    depends_on: [{stage: build, lag: 10}]
    gates:
      - id: go
        name: Go decision
        at: start
        sign_off: [executive_sponsor, {role: business_owner, count: 2}]
reminders:
  before_days: [2, 0]
  send_at: "09:00"
  escalation:
    - {to: owner, after_days: 1}
    - {to: project_manager, after_days: 2}
    - {to: executive_sponsor, after_days: 4}
"""
TEAM = Team.model_validate(
    {
        "timezone": "Asia/Shanghai",  # UTC+8: 09:00 there is 01:00 UTC
        "people": [
            {"name": "Pat", "email": "pat@example.com", "roles": ["project_manager"]},
            {"name": "Sam", "email": "sam@example.com", "roles": ["executive_sponsor"]},
            {"name": "Bo", "email": "bo@example.com", "roles": ["business_owner"]},
            {"name": "Bea", "email": "bea@example.com", "roles": ["business_owner"]},
        ],
    }
)
# Wednesday 5th off: build runs Mon 3rd - Mon 10th, so the spec is due Monday 10th
HOLIDAYS = HolidayCalendar(holidays=[Holiday(date=date(2025, 3, 5), name="Day off")])


def make() -> ProjectState:
    t = check_template(parse_yaml(TEMPLATE, "t.yaml"))
    return new_project(
        "p", "Pilot", t, {}, TEAM, HOLIDAYS, date(2025, 3, 3), datetime(2025, 3, 1, tzinfo=UTC)
    )


def utc(day: int, hour: int = 1, minute: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=UTC)


def spec(notices: list[Notice]) -> list[Notice]:
    return [n for n in notices if n.ref == "spec"]


def test_reminder_times_skip_the_holiday() -> None:
    s = make()
    # two working days before Monday 10th: Thursday 6th (Friday 7th is one)
    assert next_wakeup(s, utc(1)) == utc(6)
    assert spec(due_notices(s, utc(6, 0, 59))) == []
    (n,) = spec(due_notices(s, utc(6)))
    assert n.key == "p:spec:remind-2:2025-03-10"
    assert (n.level, n.due, n.send_at, n.to_roles) == (
        "remind-2",
        date(2025, 3, 10),
        utc(6),
        ["business_owner"],
    )
    assert [r.email for r in n.recipients] == ["bo@example.com", "bea@example.com"]
    assert n.subject == "[Pilot] Reminder: Spec written is due on 2025-03-10"
    assert "in 2 working day(s)" in n.text


def test_a_sent_notice_is_never_issued_again() -> None:
    s = make()
    first = due_notices(s, utc(6))
    assert [n.key for n in first] == ["p:spec:remind-2:2025-03-10"]
    mark_sent(s, [n.key for n in first], utc(6))
    assert due_notices(s, utc(6)) == []
    assert due_notices(s, utc(7)) == []
    assert next_wakeup(s, utc(6)) == utc(10)  # the due-day reminder
    # a restarted worker gets the state back from history: same keys, same answer
    again = ProjectState.model_validate_json(s.model_dump_json())
    assert due_notices(again, utc(6)) == []
    assert [n.key for n in spec(due_notices(again, utc(10)))] == ["p:spec:remind-0:2025-03-10"]
    assert [n.key for n in spec(due_notices(s, utc(10)))] == ["p:spec:remind-0:2025-03-10"]


def test_only_the_latest_reminder_after_an_outage() -> None:
    s = make()
    got = spec(due_notices(s, utc(10, 2)))
    assert [(n.level, n.subject) for n in got] == [("remind-0", "[Pilot] Due today: Spec written")]


def test_escalations_owner_then_manager_then_sponsor() -> None:
    s = make()
    assert spec(due_notices(s, utc(11, 0))) == []  # reminders stop once the due date passed
    (e1,) = spec(due_notices(s, utc(11)))
    assert (e1.key, e1.to_roles) == ("p:spec:escalate-1:2025-03-10", ["business_owner"])
    assert e1.subject == "[Pilot] Overdue: Spec written (due 2025-03-10)"
    mark_sent(s, [e1.key], utc(11))
    assert next_wakeup(s, utc(11)) == utc(12)
    (e2,) = spec(due_notices(s, utc(12)))
    assert (e2.level, [r.name for r in e2.recipients]) == ("escalate-2", ["Pat"])
    # after a long outage every level that came due goes out, each once
    later = spec(due_notices(s, utc(14)))
    assert [(n.level, [r.name for r in n.recipients]) for n in later] == [
        ("escalate-2", ["Pat"]),
        ("escalate-3", ["Sam"]),
    ]


def test_done_items_and_optional_items_get_nothing() -> None:
    s = make()
    check_item(s, "spec", "Bo", utc(6))
    assert spec(due_notices(s, utc(14))) == []
    assert all(n.ref != "extra" for n in due_notices(s, utc(14)))


def test_gate_reminders_go_to_the_roles_still_needed() -> None:
    s = make()
    # build starts and finishes on Tue 4th; ten working days' lag (Wed 5th off): Thu 20th
    check_item(s, "spec", "Bo", utc(4))
    gate = s.plan.gate("go")
    assert gate is not None and gate.due == date(2025, 3, 20)
    assert [n for n in due_notices(s, utc(17)) if n.ref == "go"] == []
    (n,) = [n for n in due_notices(s, utc(18)) if n.ref == "go"]
    assert n.key == "p:go:remind-2:2025-03-20"
    assert n.to_roles == ["executive_sponsor", "business_owner"]
    assert [r.name for r in n.recipients] == ["Sam", "Bo", "Bea"]
    sign_off(s, "go", "Sam", utc(18))
    sign_off(s, "go", "Bo", utc(18))
    (n,) = [n for n in due_notices(s, utc(20)) if n.ref == "go"]
    assert (n.level, [r.name for r in n.recipients]) == ("remind-0", ["Bea"])
    sign_off(s, "go", "Bea", utc(20))
    assert next_wakeup(s, utc(20)) is None
