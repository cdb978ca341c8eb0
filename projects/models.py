"""The rollout-project file formats, as pydantic models: template, team and holiday calendar.

These models are the single description of the three files; `load_template`, `load_team` and
`load_holidays` read them with line numbers and raise `SourceError` naming file, line and
what was expected. Checks that span the template (unknown or cyclic dependencies, milestones
on unknown stages, repeated ids, conditions on undeclared parameters) are done by
`check_template`, which reports every problem at once.

A template (abridged; see examples/rollout/crm-rollout.yaml):

    template: crm-rollout
    title: CRM / membership system rollout
    parameters:
      legacy_system: {type: boolean, default: true}
    stages:
      - id: requirements
        name: Requirements & SMART goals
        duration: 10                       # working days
        owner: business_owner
        checklist:
          - {id: goals, title: SMART goals agreed, owner: business_owner}
        gates:
          - id: requirements-approval
            name: Requirements approval
            at: end                        # or start
            sign_off: [executive_sponsor, {role: business_owner, count: 2}]
      - id: data-migration
        name: Data migration
        duration: 15
        when: {legacy_system: true}        # included only for these parameter values
        depends_on: [requirements, {stage: configuration, lag: 2}]
    milestones:
      - {id: go-live, name: Go-live, stage: go-live, at: end, owner: project_manager}
    reminders:
      before_days: [5, 1]                  # working days before a due date
      escalation:                          # working days after it
        - {to: owner, after_days: 1}
        - {to: project_manager, after_days: 3}
        - {to: executive_sponsor, after_days: 5}
    kpis:
      after_milestone: go-live
      review_weeks: 8
      targets:
        - {metric: repurchase_rate, compare: relative, direction: increase, target: 0.10}
    migration:
      gate: migration-sign-off
      thresholds: {min_fill_rate: 0.95, max_duplicate_rate: 0.01}
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from journeys.timing import parse_clock, zone
from rules.source import (
    NAME_PATTERN,
    LinePath,
    SourceError,
    SourceProblem,
    YamlDoc,
    errors_from_validation,
    load_model,
    load_yaml,
    not_mapping,
    yaml_load,
)

Id = Annotated[
    str, Field(pattern=NAME_PATTERN, description="lower case letters, digits and _ . : -")
]
Role = Literal[
    "executive_sponsor",
    "project_manager",
    "business_owner",
    "it_lead",
    "crm_admin",
    "vendor_consultant",
]
ROLES: tuple[str, ...] = get_args(Role)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = get_args(Weekday)
Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
Scalar = bool | int | float | str
Metric = Literal[
    "repurchase_rate",
    "active_members",
    "new_members",
    "journey_conversion",
    "points_issued",
    "points_redeemed",
    "redemption_rate",
    "average_order_value",
    "churn_rate",
    "email_open_rate",
]
METRICS: tuple[str, ...] = get_args(Metric)
At = Literal["start", "end"]
MAX_DAYS = 1000  # working days: about four years, far beyond any rollout


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- template


class Parameter(Strict):
    """A project parameter the template's `when:` conditions may test."""

    type: Literal["boolean", "string", "integer", "number"]
    default: Scalar | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _default_type(self) -> Parameter:
        if self.default is not None and not _fits(self.type, self.default):
            raise ValueError(f"default {self.default!r} is not a {self.type}")
        return self


def _fits(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


class Dependency(Strict):
    """Finish-to-start: this stage starts `lag` working days after `stage` finishes."""

    stage: Id
    lag: int = Field(0, ge=0, le=MAX_DAYS, description="working days between the two")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"stage": v} if isinstance(v, str) else v


class ChecklistItem(Strict):
    id: Id
    title: str = Field(min_length=1, max_length=200)
    owner: Role
    required: bool = Field(True, description="the stage's end gate waits for required items")
    due: At = Field("end", description="due at the stage's planned start or end")
    description: str | None = None


class SignOff(Strict):
    """`count` different people holding `role` must sign."""

    role: Role
    count: int = Field(1, ge=1, le=10)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"role": v} if isinstance(v, str) else v


