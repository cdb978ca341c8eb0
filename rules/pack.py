"""Load a rules directory: the programme file and the rule files, validated and compiled.

`load_pack(rules_dir)` reads `program.yaml` (in the directory or its parent) and every
`*.yaml` / `*.yml` rule file in the directory (sorted by name), checks them against the
models and against each other (unknown facts, operators that do not fit the fact's type,
undefined tiers, duplicate rule names, expressions that do not parse) and returns the
compiled pack. Every problem found is reported at once, each with its file and line.

Two checks depend on what the programme or the caller declares:
- `on:` event types: when the programme lists `event_types`, a rule may listen only to
  those and to the built-in ones (`builtin_event_types`: the programme's purchase, refund
  and follow-up events, `unsubscribed`, and the events the scheduled automations write);
- journeys: given the names of the journeys there are (`journeys=`), an `enroll_journey` or
  `journey_event` naming another one is a problem; `named_journeys` lists the ones a pack
  names, so a caller without the journeys can say they were not checked.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from automations.models import DateEvent
from rules.compiler import CompiledPack, compile_pack, content_version
from rules.expressions import ExpressionError, parse_expression
from rules.facts import fact_kind, known_facts
from rules.models import (
    All,
    AnyOf,
    AwardPoints,
    Compare,
    DeductPoints,
    EnrollJourney,
    JourneyEvent,
    Not,
    Program,
    Rule,
    RuleFile,
    SetTier,
)
from rules.source import (
    LinePath,
    SourceError,
    SourceProblem,
    YamlDoc,
    errors_from_validation,
    load_yaml,
    parse_yaml,
)

PROGRAM_FILE = "program.yaml"
STAGES = ("lead", "prospect", "customer", "member")

OPS_FOR: dict[str, set[str]] = {
    "number": {"==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists"},
    "string": {"==", "!=", "in", "not_in", "exists"},
    "boolean": {"==", "!=", "exists"},
    "list": {"contains", "exists"},
    "any": {"==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists"},
}
OPS_FOR["money"] = OPS_FOR["number"]

UNSUBSCRIBED = "unsubscribed"  # written by the unsubscribe pages (crmflow.processing)
# Event types the scheduled automations write (store/automations.py): expiry notices, churn
# and lead checks, tier moves, and the date events (birthdays, anniversaries).
AUTOMATION_EVENTS: tuple[str, ...] = (
    "points_expiring",
    "churn_scan",
    "lead_sla_check",
    "tier_changed",
    *get_args(DateEvent),
)


def builtin_event_types(program: Program) -> list[str]:
    """Event types a rule may always listen to, whatever the programme's `event_types`."""
    own = [program.purchase_event, program.refund_event, program.follow_up_event, UNSUBSCRIBED]
    return list(dict.fromkeys([*own, *AUTOMATION_EVENTS]))


def journey_name(effect: Any) -> str | None:
    """The journey an `enroll_journey` or `journey_event` effect names (else None)."""
    if isinstance(effect, EnrollJourney):
        return effect.enroll_journey.journey
    if isinstance(effect, JourneyEvent):
        return effect.journey_event.journey
    return None


def named_journeys(pack: CompiledPack) -> list[str]:
    """The journeys a pack's rules enroll customers in or send events to, sorted."""
    names = {journey_name(e) for r in pack.rules for e in r.rule.then}
    return sorted(n for n in names if n is not None)


@dataclass
class PackSource:
    """The texts a version was built from (stored with the version)."""

    program_path: str
    program_text: str
    files: list[tuple[str, str]]  # (file name, text)


def find_program(rules_dir: Path, program: Path | None = None) -> Path:
    if program is not None:
        return program
    for candidate in (rules_dir / PROGRAM_FILE, rules_dir.parent / PROGRAM_FILE):
        if candidate.is_file():
            return candidate
    raise SourceError(
        [SourceProblem(str(rules_dir), None, f"no {PROGRAM_FILE} in this folder or its parent")]
    )


def load_program(doc: YamlDoc) -> Program:
    try:
        return Program.model_validate(doc.data)
    except ValidationError as exc:
        raise SourceError(errors_from_validation(doc, exc)) from exc


