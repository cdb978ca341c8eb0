"""A project's state and the operations on it, pure: each is checked first, then applied.

`validate_<op>(state, ...)` raises `ProjectRuleError` with a reason a project manager can
act on, and changes nothing; `<op>(state, ...)` validates the same way, then applies the
change to `state` in place (so a refused operation leaves it untouched) and returns what it
recorded. The Temporal workflow calls `validate_<op>` from an Update's validator and
`<op>` from its handler. Time is always passed in as `now` (an aware datetime; dates are
read on the team's clock): nothing here reads the clock.

Stage progress is derived, not reported separately. A stage starts (actual start = that
day) at the first thing recorded on it: a checked item, a milestone done, a sign-off on its
end gate, or its start gate passing. It finishes when its last outstanding piece is
recorded: every required checklist item checked, every gate passed and every milestone on
it done. A stage with none of these is started and finished explicitly (`start_stage`,
`finish_stage`, which a project manager may also use to record dates that were missed).
Each actual date replans the project (`state.plan`): a stage that finished late pushes its
successors. A stage whose start gate has not passed takes no checks and no end-gate
sign-offs.

The project's controls (`strict`, the default; the workflow turns them off only to replay
actions recorded before they existed):
- a stage starts only when every stage it depends on has finished; the project manager may
  start it earlier with a reason (an override, kept in `state.overrides`). Whatever starts
  a stage — a checked item, a sign-off, a milestone — is held to this rule;
- a checklist item is checked by a person holding the item's role; a project manager may
  check it for them with a reason (an override);
- a milestone is done only on a stage that has started (a milestone at the start of its
  stage starts it) and once every gate upstream of it has passed: the end gates of the
  stages it depends on, directly or not, and its stage's start gate. Go-live passes through
  the go-live gate; no override;
- a high or critical risk is closed by the project manager or its owner, with a reason.
Every refusal says why. Dates in messages are on the team's clock.

A person signs a gate once, for one of the roles it still needs that they hold (they may
name it with `role`); the gate passes when every role has its count of sign-offs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from journeys.timing import zone
from projects.models import (
    SEVERITIES,
    HolidayCalendar,
    MigrationSummary,
    Person,
    Role,
    Scalar,
    Severity,
    Strict,
    Team,
    Template,
    near,
    policy_failures,
    resolve_params,
)
from projects.plan import (
    Actual,
    Baseline,
    Plan,
    WorkCalendar,
    calendar_for,
    compute_plan,
    take_baseline,
)

Level = Literal["low", "medium", "high"]
_LEVEL = {"low": 1, "medium": 2, "high": 3}
MANAGERS: tuple[Role, ...] = ("project_manager", "executive_sponsor")


class ProjectRuleError(ValueError):
    """An operation the project's rules refuse; the message says why."""


PM: Role = "project_manager"  # who may override a control, with a reason
CLOSE_NEEDS_REASON: tuple[Severity, ...] = ("high", "critical")


# --------------------------------------------------------------------------- state models


class StageState(BaseModel):
    actual_start: date | None = None
    actual_finish: date | None = None
    override: str | None = Field(
        None, description="why the project manager started it before its dependencies finished"
    )


class Override(BaseModel):
    """A control the project manager set aside, with the reason given."""

    at: datetime
    by: str
    action: str = Field(description="what was done, e.g. 'check demos'")
    rule: str = Field(description="the control set aside")
    reason: str


class ItemState(BaseModel):
    checked: bool = False
    by: str | None = None
    at: datetime | None = None
    note: str | None = None
    override: str | None = Field(None, description="why a project manager checked it for its role")


class MilestoneState(BaseModel):
    done: bool = False
    by: str | None = None
    at: datetime | None = None
    note: str | None = None


class SignOffRecord(BaseModel):
    person: str
    email: str
    role: Role
    at: datetime
    comment: str | None = None


class GateState(BaseModel):
    sign_offs: list[SignOffRecord] = Field(default_factory=list)
    passed_at: datetime | None = None


class RiskEvent(BaseModel):
    at: datetime
    by: str
    action: Literal["added", "updated", "closed", "reopened"]
    changes: dict[str, str] = Field(default_factory=dict, description="field -> 'old → new'")
    comment: str | None = None


class RiskInput(Strict):
    """A new risk: a severity, or probability and impact to derive it from."""

    title: str = Field(min_length=1, max_length=200)
    owner: str = Field(min_length=1, description="a team member's name or e-mail")
    probability: Level | None = None
    impact: Level | None = None
    severity: Severity | None = None
    mitigation: str | None = None
    stage: str | None = None