class Gate(Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    at: At = Field("end", description="start: the stage waits for it; end: it closes the stage")
    sign_off: list[SignOff] = Field(min_length=1)

    @field_validator("sign_off")
    @classmethod
    def _roles_unique(cls, v: list[SignOff]) -> list[SignOff]:
        roles = [s.role for s in v]
        dup = sorted({r for r in roles if roles.count(r) > 1})
        if dup:
            raise ValueError(f"role {dup[0]!r} is listed twice; give it a count instead")
        return v

    def needs(self) -> str:
        return ", ".join(
            f"{s.role}" + (f" x{s.count}" if s.count > 1 else "") for s in self.sign_off
        )


class Stage(Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    duration: int = Field(ge=1, le=MAX_DAYS, description="working days")
    depends_on: list[Dependency] = Field(default_factory=list)
    when: dict[Id, Scalar] | None = Field(
        None, description="included only when every listed parameter has this value"
    )
    owner: Role = "project_manager"
    checklist: list[ChecklistItem] = Field(default_factory=list)
    gates: list[Gate] = Field(default_factory=list)
    description: str | None = None


class Milestone(Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    stage: Id
    at: At = "end"
    lag: int = Field(0, ge=0, le=MAX_DAYS, description="working days after the stage's start/end")
    owner: Role = "project_manager"


class Escalation(Strict):
    to: Literal["owner"] | Role = Field(description="owner: the item's owner role")
    after_days: int = Field(ge=1, le=MAX_DAYS, description="working days after the due date")


def _default_escalation() -> list[Escalation]:
    return [
        Escalation(to="owner", after_days=1),
        Escalation(to="project_manager", after_days=3),
        Escalation(to="executive_sponsor", after_days=5),
    ]


class ReminderPolicy(Strict):
    before_days: list[int] = Field(
        default_factory=lambda: [5, 1], description="working days before a due date"
    )
    escalation: list[Escalation] = Field(default_factory=_default_escalation)
    send_at: str = Field("09:00", description="local time of day (HH:MM) notices go out")

    @field_validator("before_days")
    @classmethod
    def _before(cls, v: list[int]) -> list[int]:
        if any(d < 0 or d > MAX_DAYS for d in v):
            raise ValueError(f"before_days are working days from 0 to {MAX_DAYS}")
        if len(set(v)) != len(v):
            raise ValueError("before_days: a day is repeated")
        return sorted(v, reverse=True)

    @field_validator("escalation")
    @classmethod
    def _escalation(cls, v: list[Escalation]) -> list[Escalation]:
        days = [e.after_days for e in v]
        if days != sorted(set(days)):
            raise ValueError("escalation levels need after_days in increasing order")
        return v

    @field_validator("send_at")
    @classmethod
    def _clock(cls, v: str) -> str:
        parse_clock(v)
        return v


class HealthPolicy(Strict):
    """When a project turns amber or red."""

    late_red_after_days: int = Field(
        3,
        ge=0,
        le=MAX_DAYS,
        description="a milestone or gate late by up to N working days is amber",
    )
    risk_amber_at: Severity = Field("high", description="an open risk this severe is amber")
    risk_red_at: Severity = Field("critical", description="an open risk this severe is red")
    slip_red_after_days: int = Field(
        5, ge=0, le=MAX_DAYS, description="forecast finish past the baseline by more is red"
    )

    @model_validator(mode="after")
    def _order(self) -> HealthPolicy:
        if SEVERITIES.index(self.risk_red_at) < SEVERITIES.index(self.risk_amber_at):
            raise ValueError("risk_red_at must be at least as severe as risk_amber_at")
        return self


class KpiTarget(Strict):
    """A SMART target: `metric` measured before go-live and `review_weeks` after it.

    compare: absolute (the value after reaches `target`), change (after - before reaches
    `target`), relative ((after - before) / before reaches `target`, 0.10 = 10 %);
    direction: increase (at least) or decrease (at most / by at least)."""

    metric: Metric
    description: str | None = None
    compare: Literal["absolute", "change", "relative"] = "relative"
    direction: Literal["increase", "decrease"] = "increase"
    target: float = Field(allow_inf_nan=False)


class KpiReview(Strict):
    after_milestone: Id = Field(description="the go-live milestone the review counts from")
    review_weeks: int = Field(8, ge=1, le=104)
    baseline_weeks: int = Field(4, ge=1, le=104, description="the window measured before go-live")
    targets: list[KpiTarget] = Field(min_length=1)


class MigrationThresholds(Strict):
    min_fill_rate: float = Field(0.95, ge=0, le=1, description="share of rows with the field")
    fill_rates: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict, description="per target field, overriding min_fill_rate"
    )
    max_duplicate_rate: float = Field(0.01, ge=0, le=1)
    max_invalid_rate: float = Field(0.02, ge=0, le=1, description="rows with an invalid value")
    max_rejected_rate: float = Field(0.02, ge=0, le=1, description="rows that cannot be migrated")
    amount_tolerance: Decimal = Field(
        Decimal("0.01"), ge=0, description="largest allowed difference of amount sums"
    )
    min_rows: int | None = Field(
        None, ge=1, description="the fewest source rows a check may have (no hand-picked sample)"
    )


class MigrationPolicy(Strict):
    gate: Id = Field(description="the gate that waits for a passing migration check")
    source: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="the source file's name (e.g. legacy.csv): only a check of that file "
        "opens the gate",
    )
    thresholds: MigrationThresholds = Field(default_factory=MigrationThresholds)


class Template(Strict):
    """A rollout template."""

    template: Id
    title: str = Field(min_length=1, max_length=200)
    description: str | None = None
    parameters: dict[Id, Parameter] = Field(default_factory=dict)
    stages: list[Stage] = Field(min_length=1)
    milestones: list[Milestone] = Field(default_factory=list)
    reminders: ReminderPolicy = Field(default_factory=ReminderPolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    kpis: KpiReview | None = None
    migration: MigrationPolicy | None = None

    def stage(self, stage_id: str) -> Stage:
        for s in self.stages:
            if s.id == stage_id:
                return s
        raise KeyError(stage_id)

    def items(self) -> Iterable[tuple[Stage, ChecklistItem]]:
        for s in self.stages:
            for item in s.checklist:
                yield s, item

    def gates(self) -> Iterable[tuple[Stage, Gate]]:
        for s in self.stages:
            for g in s.gates:
                yield s, g


# --------------------------------------------------------------------------- team, holidays

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class Person(Strict):
    name: str = Field(min_length=1, max_length=100)
    email: str = Field(pattern=EMAIL_PATTERN, max_length=254)
    roles: list[Role] = Field(min_length=1)

    @field_validator("roles")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({r for r in v if v.count(r) > 1})
        if dup:
            raise ValueError(f"role {dup[0]!r} is repeated")
        return v


class Team(Strict):
    """The people on a project and their roles; a person may hold several roles."""

    timezone: str = Field("UTC", description="IANA name; reminders go out on this clock")
    people: list[Person] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("people")
    @classmethod
    def _people(cls, v: list[Person]) -> list[Person]:
        for attr in ("name", "email"):
            seen = [getattr(p, attr).casefold() for p in v]
            dup = sorted({x for x in seen if seen.count(x) > 1})
            if dup:
                raise ValueError(f"{attr} {dup[0]!r} appears twice")
        held = {r for p in v for r in p.roles}
        missing = [r for r in ("project_manager", "executive_sponsor") if r not in held]
        if missing:
            raise ValueError(
                f"nobody holds {' or '.join(missing)}; escalations need a project_manager "
                "and an executive_sponsor"
            )
        return v

    def person(self, who: str) -> Person | None:
        """The person named `who` (name or e-mail, any case)."""
        key = who.strip().casefold()
        for p in self.people:
            if key in (p.name.casefold(), p.email.casefold()):
                return p
        return None

    def holding(self, role: str) -> list[Person]:
        return [p for p in self.people if role in p.roles]


class Holiday(Strict):
    date: date
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"date": v} if isinstance(v, date | str) else v


def _weekdays() -> list[Weekday]:
    return ["mon", "tue", "wed", "thu", "fri"]


class HolidayCalendar(Strict):
    """Working days: `workdays` each week, less `holidays`, plus `extra_working_days`
    (weekend days worked to make up for a bridge holiday)."""

    workdays: list[Weekday] = Field(default_factory=_weekdays)
    holidays: list[Holiday] = Field(default_factory=list)
    extra_working_days: list[Holiday] = Field(default_factory=list)
    until: date | None = Field(
        None,
        description="the last day whose days off the file knows (default: 31 December of the "
        "last year it lists a day of)",
    )

    def known(self) -> tuple[date, date] | None:
        """The days whose holidays the calendar knows: from 1 January of the first year it
        lists to `until` (None for a calendar of weekdays alone)."""
        days = [h.date for h in self.holidays] + [d.date for d in self.extra_working_days]
        if not days:
            return None
        last = self.until or date(max(days).year, 12, 31)
        return date(min(days).year, 1, 1), last

    @field_validator("workdays")
    @classmethod
    def _workdays(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one workday is needed")
        if len(set(v)) != len(v):
            raise ValueError("a workday is repeated")
        return v

    @model_validator(mode="after")
    def _overlap(self) -> HolidayCalendar:
        both = sorted({h.date for h in self.holidays} & {d.date for d in self.extra_working_days})
        if both:
            raise ValueError(f"{both[0]} is both a holiday and an extra working day")
        return self


# --------------------------------------------------------------------------- migration results


class MigrationSummary(BaseModel):
    """The figures of one migration check, as the project's state keeps them."""

    checked_at: datetime
    source: str
    rows_in: int
    rows_out: int
    rejected: int
    fill_rates: dict[str, float]
    duplicate_rows: int
    invalid_rows: int
    amount_source: Decimal | None = None
    amount_mapped: Decimal | None = None
    amount_target: Decimal | None = None
    source_sha256: str | None = Field(None, description="SHA-256 of the source file's bytes")
    target_rows: int | None = Field(
        None, description="after an import: the migrated rows found in the store"
    )

    @property
    def source_name(self) -> str:
        """The file's name without its folder (a path may come from any machine)."""
        return self.source.replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def duplicate_rate(self) -> float:
        return self.duplicate_rows / self.rows_out if self.rows_out else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.invalid_rows / self.rows_in if self.rows_in else 0.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0


def migration_failures(summary: MigrationSummary, t: MigrationThresholds) -> list[str]:
    """Why `summary` does not meet the thresholds (empty when it does)."""
    out: list[str] = []
    if summary.rows_in == 0:
        out.append("the source has no rows")
    for name, rate in sorted(summary.fill_rates.items()):
        need = t.fill_rates.get(name, t.min_fill_rate)
        if rate < need:
            out.append(f"fill rate of {name} is {rate:.1%}, below {need:.1%}")
    for name in sorted(set(t.fill_rates) - set(summary.fill_rates)):
        out.append(f"field {name} has a fill-rate threshold but is not mapped")
    for label, rate, limit in (
        ("duplicate rate", summary.duplicate_rate, t.max_duplicate_rate),
        ("invalid rate", summary.invalid_rate, t.max_invalid_rate),
        ("rejected rate", summary.rejected_rate, t.max_rejected_rate),
    ):
        if rate > limit:
            out.append(f"{label} is {rate:.1%}, above {limit:.1%}")
    if summary.amount_source is not None and summary.amount_mapped is not None:
        diff = abs(summary.amount_source - summary.amount_mapped)
        if diff > t.amount_tolerance:
            out.append(
                f"amounts differ by {diff} (source {summary.amount_source}, migrated "
                f"{summary.amount_mapped}), above the tolerance {t.amount_tolerance}"
            )
    if t.min_rows is not None and summary.rows_in < t.min_rows:
        out.append(
            f"the source has {summary.rows_in} rows; the template needs a check of at least "
            f"{t.min_rows}"
        )
    if summary.target_rows is not None and summary.target_rows != summary.rows_out:
        out.append(f"the store holds {summary.target_rows} of the {summary.rows_out} migrated rows")
    if summary.amount_target is not None and summary.amount_mapped is not None:
        diff = abs(summary.amount_target - summary.amount_mapped)
        if diff > t.amount_tolerance:
            out.append(
                f"the target's amounts differ from the migrated ones by {diff}, above the "
                f"tolerance {t.amount_tolerance}"
            )
    return out


def policy_failures(summary: MigrationSummary, policy: MigrationPolicy) -> list[str]:
    """Why a check does not open the migration gate: the thresholds, and the file it was of
    when the template names one."""
    out = []
    if policy.source is not None and summary.source_name != policy.source:
        out.append(
            f"the check was of {summary.source_name!r}; the template's migration gate needs a "
            f"check of {policy.source!r}"
        )
    return out + migration_failures(summary, policy.thresholds)


# --------------------------------------------------------------------------- parameters


def resolve_params(template: Template, params: Mapping[str, Any] | None) -> dict[str, Scalar]:
    """The project's parameter values: given ones (text from a command line is read as YAML,
    so "false" is a boolean), defaults for the rest. Raises ValueError naming the problem."""
    given = dict(params or {})
    out: dict[str, Scalar] = {}
    unknown = sorted(set(given) - set(template.parameters))
    if unknown:
        known = ", ".join(template.parameters) or "none"
        raise ValueError(
            f"unknown parameter {unknown[0]!r}{near(unknown[0], template.parameters)}; "
            f"the template declares: {known}"
        )
    for name, decl in template.parameters.items():
        if name not in given:
            if decl.default is None:
                raise ValueError(
                    f"parameter {name!r} ({decl.type}) needs a value; it has no default"
                )
            out[name] = decl.default
            continue
        value = given[name]
        if isinstance(value, str) and decl.type != "string":
            value = yaml_load(value)
        if decl.type == "number" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _fits(decl.type, value):
            raise ValueError(f"parameter {name!r} must be a {decl.type}, not {given[name]!r}")
        out[name] = value
    return out


def included(stage: Stage, params: Mapping[str, Scalar]) -> bool:
    """Whether `stage` is part of a project with these (resolved) parameters."""
    return all(params.get(k) == v for k, v in (stage.when or {}).items())


# --------------------------------------------------------------------------- checks


def near(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def dependency_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """One cycle of `graph` (stage -> stages it depends on) as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if root in state:
            continue
        path: list[str] = []
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            succ = [s for s in graph.get(node, []) if s in graph]
            if i < len(succ):
                work.append((node, i + 1))
                nxt = succ[i]
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in state:
                    work.append((nxt, 0))
                continue
            state[node] = 2
            path.pop()
    return None


class _Checker:
    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.errors: list[SourceProblem] = []

    def err(self, path: LinePath, message: str) -> None:
        self.errors.append(SourceProblem(self.doc.path, self.doc.line_of(path), message))

    def run(self, t: Template) -> None:
        seen: dict[str, str] = {}

        def claim(ident: str, what: str, path: LinePath) -> None:
            if ident in seen:
                self.err(path, f"id {ident!r} is used twice (first by a {seen[ident]})")
            else:
                seen[ident] = what

        stage_ids = [s.id for s in t.stages]
        for i, s in enumerate(t.stages):
            claim(s.id, "stage", ("stages", i, "id"))
            for j, item in enumerate(s.checklist):
                claim(item.id, "checklist item", ("stages", i, "checklist", j, "id"))
            for j, g in enumerate(s.gates):
                claim(g.id, "gate", ("stages", i, "gates", j, "id"))
        for i, m in enumerate(t.milestones):
            claim(m.id, "milestone", ("milestones", i, "id"))

        for i, s in enumerate(t.stages):
            for j, dep in enumerate(s.depends_on):
                where: LinePath = ("stages", i, "depends_on", j)
                if dep.stage not in stage_ids:
                    self.err(
                        where,
                        f"stage {s.id!r} depends on unknown stage {dep.stage!r}"
                        f"{near(dep.stage, stage_ids)}",
                    )
                elif dep.stage == s.id:
                    self.err(where, f"stage {s.id!r} depends on itself")
            deps = [d.stage for d in s.depends_on]
            dup = sorted({d for d in deps if deps.count(d) > 1})
            if dup:
                self.err(("stages", i, "depends_on"), f"stage {s.id!r} lists {dup[0]!r} twice")
            for name, value in (s.when or {}).items():
                where = ("stages", i, "when", name)
                decl = t.parameters.get(name)
                if decl is None:
                    self.err(
                        where,
                        f"stage {s.id!r} tests undeclared parameter {name!r}"
                        f"{near(name, t.parameters)}; declare it under parameters:",
                    )
                elif not _fits(decl.type, value):
                    self.err(where, f"parameter {name!r} is a {decl.type}; {value!r} is not")
            if (
                len([g for g in s.gates if g.at == "end"]) > 1
                or len([g for g in s.gates if g.at == "start"]) > 1
            ):
                self.err(
                    ("stages", i, "gates"),
                    f"stage {s.id!r}: at most one gate at its start and one at its end",
                )
        graph = {s.id: [d.stage for d in s.depends_on if d.stage != s.id] for s in t.stages}
        cycle = dependency_cycle(graph)
        if cycle:
            i = stage_ids.index(cycle[0])
            self.err(
                ("stages", i, "depends_on"),
                "dependency cycle: " + " → ".join(cycle) + " (each waits for the next)",
            )
        for i, m in enumerate(t.milestones):
            if m.stage not in stage_ids:
                self.err(
                    ("milestones", i, "stage"),
                    f"milestone {m.id!r} is on unknown stage {m.stage!r}{near(m.stage, stage_ids)}",
                )
        gate_ids = [g.id for _, g in t.gates()]
        if t.migration is not None and t.migration.gate not in gate_ids:
            self.err(
                ("migration", "gate"),
                f"migration gate {t.migration.gate!r} is not a gate"
                f"{near(t.migration.gate, gate_ids)}; expected one of: {', '.join(gate_ids)}",
            )
        ms_ids = [m.id for m in t.milestones]
        if t.kpis is not None and t.kpis.after_milestone not in ms_ids:
            self.err(
                ("kpis", "after_milestone"),
                f"KPI review counts from unknown milestone "
                f"{t.kpis.after_milestone!r}{near(t.kpis.after_milestone, ms_ids)}",
            )
        if t.kpis is not None:
            metrics = [k.metric for k in t.kpis.targets]
            for j, k in enumerate(t.kpis.targets):
                if metrics.index(k.metric) != j:
                    self.err(
                        ("kpis", "targets", j, "metric"), f"metric {k.metric!r} has two targets"
                    )


def check_template(doc: YamlDoc, params: Mapping[str, Any] | None = None) -> Template:
    """Validate a parsed template (and the project's parameters, when given); raise
    SourceError listing every problem with its line."""
    bad = not_mapping(doc, "a template", "template:, stages:, …")
    if bad:
        raise bad
    try:
        template = Template.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(errors_from_validation(doc, exc)) from exc
    check = _Checker(doc)
    check.run(template)
    if not check.errors and params is not None:
        try:
            resolve_params(template, params)
        except ValueError as exc:
            check.err(("parameters",), str(exc))
    if check.errors:
        unique = list(dict.fromkeys(check.errors))
        raise SourceError(sorted(unique, key=lambda e: (e.line or 0, e.message)))
    return template


def load_template(path: Path, params: Mapping[str, Any] | None = None) -> Template:
    """Read and validate a template file; `params` (when given) are checked against its
    declared parameters."""
    return check_template(load_yaml(path), params)


def _load(path: Path, model: type[Strict], what: str, example: str) -> Any:
    return load_model(path, model, what, example)


def load_team(path: Path) -> Team:
    """Read a team file: `people: [{name, email, roles: [...]}]` and an optional timezone."""
    team: Team = _load(path, Team, "a team file", "timezone:, people: [{name, email, roles}]")
    return team


def load_holidays(path: Path) -> HolidayCalendar:
    """Read a holiday calendar: `holidays: [{date, name}]`, optional workdays and
    extra_working_days."""
    cal: HolidayCalendar = _load(
        path, HolidayCalendar, "a holidays file", "holidays: [{date: 2025-01-01, name: …}]"
    )
    return cal
