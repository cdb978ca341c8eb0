"""Plan arithmetic: working days, holidays, lags, excluded stages, critical path, replanning."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projects.models import (
    Dependency,
    Holiday,
    HolidayCalendar,
    Stage,
    Template,
    check_template,
)
from projects.plan import Actual, WorkCalendar, compute_plan, effective_dependencies, take_baseline
from rules.source import parse_yaml

MON = date(2025, 3, 3)  # a Monday
HOLIDAY = date(2025, 3, 5)  # Wednesday


def cal(*holidays: date, extra: tuple[date, ...] = ()) -> WorkCalendar:
    return WorkCalendar(
        HolidayCalendar(
            holidays=[Holiday(date=d) for d in holidays],
            extra_working_days=[Holiday(date=d) for d in extra],
        )
    )


def template(text: str) -> Template:
    return check_template(parse_yaml(textwrap.dedent(text), "t.yaml"))


DIAMOND = """\
template: t
title: T
parameters:
  legacy: {type: boolean, default: false}
stages:
  - {id: a, name: A, duration: 3}
  - {id: b, name: B, duration: 2, depends_on: [{stage: a, lag: 1}]}
  - {id: c, name: C, duration: 4, depends_on: [a]}
  - id: d
    name: D
    duration: 1
    depends_on: [b, c]
    gates: [{id: d-end, name: D done, at: end, sign_off: [project_manager]}]
    checklist: [{id: d-first, title: First, owner: crm_admin, due: start}]
milestones:
  - {id: m-start, name: Two days in, stage: a, at: start, lag: 2}
  - {id: m-end, name: All done, stage: d}
kpis:
  after_milestone: m-end
  review_weeks: 8
  targets: [{metric: active_members, target: 0.1}]
"""


# --------------------------------------------------------------------------- calendar


def test_working_days_skip_weekends_and_holidays() -> None:
    c = cal(HOLIDAY)
    assert c.add(MON, 0) == MON
    assert c.add(MON, 1) == date(2025, 3, 4)
    assert c.add(MON, 2) == date(2025, 3, 6)  # Wednesday is a holiday
    assert c.add(MON, 4) == date(2025, 3, 10)  # over the weekend
    assert c.add(date(2025, 3, 10), -1) == date(2025, 3, 7)
    assert c.add(date(2025, 3, 6), -1) == date(2025, 3, 4)
    assert c.count(MON, date(2025, 3, 10)) == 4  # Mon, Tue, Thu, Fri
    assert c.count(date(2025, 3, 10), MON) == -4
    assert c.on_or_after(date(2025, 3, 8)) == date(2025, 3, 10)
    assert c.on_or_before(date(2025, 3, 9)) == date(2025, 3, 7)
    assert c.on_or_after(HOLIDAY) == date(2025, 3, 6)
    assert not c.is_working(HOLIDAY)


def test_extra_working_day_on_a_weekend() -> None:
    c = cal(extra=(date(2025, 3, 8),))
    assert c.is_working(date(2025, 3, 8))
    assert c.add(date(2025, 3, 7), 1) == date(2025, 3, 8)
    assert c.add(date(2025, 3, 7), 2) == date(2025, 3, 10)


def test_calendar_far_from_its_first_date() -> None:
    c = cal()
    assert c.add(MON, 0) == MON
    # 260 working days of Mon-Fri are 52 weeks exactly; and 52 weeks back
    assert c.add(MON, 260) == MON + timedelta(weeks=52)
    assert c.add(MON, -520) == MON - timedelta(weeks=104)
    assert c.count(MON - timedelta(weeks=104), MON + timedelta(weeks=52)) == 780


# --------------------------------------------------------------------------- plan


def test_plan_dates_lags_and_holiday() -> None:
    plan = compute_plan(template(DIAMOND), {"legacy": False}, MON, cal(HOLIDAY))
    got = {s.id: (s.start, s.finish, s.total_float, s.critical) for s in plan.stages}
    assert got == {
        "a": (date(2025, 3, 3), date(2025, 3, 6), 0, True),  # Mon, Tue, (Wed off), Thu
        "b": (date(2025, 3, 10), date(2025, 3, 11), 1, False),  # Fri is the lag day
        "c": (date(2025, 3, 7), date(2025, 3, 12), 0, True),
        "d": (date(2025, 3, 13), date(2025, 3, 13), 0, True),
    }
    assert plan.critical_path == ["a", "c", "d"]
    assert plan.start == MON
    assert plan.finish == date(2025, 3, 13)
    b = plan.stage("b")
    assert b is not None and (b.late_start, b.late_finish) == (date(2025, 3, 11), date(2025, 3, 12))
    assert {m.id: m.due for m in plan.milestones} == {
        "m-start": date(2025, 3, 6),
        "m-end": date(2025, 3, 13),
    }
    assert [(g.id, g.due, g.roles) for g in plan.gates] == [
        ("d-end", date(2025, 3, 13), ["project_manager"])
    ]
    assert [(i.id, i.due) for i in plan.items] == [("d-first", date(2025, 3, 13))]
    assert plan.kpi_review == date(2025, 5, 8)


def test_start_on_a_weekend_moves_to_monday() -> None:
    plan = compute_plan(template(DIAMOND), {}, date(2025, 3, 1), cal())
    a = plan.stage("a")
    assert a is not None and (a.start, a.finish) == (MON, date(2025, 3, 5))


EXCLUDED = """\
template: t
title: T
parameters:
  legacy_system: {type: boolean, default: true}