class RiskChange(Strict):
    """Fields to change on a risk; those left out stay."""

    title: str | None = Field(None, min_length=1, max_length=200)
    owner: str | None = None
    probability: Level | None = None
    impact: Level | None = None
    severity: Severity | None = None
    mitigation: str | None = None
    comment: str | None = None


class Risk(BaseModel):
    id: str
    title: str
    owner: str
    probability: Level | None = None
    impact: Level | None = None
    severity: Severity
    status: Literal["open", "closed"] = "open"
    mitigation: str | None = None
    stage: str | None = None
    history: list[RiskEvent] = Field(default_factory=list)


class ProjectState(BaseModel):
    project_id: str
    name: str
    template: Template
    params: dict[str, Scalar]
    team: Team
    calendar: HolidayCalendar
    start: date
    created_at: datetime
    plan: Plan
    baselines: list[Baseline] = Field(default_factory=list)
    stages: dict[str, StageState] = Field(default_factory=dict)
    items: dict[str, ItemState] = Field(default_factory=dict)
    milestones: dict[str, MilestoneState] = Field(default_factory=dict)
    gates: dict[str, GateState] = Field(default_factory=dict)
    risks: list[Risk] = Field(default_factory=list)
    migration_check: MigrationSummary | None = None
    overrides: list[Override] = Field(default_factory=list)
    sent: dict[str, datetime] = Field(
        default_factory=dict, description="notices sent: dedupe key -> when"
    )

    def work_calendar(self) -> WorkCalendar:
        return calendar_for(self.calendar)

    def today(self, now: datetime) -> date:
        """The date on the team's clock at `now`."""
        return now.astimezone(zone(self.team.timezone)).date()

    def baseline(self) -> Baseline | None:
        return self.baselines[-1] if self.baselines else None

    def risk(self, risk_id: str) -> Risk:
        for r in self.risks:
            if r.id.casefold() == risk_id.strip().casefold():
                return r
        known = ", ".join(r.id for r in self.risks) or "none yet"
        raise ProjectRuleError(f"no risk {risk_id!r}; risks: {known}")

    def actuals(self) -> dict[str, Actual]:
        return {
            sid: Actual(start=s.actual_start, finish=s.actual_finish)
            for sid, s in self.stages.items()
            if s.actual_start is not None or s.actual_finish is not None
        }


def new_project(
    project_id: str,
    name: str,
    template: Template,
    params: Mapping[str, Any] | None,
    team: Team,
    calendar: HolidayCalendar | None,
    start: date,
    now: datetime,
) -> ProjectState:
    """A project at kick-off: its plan from `start` and that plan as baseline 1."""
    try:
        resolved = resolve_params(template, params)
    except ValueError as exc:
        raise ProjectRuleError(str(exc)) from exc
    cal = calendar or HolidayCalendar()
    plan = compute_plan(template, resolved, start, calendar_for(cal))
    state = ProjectState(
        project_id=project_id,
        name=name,
        template=template,
        params=resolved,
        team=team,
        calendar=cal,
        start=start,
        created_at=now,
        plan=plan,
        stages={s.id: StageState() for s in plan.stages},
        items={i.id: ItemState() for i in plan.items},
        milestones={m.id: MilestoneState() for m in plan.milestones},
        gates={g.id: GateState() for g in plan.gates},
    )
    state.baselines.append(take_baseline(plan, [], now, None, "initial plan"))
    return state


def forecast(state: ProjectState, today: date) -> Plan:
    """The plan from actual dates, with nothing outstanding placed before `today`."""
    return compute_plan(
        state.template,
        state.params,
        state.start,
        state.work_calendar(),
        state.actuals(),
        today=today,
    )


def _replan(state: ProjectState) -> None:
    state.plan = compute_plan(
        state.template, state.params, state.start, state.work_calendar(), state.actuals()
    )


# --------------------------------------------------------------------------- lookups


def _person(state: ProjectState, who: str) -> Person:
    person = state.team.person(who)
    if person is None:
        names = [p.name for p in state.team.people]
        raise ProjectRuleError(
            f"{who!r} is not on the project's team{near(who, names)}; team: {', '.join(names)}"
        )
    return person


def _left_out(state: ProjectState, what: str, ident: str, stage: str) -> ProjectRuleError:
    return ProjectRuleError(
        f"{what} {ident!r} belongs to stage {stage!r}, which this project leaves out "
        f"({_when(state, stage)})"
    )