class Checker:
    """Semantic checks of conditions and effects against the programme (facts, types, tiers).

    Collects SourceProblems with file and line; used for rule files and for journeys.
    `journeys`: the names of the journeys there are, to check the ones rules name (None:
    not checked)."""

    def __init__(
        self, program: Program, doc: YamlDoc, journeys: Collection[str] | None = None
    ) -> None:
        self.program = program
        self.doc = doc
        self.errors: list[SourceProblem] = []
        self.tiers = [t.name for t in program.tiers]
        self.journeys = None if journeys is None else sorted(set(journeys))
        declared = program.event_types
        self.event_types = set(declared) | set(builtin_event_types(program)) if declared else None

    def err(self, path: LinePath, message: str) -> None:
        self.errors.append(SourceProblem(self.doc.path, self.doc.line_of(path), message))

    def condition(self, cond: Any, path: LinePath) -> None:
        if isinstance(cond, All):
            for i, c in enumerate(cond.all):
                self.condition(c, (*path, "all", i))
        elif isinstance(cond, AnyOf):
            for i, c in enumerate(cond.any):
                self.condition(c, (*path, "any", i))
        elif isinstance(cond, Not):
            self.condition(cond.not_, (*path, "not"))
        elif isinstance(cond, Compare):
            self.compare(cond, path)

    def compare(self, c: Compare, path: LinePath) -> None:
        kind = fact_kind(c.fact, self.program)
        if kind is None:
            hint = (
                f"declare it under event_properties in {PROGRAM_FILE}"
                if c.fact.startswith("event.")
                else "known facts: " + ", ".join(known_facts(self.program))
            )
            self.err(path, f"unknown fact {c.fact!r}; {hint}")
            return
        if c.op not in OPS_FOR[kind]:
            allowed = " ".join(sorted(OPS_FOR[kind]))
            self.err(
                path, f"operator {c.op!r} does not fit {c.fact} ({kind}); use one of {allowed}"
            )
            return
        values = c.value if isinstance(c.value, list) else [] if c.value is None else [c.value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                self.err(path, f"{c.fact} is compared with {v!r}; expected a finite number")
                continue
            ok = {
                "number": isinstance(v, int | float) and not isinstance(v, bool),
                "string": isinstance(v, str),
                "boolean": isinstance(v, bool),
                "list": isinstance(v, str),
                "any": True,
            }[kind]
            if not ok:
                expected = "text" if kind == "list" else f"a {kind}"
                self.err(path, f"{c.fact} is compared with {v!r}; expected {expected}")
            elif c.fact == "tier" and v not in self.tiers:
                self.err(path, f"tier {v!r} is not defined; tiers: {', '.join(self.tiers)}")
            elif c.fact == "lifecycle_stage" and v not in STAGES:
                self.err(path, f"stage {v!r} is not one of {', '.join(STAGES)}")

    def amount(self, amount: float | str, path: LinePath) -> None:
        if not isinstance(amount, str):
            return
        try:
            _, facts = parse_expression(amount)
        except ExpressionError as exc:
            self.err(path, str(exc))
            return
        for fact in facts:
            kind = fact_kind(fact, self.program)
            if kind is None:
                self.err(path, f"expression {amount!r} reads unknown fact {fact!r}")
            elif kind not in ("number", "any"):
                self.err(path, f"expression {amount!r} reads {fact} ({kind}), not a number")

    def on(self, rule: Rule, path: LinePath) -> None:
        """`on:` names only event types the programme declares (when it declares them)."""
        if self.event_types is None:
            return
        listed = isinstance(rule.on, list)
        for i, kind in enumerate(rule.event_types()):
            if kind in self.event_types:
                continue
            declared = ", ".join(self.program.event_types)
            builtin = ", ".join(builtin_event_types(self.program))
            self.err(
                (*path, "on", i) if listed else (*path, "on"),
                f"on: event type {kind!r} is not declared in event_types in {PROGRAM_FILE}; "
                f"declared: {declared} (built in: {builtin})",
            )

    def journey_names(self, effects: list[Any], path: LinePath) -> None:
        """Effects name journeys that exist (when the journeys are known)."""
        if self.journeys is None:
            return
        for i, effect in enumerate(effects):
            name = journey_name(effect)
            if name is None or name in self.journeys:
                continue
            key = next(iter(type(effect).model_fields))
            there = ", ".join(self.journeys) or "none"
            self.err(
                (*path, i, key),
                f"{key}: journey {name!r} does not exist; journeys: {there}",
            )

    def rule(self, rule: Rule, path: LinePath) -> None:
        self.on(rule, path)
        if rule.when is not None:
            self.condition(rule.when, (*path, "when"))
        self.effects(rule.then, (*path, "then"))
        self.journey_names(rule.then, (*path, "then"))
        points = self.program.points
        refund = self.program.refund_event
        if points.clawback == "order" and refund in rule.event_types():
            for i, effect in enumerate(rule.then):
                if isinstance(effect, DeductPoints):
                    self.err(
                        (*path, "then", i, "deduct_points"),
                        f"deduct_points on {refund!r}: refunds already claw back the order's "
                        "points (points.clawback: order); remove this effect, or set "
                        f"points.clawback: none in {PROGRAM_FILE}",
                    )

    def effects(self, effects: list[Any], path: LinePath, *, event_facts: bool = True) -> None:
        """Check effects at `path` (a list); `event_facts=False` where there is no event."""
        for i, effect in enumerate(effects):
            epath = (*path, i)
            amount: float | str | None = None
            if isinstance(effect, SetTier) and effect.set_tier not in self.tiers:
                self.err(
                    (*epath, "set_tier"),
                    f"set_tier: tier {effect.set_tier!r} is not defined; tiers: "
                    + ", ".join(self.tiers),
                )
            elif isinstance(effect, AwardPoints | DeductPoints):
                args = (
                    effect.award_points
                    if isinstance(effect, AwardPoints)
                    else (effect.deduct_points)
                )
                epath = (*epath, next(iter(type(effect).model_fields)))
                amount = args.amount
                if args.reason is not None and args.reason.startswith("event."):
                    self.err(
                        (*epath, "reason"),
                        f"reason {args.reason!r} is stored as this literal text, not the "
                        "event's field; write the reason itself",
                    )
            if not isinstance(amount, str):
                continue
            self.amount(amount, epath)
            if event_facts:
                continue
            try:
                _, facts = parse_expression(amount)
            except ExpressionError:
                continue
            for fact in facts:
                if fact.startswith("event."):
                    self.err(epath, f"expression {amount!r} reads {fact!r}; there is no event here")


def rule_files(rules_dir: Path) -> list[Path]:
    if not rules_dir.is_dir():
        raise SourceError([SourceProblem(str(rules_dir), None, "not a folder of rule files")])
    return sorted(
        p for p in [*rules_dir.glob("*.yaml"), *rules_dir.glob("*.yml")] if p.name != PROGRAM_FILE
    )


def read_source(rules_dir: Path, program_path: Path | None = None) -> PackSource:
    """The texts of the programme file and of every rule file in `rules_dir`."""
    program_file = find_program(rules_dir, program_path)
    program_text = load_yaml(program_file).text
    errors: list[SourceProblem] = []
    files: list[tuple[str, str]] = []
    for path in rule_files(rules_dir):
        try:
            files.append((path.name, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(SourceProblem(str(path), None, f"cannot read the file: {exc}"))
    if errors:
        raise SourceError(errors)
    return PackSource(str(program_file), program_text, files)


def build_pack(
    source: PackSource, base_dir: str = "", journeys: Collection[str] | None = None
) -> CompiledPack:
    """Validate and compile; raise SourceError listing every problem with file and line.

    `journeys`: the names of the journeys there are; rules naming another are refused
    (None: journey names are not checked)."""
    program_doc = parse_yaml(source.program_text, source.program_path)
    program = load_program(program_doc)
    errors: list[SourceProblem] = []
    rules: list[tuple[str, Rule]] = []
    seen: dict[str, str] = {}
    for name, text in sorted(source.files):
        try:
            doc = parse_yaml(text, str(Path(base_dir) / name) if base_dir else name)
        except SourceError as exc:
            errors += exc.errors
            continue
        try:
            parsed = RuleFile.model_validate(doc.data if doc.data is not None else {})
        except ValidationError as exc:
            errors += errors_from_validation(doc, exc)
            continue
        checker = Checker(program, doc, journeys)
        for i, rule in enumerate(parsed.rules):
            rpath: LinePath = ("rules", i)
            if rule.name in seen:
                checker.err(
                    (*rpath, "name"),
                    f"duplicate rule name {rule.name!r} (first in {seen[rule.name]})",
                )
            else:
                seen[rule.name] = f"{doc.path}:{doc.line_of((*rpath, 'name'))}"
            checker.rule(rule, rpath)
            rules.append((name, rule))
        errors += checker.errors
    if errors:
        raise SourceError(errors)
    return compile_pack(content_version(source.program_text, source.files), program, rules)


def load_pack(rules_dir: Path, program_path: Path | None = None) -> tuple[CompiledPack, PackSource]:
    """Read, validate and compile a rules directory."""
    source = read_source(rules_dir, program_path)
    return build_pack(source, str(rules_dir)), source