stages:
  - {id: a, name: A, duration: 3}
  - {id: x, name: X, duration: 2, when: {legacy_system: true}, depends_on: [{stage: a, lag: 1}]}
  - {id: z, name: Z, duration: 1, depends_on: [{stage: x, lag: 2}]}
milestones:
  - {id: mx, name: X done, stage: x}
"""


def test_excluded_stage_passes_its_dependencies_through_with_lags_added() -> None:
    t = template(EXCLUDED)
    deps = effective_dependencies(t, {"legacy_system": False})
    assert deps == {"a": [], "z": [Dependency(stage="a", lag=3)]}
    plan = compute_plan(t, {"legacy_system": False}, MON, cal())
    assert [s.id for s in plan.stages] == ["a", "z"]
    assert plan.excluded == ["x"]
    assert plan.milestones == []
    z = plan.stage("z")
    # a: Mon 3 - Wed 5; lag 3: Thu, Fri, Mon; z on Tue 11
    assert z is not None and z.start == date(2025, 3, 11)
    included = compute_plan(t, {"legacy_system": True}, MON, cal())
    x, z2 = included.stage("x"), included.stage("z")
    assert x is not None and (x.start, x.finish) == (date(2025, 3, 7), date(2025, 3, 10))
    assert z2 is not None and z2.start == date(2025, 3, 13)
    assert included.critical_path == ["a", "x", "z"]


def test_pass_through_keeps_the_largest_lag_of_two_routes() -> None:
    t = Template(
        template="t",
        title="T",
        parameters={},
        stages=[
            Stage(id="a", name="A", duration=1),
            Stage(
                id="x",
                name="X",
                duration=1,
                when={"p": True},
                depends_on=[Dependency(stage="a", lag=4)],
            ),
            Stage(id="y", name="Y", duration=1, depends_on=[Dependency(stage="a", lag=1)]),
            Stage(
                id="z",
                name="Z",
                duration=1,
                depends_on=[Dependency(stage="x", lag=1), Dependency(stage="a", lag=2)],
            ),
        ],
    )
    deps = effective_dependencies(t, {"p": False})
    assert deps["z"] == [Dependency(stage="a", lag=5)]


def test_a_stage_that_finished_late_pushes_its_successors() -> None:
    t = template(DIAMOND)
    late = {"a": Actual(start=MON, finish=date(2025, 3, 10))}
    plan = compute_plan(t, {}, MON, cal(HOLIDAY), late)
    got = {s.id: (s.start, s.finish, s.status) for s in plan.stages}
    assert got == {
        "a": (MON, date(2025, 3, 10), "done"),
        "b": (date(2025, 3, 12), date(2025, 3, 13), "planned"),
        "c": (date(2025, 3, 11), date(2025, 3, 14), "planned"),
        "d": (date(2025, 3, 17), date(2025, 3, 17), "planned"),
    }
    a = plan.stage("a")
    assert a is not None and a.duration == 5  # Mon, Tue, Thu, Fri, Mon


def test_forecast_puts_nothing_outstanding_before_today() -> None:
    t = template(DIAMOND)
    today = date(2025, 3, 12)
    plan = compute_plan(t, {}, MON, cal(HOLIDAY), {}, today=today)
    a = plan.stage("a")
    assert a is not None and (a.start, a.finish) == (today, date(2025, 3, 14))
    # in progress since Monday 3rd, 3 days long: cannot finish before today
    going = compute_plan(t, {}, MON, cal(HOLIDAY), {"a": Actual(start=MON)}, today=today)
    a2 = going.stage("a")
    assert a2 is not None and (a2.start, a2.finish, a2.status) == (MON, today, "in_progress")
    assert going.finish == date(2025, 3, 19)


def test_actual_finish_on_a_weekend_counts_for_friday() -> None:
    plan = compute_plan(
        template(DIAMOND), {}, MON, cal(), {"a": Actual(start=MON, finish=date(2025, 3, 8))}
    )
    a, c = plan.stage("a"), plan.stage("c")
    assert a is not None and a.finish == date(2025, 3, 7)
    assert c is not None and c.start == date(2025, 3, 10)


def test_baselines_are_numbered_snapshots() -> None:
    plan = compute_plan(template(DIAMOND), {}, MON, cal())
    now = datetime(2025, 3, 1, tzinfo=UTC)
    first = take_baseline(plan, [], now, None, "initial")
    second = take_baseline(plan, [first], now, "Pat", "scope change")
    assert (first.number, second.number) == (1, 2)
    plan.stages[0].name = "changed"
    assert first.plan.stages[0].name == "A"  # a copy, not the live plan


# --------------------------------------------------------------------------- properties


@st.composite
def projects(draw: st.DrawFn) -> tuple[Template, HolidayCalendar]:
    n = draw(st.integers(1, 8))
    stages = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        stages.append(
            Stage(
                id=f"s{i}",
                name=f"S{i}",
                duration=draw(st.integers(1, 12)),
                depends_on=[Dependency(stage=f"s{d}", lag=draw(st.integers(0, 4))) for d in deps],
            )
        )
    holidays = draw(st.lists(st.integers(0, 120), unique=True, max_size=15))
    calendar = HolidayCalendar(holidays=[Holiday(date=MON + timedelta(days=h)) for h in holidays])
    return Template(template="p", title="P", stages=stages), calendar


@settings(max_examples=150, deadline=None)
@given(projects(), st.integers(0, 6))
def test_plan_respects_durations_dependencies_and_lags(
    project: tuple[Template, HolidayCalendar], offset: int
) -> None:
    t, holidays = project
    c = WorkCalendar(holidays)
    plan = compute_plan(t, {}, MON + timedelta(days=offset), c)
    by_id = {s.id: s for s in plan.stages}
    for s in plan.stages:
        assert c.is_working(s.start) and c.is_working(s.finish)
        assert s.finish >= s.start
        # the finish is the duration-th working day from the start, inclusive
        assert c.count(s.start, s.finish + timedelta(days=1)) == s.duration
        for d in s.depends_on:
            before = by_id[d.stage]
            assert s.start > before.finish
            assert c.count(before.finish + timedelta(days=1), s.start) >= d.lag
        assert s.total_float >= 0
        assert s.critical == (s.total_float == 0)
        assert s.late_start >= s.start
    assert plan.finish == max(s.finish for s in plan.stages)
    critical = [by_id[sid] for sid in plan.critical_path]
    assert critical and all(s.total_float == 0 for s in critical)
    assert any(s.finish == plan.finish for s in critical)
    # the critical path starts with a stage that waits for nothing late: at the start
    assert critical[0].start == plan.start
