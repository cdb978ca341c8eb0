"""Plan arithmetic, pure: the working-day calendar, stage dates, the critical path, baselines.

Durations and lags count working days (the calendar's workdays less holidays, plus extra
working days). A stage of duration D starting on working day S finishes on the D-th working
day counted from S, inclusive: a 1-day stage starts and finishes on the same day. A
successor starts on the working day after its predecessor's finish plus the lag.

Stages whose `when:` does not hold for the project's parameters are dropped. A dependency on
a dropped stage passes through to that stage's own dependencies, lags added up (the dropped
stage's duration goes): with A -> X (lag 1) -> B (lag 2) and X dropped, B waits for A with
lag 3. Milestones, gates and checklist items of a dropped stage go with it.

The critical path comes from the usual CPM passes in working-day indexes: early start and
finish forwards, late start and finish backwards from the project's finish, total float =
late finish - early finish; a stage with no float (or less, when actual dates overtook the
plan) is critical.

Replanning takes actual dates: a started stage keeps its actual start, a finished one its
actual finish, and successors move accordingly. Given `today`, a stage that has not started
cannot start before today and one in progress cannot finish before today (a forecast).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from functools import lru_cache

from pydantic import BaseModel, Field

from projects.models import (
    WEEKDAYS,
    At,
    Dependency,
    Holiday,
    HolidayCalendar,
    Role,
    Scalar,
    Template,
    included,
)

_CHUNK = timedelta(days=366)


class WorkCalendar:
    """Working days: weekdays in `workdays`, less holidays, plus extra working days.

    `index(d)` numbers working days (a non-working day shares the index of the next working
    day); `day(i)` is the working day with index i. So `count(a, b)` = working days in
    [a, b) and `add(d, n)` = the working day n working days after d (before, for n < 0)."""

    def __init__(self, calendar: HolidayCalendar | None = None) -> None:
        cal = calendar or HolidayCalendar()
        self.workdays = frozenset(WEEKDAYS.index(w) for w in cal.workdays)
        self.holidays = frozenset(h.date for h in cal.holidays)
        self.extra = frozenset(d.date for d in cal.extra_working_days)
        # A window of working days [lo, hi) as (lo, hi, days, k0), k0 the anchor's position,
        # grown a year at a time as dates need it. Replaced whole, never changed in place, so
        # threads sharing a calendar (see `calendar_for`) always read a consistent window.
        self._anchor = date(2000, 1, 3)
        self._win: tuple[date, date, list[date], int] | None = None

    def is_working(self, d: date) -> bool:
        if d in self.extra:
            return True
        return d.weekday() in self.workdays and d not in self.holidays

    def _fill(self, lo: date, hi: date) -> list[date]:
        out, d = [], lo
        while d < hi:
            if self.is_working(d):
                out.append(d)
            d += timedelta(days=1)
        return out

    def _window(self, d: date | None = None) -> tuple[date, date, list[date], int]:
        win = self._win
        if win is None:
            anchor = self._anchor = d or self._anchor
            lo, hi = anchor - _CHUNK, anchor + _CHUNK
            days = self._fill(lo, hi)
            win = (lo, hi, days, bisect_left(days, anchor))
        if d is not None and not win[0] <= d < win[1]:
            lo, hi, days, _ = win
            while d < lo:
                days = self._fill(lo - _CHUNK, lo) + days
                lo -= _CHUNK
            while d >= hi:
                days = days + self._fill(hi, hi + _CHUNK)
                hi += _CHUNK
            win = (lo, hi, days, bisect_left(days, self._anchor))
        self._win = win
        return win

    def index(self, d: date) -> int:
        _, _, days, k0 = self._window(d)
        return bisect_left(days, d) - k0

    def day(self, i: int) -> date:
        lo, hi, days, k0 = self._window()
        while not 0 <= k0 + i < len(days):
            lo, hi, days, k0 = self._window(lo - timedelta(days=1) if k0 + i < 0 else hi)
        return days[k0 + i]

    def on_or_after(self, d: date) -> date:
        return self.day(self.index(d))

    def on_or_before(self, d: date) -> date:
        return d if self.is_working(d) else self.day(self.index(d) - 1)

    def add(self, d: date, n: int) -> date:
        return self.day(self.index(d) + n)

    def count(self, a: date, b: date) -> int:
        """Working days in [a, b) (negative when b is before a)."""
        return self.index(b) - self.index(a)


# --------------------------------------------------------------------------- plan models


@lru_cache(maxsize=256)
def _calendar(
    workdays: tuple[str, ...], holidays: frozenset[date], extra: frozenset[date]
) -> WorkCalendar:
    return WorkCalendar(
        HolidayCalendar(
            workdays=list(workdays),
            holidays=[Holiday(date=d) for d in holidays],
            extra_working_days=[Holiday(date=d) for d in extra],
        )
    )


def calendar_for(cal: HolidayCalendar) -> WorkCalendar:
    """A shared WorkCalendar for `cal` (built once per distinct calendar)."""
    return _calendar(
        tuple(cal.workdays),
        frozenset(h.date for h in cal.holidays),
        frozenset(d.date for d in cal.extra_working_days),
    )


class Actual(BaseModel):
    start: date | None = None
    finish: date | None = None


class StagePlan(BaseModel):
    id: str
    name: str
    owner: Role
    duration: int = Field(description="working days, planned (actual once finished)")
    start: date
    finish: date
    depends_on: list[Dependency] = Field(description="after dropped stages are passed through")
    late_start: date
    late_finish: date
    total_float: int = Field(description="working days the stage may slip without delay")
    critical: bool
    status: str = Field("planned", description="planned, in_progress or done")


class MilestonePlan(BaseModel):
    id: str
    name: str
    stage: str
    owner: Role
    due: date


class GatePlan(BaseModel):
    id: str
    name: str
    stage: str
    at: At
    roles: list[Role]
    due: date


class ItemPlan(BaseModel):
    id: str
    title: str
    stage: str
    owner: Role
    required: bool
    due: date


class Plan(BaseModel):
    start: date
    finish: date
    stages: list[StagePlan]
    milestones: list[MilestonePlan] = Field(default_factory=list)
    gates: list[GatePlan] = Field(default_factory=list)
    items: list[ItemPlan] = Field(default_factory=list)
    critical_path: list[str] = Field(default_factory=list, description="critical stages, in order")
    excluded: list[str] = Field(default_factory=list, description="stages left out by `when:`")
    kpi_review: date | None = None

    def stage(self, stage_id: str) -> StagePlan | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    def milestone(self, mid: str) -> MilestonePlan | None:
        return next((m for m in self.milestones if m.id == mid), None)

    def gate(self, gid: str) -> GatePlan | None:
        return next((g for g in self.gates if g.id == gid), None)

    def item(self, iid: str) -> ItemPlan | None:
        return next((i for i in self.items if i.id == iid), None)


class Baseline(BaseModel):
    number: int
    taken_at: datetime
    by: str | None = None
    reason: str | None = None
    plan: Plan


# --------------------------------------------------------------------------- computing


def effective_dependencies(
    template: Template, params: Mapping[str, Scalar]
) -> dict[str, list[Dependency]]:
    """Each included stage's dependencies, passing through dropped stages (lags added up;
    the largest lag kept where two routes reach the same stage)."""
    by_id = {s.id: s for s in template.stages}
    keep = {s.id for s in template.stages if included(s, params)}
    memo: dict[str, dict[str, int]] = {}

    def through(stage_id: str, seen: frozenset[str]) -> dict[str, int]:
        # the included stages `stage_id` waits for, with their lags
        if stage_id in memo:
            return memo[stage_id]
        out: dict[str, int] = {}
        for dep in by_id[stage_id].depends_on:
            if dep.stage in seen or dep.stage not in by_id:
                continue  # cycles and unknown stages are refused by check_template
            if dep.stage in keep:
                found = {dep.stage: dep.lag}
            else:
                found = {k: v + dep.lag for k, v in through(dep.stage, seen | {dep.stage}).items()}
            for k, v in found.items():
                out[k] = max(out.get(k, v), v)
        memo[stage_id] = out
        return out

    return {
        s.id: [Dependency(stage=k, lag=v) for k, v in through(s.id, frozenset({s.id})).items()]
        for s in template.stages
        if s.id in keep
    }


def _topological(order: list[str], deps: Mapping[str, list[Dependency]]) -> list[str]:
    """Stages so that each comes after those it depends on; template order breaks ties."""
    placed: list[str] = []
    done: set[str] = set()
    pending = list(order)
    while pending:
        for sid in pending:
            if all(d.stage in done for d in deps[sid]):
                placed.append(sid)
                done.add(sid)
                pending.remove(sid)
                break
        else:
            raise ValueError("dependency cycle among: " + ", ".join(pending))
    return placed


def compute_plan(
    template: Template,
    params: Mapping[str, Scalar],
    start: date,
    calendar: WorkCalendar | None = None,
    actuals: Mapping[str, Actual] | None = None,
    today: date | None = None,
) -> Plan:
    """The plan from `start` (moved to a working day), honouring dependencies with lag,
    actual dates where known and, given `today`, nothing outstanding before today."""
    cal = calendar or WorkCalendar()
    acts = actuals or {}
    deps = effective_dependencies(template, params)
    by_id = {s.id: s for s in template.stages}
    order = _topological([s.id for s in template.stages if s.id in deps], deps)
    origin = cal.index(start)
    now_i = cal.index(today) - origin if today is not None else None

    def idx(d: date) -> int:
        return cal.index(d) - origin

    es: dict[str, int] = {}
    ef: dict[str, int] = {}
    status: dict[str, str] = {}
    for sid in order:
        a = acts.get(sid) or Actual()
        if a.start is not None:
            es[sid] = idx(a.start)
        else:
            es[sid] = max([0] + [ef[d.stage] + d.lag for d in deps[sid]])
            if now_i is not None:
                es[sid] = max(es[sid], now_i)
        if a.finish is not None:
            # a finish on a non-working day counts for the working day before it
            ef[sid] = max(idx(cal.on_or_before(a.finish)) + 1, es[sid] + 1)
            status[sid] = "done"
        else:
            ef[sid] = es[sid] + by_id[sid].duration
            if a.start is not None and now_i is not None:
                ef[sid] = max(ef[sid], now_i + 1)
            status[sid] = "in_progress" if a.start is not None else "planned"

    end = max(ef.values())
    succ: dict[str, list[Dependency]] = {sid: [] for sid in order}
    for sid in order:
        for d in deps[sid]:
            succ[d.stage].append(Dependency(stage=sid, lag=d.lag))
    ls: dict[str, int] = {}
    lf: dict[str, int] = {}
    for sid in reversed(order):
        lf[sid] = min([end] + [ls[s.stage] - s.lag for s in succ[sid]])
        ls[sid] = lf[sid] - (ef[sid] - es[sid])

    def day(i: int) -> date:
        return cal.day(origin + i)

    stages = [
        StagePlan(
            id=sid,
            name=by_id[sid].name,
            owner=by_id[sid].owner,
            duration=ef[sid] - es[sid],
            start=day(es[sid]),
            finish=day(ef[sid] - 1),
            depends_on=deps[sid],
            late_start=day(ls[sid]),
            late_finish=day(lf[sid] - 1),
            total_float=lf[sid] - ef[sid],
            critical=lf[sid] - ef[sid] <= 0,
            status=status[sid],
        )
        for sid in order
    ]
    plan_by_id = {s.id: s for s in stages}
    milestones = [
        MilestonePlan(
            id=m.id,
            name=m.name,
            stage=m.stage,
            owner=m.owner,
            due=day((es[m.stage] if m.at == "start" else ef[m.stage] - 1) + m.lag),
        )
        for m in template.milestones
        if m.stage in plan_by_id
    ]
    gates = [
        GatePlan(
            id=g.id,
            name=g.name,
            stage=s.id,
            at=g.at,
            roles=[r.role for r in g.sign_off],
            due=plan_by_id[s.id].start if g.at == "start" else plan_by_id[s.id].finish,
        )
        for s, g in template.gates()
        if s.id in plan_by_id
    ]
    items = [
        ItemPlan(
            id=i.id,
            title=i.title,
            stage=s.id,
            owner=i.owner,
            required=i.required,
            due=plan_by_id[s.id].start if i.due == "start" else plan_by_id[s.id].finish,
        )
        for s, i in template.items()
        if s.id in plan_by_id
    ]
    kpi_review = None
    if template.kpis is not None:
        go_live = next((m for m in milestones if m.id == template.kpis.after_milestone), None)
        if go_live is not None:
            kpi_review = go_live.due + timedelta(weeks=template.kpis.review_weeks)
    return Plan(
        start=min([day(0)] + [s.start for s in stages]),
        finish=day(end - 1),
        stages=stages,
        milestones=milestones,
        gates=gates,
        items=items,
        critical_path=[s.id for s in stages if s.critical],
        excluded=[s.id for s in template.stages if s.id not in deps],
        kpi_review=kpi_review,
    )


def calendar_warnings(calendar: HolidayCalendar | None, start: date, finish: date) -> list[str]:
    """A plan that runs past (or starts before) the days the holiday calendar knows: there,
    working days are counted on weekdays alone, so dates can be off by the holidays."""
    known = calendar.known() if calendar is not None else None
    if known is None:
        return []
    first, last = known
    out = []
    if finish > last:
        out.append(
            f"the plan runs to {finish}, past the holiday calendar, which knows the days off "
            f"until {last}: after that only weekends are days off; add the holidays of "
            + (
                f"{last.year + 1}"
                if finish.year == last.year + 1
                else f"{last.year + 1} to {finish.year}"
            )
            + " to the holidays file"
        )
    if start < first:
        out.append(
            f"the plan starts on {start}, before the holiday calendar, which knows the days "
            f"off from {first}"
        )
    return out


def take_baseline(
    plan: Plan, baselines: list[Baseline], now: datetime, by: str | None, reason: str | None
) -> Baseline:
    """A snapshot of `plan` numbered after the existing baselines (which are kept)."""
    number = max((b.number for b in baselines), default=0) + 1
    return Baseline(
        number=number, taken_at=now, by=by, reason=reason, plan=plan.model_copy(deep=True)
    )