def _when(state: ProjectState, stage_id: str) -> str:
    cond = state.template.stage(stage_id).when or {}
    return ", ".join(f"{k} is {state.params.get(k)!r}, not {v!r}" for k, v in cond.items())


def _stage_name(state: ProjectState, stage_id: str) -> str:
    return state.template.stage(stage_id).name


def _item(state: ProjectState, item_id: str) -> Any:
    item = state.plan.item(item_id)
    if item is not None:
        return item
    for s, i in state.template.items():
        if i.id == item_id:
            raise _left_out(state, "checklist item", item_id, s.id)
    raise ProjectRuleError(
        f"no checklist item {item_id!r}{near(item_id, [i.id for i in state.plan.items])}"
    )


def _milestone(state: ProjectState, mid: str) -> Any:
    m = state.plan.milestone(mid)
    if m is not None:
        return m
    for tm in state.template.milestones:
        if tm.id == mid:
            raise _left_out(state, "milestone", mid, tm.stage)
    raise ProjectRuleError(
        f"no milestone {mid!r}{near(mid, [m.id for m in state.plan.milestones])}"
    )


def _gate(state: ProjectState, gid: str) -> Any:
    g = state.plan.gate(gid)
    if g is not None:
        return g
    for s, tg in state.template.gates():
        if tg.id == gid:
            raise _left_out(state, "gate", gid, s.id)
    raise ProjectRuleError(f"no gate {gid!r}{near(gid, [g.id for g in state.plan.gates])}")


def _stage(state: ProjectState, sid: str) -> Any:
    s = state.plan.stage(sid)
    if s is not None:
        return s
    if sid in [t.id for t in state.template.stages]:
        raise ProjectRuleError(f"stage {sid!r} is left out of this project ({_when(state, sid)})")
    raise ProjectRuleError(f"no stage {sid!r}{near(sid, [s.id for s in state.plan.stages])}")


def _on(state: ProjectState, at: datetime) -> str:
    """The date of `at` on the team's clock."""
    return state.today(at).isoformat()


def _reason(text: str | None) -> str | None:
    return text.strip() if text and text.strip() else None


def _is_pm(person: Person) -> bool:
    return PM in person.roles


def _names(state: ProjectState, role: str) -> str:
    people = [p.name for p in state.team.holding(role)]
    return ", ".join(people) if people else "nobody on the team"


def open_dependencies(state: ProjectState, stage_id: str) -> list[str]:
    """The names of the stages `stage_id` waits for that have not finished."""
    stage = _stage(state, stage_id)
    return [
        _stage_name(state, d.stage)
        for d in stage.depends_on
        if state.stages[d.stage].actual_finish is None
    ]


def upstream_gates(state: ProjectState, stage_id: str) -> list[Any]:
    """The gates a stage's work must wait for: its own start gate and the end gates of every
    stage it depends on, directly or not (their start gates too)."""
    seen: set[str] = set()
    todo = [d.stage for d in _stage(state, stage_id).depends_on]
    while todo:
        sid = todo.pop()
        if sid in seen:
            continue
        seen.add(sid)
        todo.extend(d.stage for d in _stage(state, sid).depends_on)
    return [
        g for g in state.plan.gates if g.stage in seen or (g.stage == stage_id and g.at == "start")
    ]


def _may_start(
    state: ProjectState, stage_id: str, person: Person, override: str | None, what: str
) -> str | None:
    """Whether `what` may start stage `stage_id` now; the override reason when the project
    manager starts it before its dependencies finished. Raises saying why not."""
    if state.stages[stage_id].actual_start is not None:
        return None
    waiting = open_dependencies(state, stage_id)
    if not waiting:
        return None
    name = _stage_name(state, stage_id)
    why = (
        f"{what} would start stage {name!r}, which waits for "
        + ", ".join(repr(w) for w in waiting)
        + " to finish"
    )
    if not _is_pm(person):
        raise ProjectRuleError(
            f"{why}; only the project manager ({_names(state, PM)}) may start it earlier, "
            "with a reason"
        )
    reason = _reason(override)
    if reason is None:
        raise ProjectRuleError(f"{why}; to start it anyway, give the reason for the override")
    return reason


def _record_start_override(
    state: ProjectState, stage_id: str, person: Person, now: datetime, what: str, reason: str
) -> None:
    state.stages[stage_id].override = reason
    state.overrides.append(
        Override(
            at=now,
            by=person.name,
            action=what,
            rule=f"stage {stage_id!r} started before "
            + ", ".join(open_dependencies(state, stage_id))
            + " finished",
            reason=reason,
        )
    )


# --------------------------------------------------------------------------- gates


def still_needed(state: ProjectState, gate_id: str) -> dict[str, int]:
    """Role -> sign-offs the gate still needs (roles with none left out)."""
    tgate = next(g for _, g in state.template.gates() if g.id == gate_id)
    signed = state.gates[gate_id].sign_offs
    out: dict[str, int] = {}
    for req in tgate.sign_off:
        left = req.count - sum(1 for s in signed if s.role == req.role)
        if left > 0:
            out[req.role] = left
    return out


def _needs_text(needed: Mapping[str, int]) -> str:
    return ", ".join(
        f"{role} ({n} more sign-off{'s' if n > 1 else ''})" for role, n in needed.items()
    )


def _start_gate_open(state: ProjectState, stage_id: str) -> Any:
    for g in state.plan.gates:
        if g.stage == stage_id and g.at == "start" and state.gates[g.id].passed_at is None:
            return g
    return None


def _open_required(state: ProjectState, stage_id: str) -> list[Any]:
    return [
        i
        for i in state.plan.items
        if i.stage == stage_id and i.required and not state.items[i.id].checked
    ]


def gate_blockers(state: ProjectState, gate_id: str) -> list[str]:
    """What must happen before the gate can be signed at all (besides the right people)."""
    gate = _gate(state, gate_id)
    out: list[str] = []
    if gate.at == "end":
        start_gate = _start_gate_open(state, gate.stage)
        if start_gate is not None:
            out.append(
                f"stage {_stage_name(state, gate.stage)!r} has not passed its start gate "
                f"{start_gate.name!r}"
            )
        items = _open_required(state, gate.stage)
        if items:
            out.append(
                "required checklist items are still open: "
                + ", ".join(f"{i.title!r} ({i.owner})" for i in items)
            )
    policy = state.template.migration
    if policy is not None and policy.gate == gate_id:
        summary = state.migration_check
        if summary is None:
            out.append(
                "no migration check has been recorded; run the migration check on the "
                "source data first"
            )
        else:
            failures = policy_failures(summary, policy)
            if failures:
                out.append(
                    f"the latest migration check ({_on(state, summary.checked_at)}, "
                    f"{summary.source}) does not meet the thresholds: " + "; ".join(failures)
                )
    return out


def validate_sign_off(
    state: ProjectState,
    gate_id: str,
    by: str,
    now: datetime,
    role: str | None = None,
    strict: bool = True,
) -> tuple[Person, Role]:
    """Who signs and for which role; raises ProjectRuleError saying why not."""
    gate = _gate(state, gate_id)
    person = _person(state, by)
    gs = state.gates[gate_id]
    if gs.passed_at is not None:
        raise ProjectRuleError(
            f"gate {gate.name!r} already has all its sign-offs "
            f"(passed on {_on(state, gs.passed_at)})"
        )
    mine = next((s for s in gs.sign_offs if s.email == person.email), None)
    if mine is not None:
        raise ProjectRuleError(
            f"{person.name} already signed gate {gate.name!r} "
            f"(as {mine.role} on {_on(state, mine.at)})"
        )
    needed = still_needed(state, gate_id)
    if role is not None:
        if role not in person.roles:
            raise ProjectRuleError(
                f"{person.name} does not hold {role} (holds {', '.join(person.roles)})"
            )
        if role not in needed:
            raise ProjectRuleError(
                f"gate {gate.name!r} needs no more {role} sign-offs; it still needs "
                f"{_needs_text(needed)}"
            )
        chosen: Role = role
    else:
        usable = [r for r in needed if r in person.roles]
        if not usable:
            raise ProjectRuleError(
                f"{person.name} holds {', '.join(person.roles)}; gate {gate.name!r} needs "
                f"{_needs_text(needed)}"
            )
        chosen = usable[0]
    blockers = gate_blockers(state, gate_id)
    if strict and gate.at == "end" and state.stages[gate.stage].actual_start is None:
        waiting = open_dependencies(state, gate.stage)
        if waiting:
            blockers.append(
                f"stage {_stage_name(state, gate.stage)!r} has not started and waits for "
                + ", ".join(repr(w) for w in waiting)
                + " to finish"
            )
    if blockers:
        raise ProjectRuleError(f"gate {gate.name!r} cannot be signed yet: " + "; ".join(blockers))
    return person, chosen


def sign_off(
    state: ProjectState,
    gate_id: str,
    by: str,
    now: datetime,
    comment: str | None = None,
    role: str | None = None,
    strict: bool = True,
) -> SignOffRecord:
    """Record a sign-off; the gate passes when it has them all. A start gate that passes
    starts its stage, unless (under the controls) the stages before it are still open."""
    person, chosen = validate_sign_off(state, gate_id, by, now, role, strict)
    record = SignOffRecord(
        person=person.name, email=person.email, role=chosen, at=now, comment=comment
    )
    gs = state.gates[gate_id]
    gs.sign_offs.append(record)
    if not still_needed(state, gate_id):
        gs.passed_at = now
    gate = _gate(state, gate_id)
    held = strict and gate.at == "start" and bool(open_dependencies(state, gate.stage))
    if (gate.at == "end" or gs.passed_at is not None) and not held:
        _progress(state, gate.stage, now)
    return record


# --------------------------------------------------------------------------- items, milestones


class CheckPlan(BaseModel):
    """What checking an item records: who, and the overrides it needs."""

    person: Person
    role_override: str | None = None
    start_override: str | None = None


def validate_check_item(
    state: ProjectState,
    item_id: str,
    by: str,
    now: datetime,
    override: str | None = None,
    strict: bool = True,
) -> CheckPlan:
    item = _item(state, item_id)
    person = _person(state, by)
    st = state.items[item_id]
    if st.checked:
        raise ProjectRuleError(
            f"item {item.title!r} was already checked by {st.by} on {_on(state, st.at or now)}"
        )
    gate = _start_gate_open(state, item.stage)
    if gate is not None:
        raise ProjectRuleError(
            f"stage {_stage_name(state, item.stage)!r} waits for its start gate {gate.name!r} "
            f"(needs {_needs_text(still_needed(state, gate.id))})"
        )
    plan = CheckPlan(person=person)
    if not strict:
        return plan
    if item.owner not in person.roles:
        who = (
            f"{person.name} holds {', '.join(person.roles)}; item {item.title!r} is checked by "
            f"its {item.owner} ({_names(state, item.owner)})"
        )
        if not _is_pm(person):
            raise ProjectRuleError(
                f"{who}; the project manager may check it for them, with a reason"
            )
        plan.role_override = _reason(override)
        if plan.role_override is None:
            raise ProjectRuleError(
                f"{who}; to check it for them as project manager, give the reason for the override"
            )
    plan.start_override = _may_start(
        state, item.stage, person, override, f"checking {item.title!r}"
    )
    return plan


def check_item(
    state: ProjectState,
    item_id: str,
    by: str,
    now: datetime,
    note: str | None = None,
    override: str | None = None,
    strict: bool = True,
) -> ItemState:
    """Check a checklist item (by its role, or the project manager with a reason)."""
    plan = validate_check_item(state, item_id, by, now, override, strict)
    item = _item(state, item_id)
    if plan.start_override is not None:
        _record_start_override(
            state, item.stage, plan.person, now, f"check {item_id}", plan.start_override
        )
    st = state.items[item_id]
    st.checked, st.by, st.at, st.note = True, plan.person.name, now, note
    if plan.role_override is not None:
        st.override = plan.role_override
        state.overrides.append(
            Override(
                at=now,
                by=plan.person.name,
                action=f"check {item_id}",
                rule=f"item {item_id!r} is checked by its {item.owner}",
                reason=plan.role_override,
            )
        )
    _progress(state, item.stage, now)
    return st


def milestone_blockers(state: ProjectState, milestone_id: str) -> list[str]:
    """Why a milestone cannot be done yet (empty when it can)."""
    m = _milestone(state, milestone_id)
    stage = state.stages[m.stage]
    out: list[str] = []
    name = _stage_name(state, m.stage)
    if stage.actual_start is None:
        tm = next(x for x in state.template.milestones if x.id == milestone_id)
        if tm.at != "start":
            out.append(f"its stage {name!r} has not started")
        else:
            waiting = open_dependencies(state, m.stage)
            if waiting:
                out.append(
                    f"it starts stage {name!r}, which waits for "
                    + ", ".join(repr(w) for w in waiting)
                    + " to finish"
                )
    gates = [g for g in upstream_gates(state, m.stage) if state.gates[g.id].passed_at is None]
    if gates:
        out.append(
            "gates before it have not passed: "
            + ", ".join(
                f"{g.name!r} (needs {_needs_text(still_needed(state, g.id))})" for g in gates
            )
        )
    return out


def validate_complete_milestone(
    state: ProjectState, milestone_id: str, by: str, now: datetime, strict: bool = True
) -> Person:
    m = _milestone(state, milestone_id)
    person = _person(state, by)
    st = state.milestones[milestone_id]
    if st.done:
        raise ProjectRuleError(
            f"milestone {m.name!r} was already done by {st.by} on {_on(state, st.at or now)}"
        )
    if strict:
        blockers = milestone_blockers(state, milestone_id)
        if blockers:
            raise ProjectRuleError(
                f"milestone {m.name!r} cannot be done yet: " + "; ".join(blockers)
            )
    return person


def complete_milestone(
    state: ProjectState,
    milestone_id: str,
    by: str,
    now: datetime,
    note: str | None = None,
    strict: bool = True,
) -> MilestoneState:
    person = validate_complete_milestone(state, milestone_id, by, now, strict)
    st = state.milestones[milestone_id]
    st.done, st.by, st.at, st.note = True, person.name, now, note
    _progress(state, _milestone(state, milestone_id).stage, now)
    return st


# --------------------------------------------------------------------------- stages


def _complete(state: ProjectState, stage_id: str) -> bool:
    """Whether everything recorded on the stage is done (False when it has nothing)."""
    items = [i for i in state.plan.items if i.stage == stage_id and i.required]
    gates = [g for g in state.plan.gates if g.stage == stage_id]
    milestones = [m for m in state.plan.milestones if m.stage == stage_id]
    if not (items or gates or milestones):
        return False
    return (
        all(state.items[i.id].checked for i in items)
        and all(state.gates[g.id].passed_at is not None for g in gates)
        and all(state.milestones[m.id].done for m in milestones)
    )


def _progress(state: ProjectState, stage_id: str, now: datetime) -> None:
    st = state.stages[stage_id]
    day = state.today(now)
    changed = False
    if st.actual_start is None:
        st.actual_start = day
        changed = True
    if st.actual_finish is None and _complete(state, stage_id):
        st.actual_finish = max(day, st.actual_start)
        changed = True
    if changed:
        _replan(state)


def _manager(state: ProjectState, by: str, what: str, also: tuple[str, ...] = ()) -> Person:
    person = _person(state, by)
    allowed = (*MANAGERS, *also)
    if not set(person.roles) & set(allowed):
        raise ProjectRuleError(
            f"{person.name} holds {', '.join(person.roles)}; {what} needs "
            f"{' or '.join(dict.fromkeys(allowed))}"
        )
    return person


def _date_ok(state: ProjectState, on: date, now: datetime, what: str) -> None:
    if on > state.today(now):
        raise ProjectRuleError(f"{what} {on} is in the future (today is {state.today(now)})")


class StartPlan(BaseModel):
    day: date
    person: Person
    override: str | None = None


def validate_start_stage(
    state: ProjectState,
    stage_id: str,
    by: str,
    now: datetime,
    on: date | None = None,
    override: str | None = None,
    strict: bool = True,
) -> StartPlan:
    stage = _stage(state, stage_id)
    person = _manager(state, by, f"starting stage {stage.name!r}", (stage.owner,))
    st = state.stages[stage_id]
    if st.actual_start is not None:
        raise ProjectRuleError(f"stage {stage.name!r} already started on {st.actual_start}")
    gate = _start_gate_open(state, stage_id)
    if gate is not None:
        raise ProjectRuleError(
            f"stage {stage.name!r} waits for its start gate {gate.name!r} "
            f"(needs {_needs_text(still_needed(state, gate.id))})"
        )
    day = on or state.today(now)
    _date_ok(state, day, now, "the start date")
    reason = (
        _may_start(state, stage_id, person, override, f"starting {stage.name!r}")
        if strict
        else None
    )
    return StartPlan(day=day, person=person, override=reason)


def start_stage(
    state: ProjectState,
    stage_id: str,
    by: str,
    now: datetime,
    on: date | None = None,
    override: str | None = None,
    strict: bool = True,
) -> StageState:
    plan = validate_start_stage(state, stage_id, by, now, on, override, strict)
    if plan.override is not None:
        _record_start_override(
            state, stage_id, plan.person, now, f"start {stage_id}", plan.override
        )
    state.stages[stage_id].actual_start = plan.day
    _replan(state)
    return state.stages[stage_id]


def validate_finish_stage(
    state: ProjectState,
    stage_id: str,
    by: str,
    now: datetime,
    on: date | None = None,
    override: str | None = None,
    strict: bool = True,
) -> StartPlan:
    """The finish day; a stage that had not started starts that day too, so the start's
    control applies (its `override` the project manager's reason)."""
    stage = _stage(state, stage_id)
    person = _manager(state, by, f"finishing stage {stage.name!r}", (stage.owner,))
    st = state.stages[stage_id]
    if st.actual_finish is not None:
        raise ProjectRuleError(f"stage {stage.name!r} already finished on {st.actual_finish}")
    open_gates = [
        g.name for g in state.plan.gates if g.stage == stage_id and not state.gates[g.id].passed_at
    ]
    items = _open_required(state, stage_id)
    if items or open_gates:
        parts = []
        if items:
            parts.append("required items open: " + ", ".join(repr(i.title) for i in items))
        if open_gates:
            parts.append("gates not passed: " + ", ".join(repr(g) for g in open_gates))
        raise ProjectRuleError(f"stage {stage.name!r} cannot finish: " + "; ".join(parts))
    day = on or state.today(now)
    _date_ok(state, day, now, "the finish date")
    if st.actual_start is not None and day < st.actual_start:
        raise ProjectRuleError(
            f"stage {stage.name!r} started on {st.actual_start}; it cannot finish on {day}"
        )
    reason = (
        _may_start(state, stage_id, person, override, f"finishing {stage.name!r}")
        if strict
        else None
    )
    return StartPlan(day=day, person=person, override=reason)


def finish_stage(
    state: ProjectState,
    stage_id: str,
    by: str,
    now: datetime,
    on: date | None = None,
    override: str | None = None,
    strict: bool = True,
) -> StageState:
    """Finish a stage (started the same day when it had not started)."""
    plan = validate_finish_stage(state, stage_id, by, now, on, override, strict)
    if plan.override is not None:
        _record_start_override(
            state, stage_id, plan.person, now, f"finish {stage_id}", plan.override
        )
    day = plan.day
    st = state.stages[stage_id]
    st.actual_start = st.actual_start or day
    st.actual_finish = day
    _replan(state)
    return st


# --------------------------------------------------------------------------- risks


def severity_of(probability: str, impact: str) -> Severity:
    """Probability x impact (low 1, medium 2, high 3): 1-2 low, 3-4 medium, 6 high, 9
    critical."""
    score = _LEVEL[probability] * _LEVEL[impact]
    if score >= 9:
        return "critical"
    if score >= 6:
        return "high"
    return "medium" if score >= 3 else "low"


def validate_add_risk(state: ProjectState, risk: RiskInput, by: str, now: datetime) -> Risk:
    """The risk as it would be recorded."""
    _person(state, by)
    owner = _person(state, risk.owner)
    severity = risk.severity
    if severity is None:
        if risk.probability is None or risk.impact is None:
            raise ProjectRuleError(
                "a risk needs a severity (" + ", ".join(SEVERITIES) + "), or both probability "
                "and impact (low, medium, high)"
            )
        severity = severity_of(risk.probability, risk.impact)
    if risk.stage is not None:
        _stage(state, risk.stage)
    number = 1 + max((int(r.id[1:]) for r in state.risks if r.id[1:].isdigit()), default=0)
    return Risk(
        id=f"R{number}",
        title=risk.title,
        owner=owner.name,
        probability=risk.probability,
        impact=risk.impact,
        severity=severity,
        mitigation=risk.mitigation,
        stage=risk.stage,
    )


def add_risk(state: ProjectState, risk: RiskInput, by: str, now: datetime) -> Risk:
    new = validate_add_risk(state, risk, by, now)
    new.history.append(RiskEvent(at=now, by=_person(state, by).name, action="added"))
    state.risks.append(new)
    return new


def _risk_changes(state: ProjectState, risk: Risk, change: RiskChange) -> dict[str, Any]:
    new: dict[str, Any] = {}
    for name in ("title", "probability", "impact", "severity", "mitigation"):
        value = getattr(change, name)
        if value is not None and value != getattr(risk, name):
            new[name] = value
    if change.owner is not None:
        owner = _person(state, change.owner).name
        if owner != risk.owner:
            new["owner"] = owner
    if "severity" not in new and ({"probability", "impact"} & set(new)):
        p = new.get("probability", risk.probability)
        i = new.get("impact", risk.impact)
        if p is not None and i is not None and severity_of(p, i) != risk.severity:
            new["severity"] = severity_of(p, i)
    return new


def validate_update_risk(
    state: ProjectState, risk_id: str, change: RiskChange, by: str, now: datetime
) -> dict[str, Any]:
    """The fields that would change."""
    _person(state, by)
    risk = state.risk(risk_id)
    if risk.status == "closed":
        raise ProjectRuleError(f"risk {risk.id} is closed; reopen it to change it")
    new = _risk_changes(state, risk, change)
    if not new and change.comment is None:
        raise ProjectRuleError(f"nothing to change on risk {risk.id}")
    return new


def update_risk(
    state: ProjectState, risk_id: str, change: RiskChange, by: str, now: datetime
) -> Risk:
    new = validate_update_risk(state, risk_id, change, by, now)
    risk = state.risk(risk_id)
    diff = {k: f"{getattr(risk, k)} → {v}" for k, v in new.items()}
    for k, v in new.items():
        setattr(risk, k, v)
    risk.history.append(
        RiskEvent(
            at=now,
            by=_person(state, by).name,
            action="updated",
            changes=diff,
            comment=change.comment,
        )
    )
    return risk


def validate_close_risk(
    state: ProjectState,
    risk_id: str,
    by: str,
    now: datetime,
    comment: str | None = None,
    strict: bool = True,
) -> Risk:
    person = _person(state, by)
    risk = state.risk(risk_id)
    if risk.status == "closed":
        raise ProjectRuleError(f"risk {risk.id} is already closed")
    if strict and risk.severity in CLOSE_NEEDS_REASON:
        what = f"risk {risk.id} {risk.title!r} is {risk.severity}"
        if not _is_pm(person) and person.name != risk.owner:
            raise ProjectRuleError(
                f"{what}: it is closed by its owner ({risk.owner}) or the project manager "
                f"({_names(state, PM)}); {person.name} is neither"
            )
        if _reason(comment) is None:
            raise ProjectRuleError(
                f"{what}: closing it needs a reason (why it no longer threatens the project)"
            )
    return risk


def close_risk(
    state: ProjectState,
    risk_id: str,
    by: str,
    now: datetime,
    comment: str | None = None,
    strict: bool = True,
) -> Risk:
    risk = validate_close_risk(state, risk_id, by, now, comment, strict)
    risk.status = "closed"
    risk.history.append(
        RiskEvent(at=now, by=_person(state, by).name, action="closed", comment=comment)
    )
    return risk


def validate_reopen_risk(state: ProjectState, risk_id: str, by: str, now: datetime) -> Risk:
    _person(state, by)
    risk = state.risk(risk_id)
    if risk.status == "open":
        raise ProjectRuleError(f"risk {risk.id} is open")
    return risk


def reopen_risk(
    state: ProjectState, risk_id: str, by: str, now: datetime, comment: str | None = None
) -> Risk:
    risk = validate_reopen_risk(state, risk_id, by, now)
    risk.status = "open"
    risk.history.append(
        RiskEvent(at=now, by=_person(state, by).name, action="reopened", comment=comment)
    )
    return risk


# --------------------------------------------------------------------------- baselines, checks


def validate_rebaseline(state: ProjectState, by: str, now: datetime) -> Person:
    return _manager(state, by, "re-baselining")


def rebaseline(state: ProjectState, by: str, now: datetime, reason: str | None = None) -> Baseline:
    """Replan from actual dates as of today and keep that plan as the next baseline (the
    earlier baselines stay)."""
    person = validate_rebaseline(state, by, now)
    state.plan = forecast(state, state.today(now))
    baseline = take_baseline(state.plan, state.baselines, now, person.name, reason)
    state.baselines.append(baseline)
    return baseline


def validate_record_migration_check(state: ProjectState, summary: MigrationSummary) -> None:
    policy = state.template.migration
    if policy is None:
        raise ProjectRuleError("the template has no migration gate (no migration: section)")
    _gate(state, policy.gate)


def record_migration_check(state: ProjectState, summary: MigrationSummary) -> list[str]:
    """Keep `summary` as the latest migration check; returns why it fails the thresholds
    (empty when it passes)."""
    validate_record_migration_check(state, summary)
    state.migration_check = summary
    assert state.template.migration is not None
    return policy_failures(summary, state.template.migration)


def mark_sent(state: ProjectState, keys: list[str], now: datetime) -> None:
    """Record notices as sent (by their dedupe keys) so they are never sent again."""
    for key in keys:
        state.sent.setdefault(key, now)
