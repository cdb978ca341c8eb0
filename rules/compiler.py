"""Compile validated rule files into durable_rules ruleset definitions (plain dicts).

Facts travel to the engine as one flat message with short keys (`f3`), booleans as 1/0 and
list membership as flags (`c2` = "tags contains vip"), because durable_rules compares scalars
only. A value key belongs to one fact *and one type*: a text never reaches a number
comparison, which durable_rules would coerce (erratically, for ""). durable_rules has no
`not`, and its `$nex` hangs when the field is missing, so negation is pushed down to the
comparisons (De Morgan) and "missing" is a presence flag (`p3` = 0): `not (x < 5)` compiles
to `x >= 5 or x is not a number`. `exists` has its own flag per fact (`e1`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from rules.expressions import parse_expression
from rules.facts import TIER_METRIC_FACTS
from rules.models import (
    All,
    AnyOf,
    AwardPoints,
    Compare,
    DeductPoints,
    DowngradeTier,
    Not,
    Program,
    Rule,
    UpgradeTier,
)

MAX_RULES_PER_RULESET = 400  # durable_rules fails above ~500 rules in one ruleset
ALWAYS = "_"  # present with value 1 in every message


@dataclass
class CompiledRule:
    index: int  # position in load order: files sorted by name, then rules in file order
    rule: Rule
    file: str
    facts: list[str]  # the facts its condition reads, for explanations
    expression: dict[str, Any]


ValueType = str  # "number", "string" or "boolean"


def value_type(v: Any) -> ValueType | None:
    """The message type of a fact value; None for what the engine cannot compare."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "number"
    if isinstance(v, float):
        return "number" if math.isfinite(v) else None
    if isinstance(v, str):
        return "string"
    return None


def encode(v: Any) -> Any:
    """A value durable_rules reads back as written: booleans as 1/0; floats that JSON would
    write with an exponent but no decimal point (1e-05), which it cannot parse, nudged by
    one unit in the last place until they have one."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 2**62:
            return int(v)
        while "e" in repr(v) and "." not in repr(v):
            v = math.nextafter(v, math.inf)
    return v


@dataclass
class Keys:
    """Short message keys. Values are keyed by fact *and* type, so a text never reaches a
    number comparison (durable_rules would coerce it); presence is kept per fact and type
    (for negations) and per fact (for `exists`); list membership has flags."""

    value: dict[tuple[str, ValueType], str] = field(default_factory=dict)
    typed_presence: dict[tuple[str, ValueType], str] = field(default_factory=dict)
    presence: dict[str, str] = field(default_factory=dict)
    member: dict[tuple[str, str], str] = field(default_factory=dict)

    def value_key(self, fact: str, typ: ValueType) -> str:
        return self.value.setdefault((fact, typ), f"f{len(self.value)}")

    def typed_presence_key(self, fact: str, typ: ValueType) -> str:
        return self.typed_presence.setdefault((fact, typ), f"p{len(self.typed_presence)}")

    def presence_key(self, fact: str) -> str:
        return self.presence.setdefault(fact, f"e{len(self.presence)}")

    def member_key(self, fact: str, item: str) -> str:
        return self.member.setdefault((fact, item), f"c{len(self.member)}")


def _or(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return parts[0] if len(parts) == 1 else {"$or": parts}


def _and(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return parts[0] if len(parts) == 1 else {"$and": parts}


_OPPOSITE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_DR_OP = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}


def compile_condition(cond: Any, keys: Keys, negate: bool = False) -> dict[str, Any]:
    """The durable_rules expression for `cond` (or for its negation)."""
    if isinstance(cond, All):
        parts = [compile_condition(c, keys, negate) for c in cond.all]
        return _or(parts) if negate else _and(parts)
    if isinstance(cond, AnyOf):
        parts = [compile_condition(c, keys, negate) for c in cond.any]
        return _and(parts) if negate else _or(parts)
    if isinstance(cond, Not):
        return compile_condition(cond.not_, keys, not negate)
    assert isinstance(cond, Compare)
    op, fact = cond.op, cond.fact
    # != and not_in are the negations of == and in (true when the fact is missing)
    if op == "!=":
        op, negate = "==", not negate
    elif op == "not_in":
        op, negate = "in", not negate
    if op == "in":
        values = cond.value if isinstance(cond.value, list) else [cond.value]
        either = AnyOf(any=[Compare(fact=fact, op="==", value=v) for v in values])
        return compile_condition(either, keys, negate)
    if op == "contains":
        return {keys.member_key(fact, str(cond.value)): 0 if negate else 1}
    if op == "exists":
        return {keys.presence_key(fact): 0 if negate else 1}
    typ = value_type(cond.value)
    if typ is None:  # refused by validation; never true
        return {ALWAYS: 0} if not negate else {ALWAYS: 1}
    k = keys.value_key(fact, typ)
    v = encode(cond.value)
    if op == "==":
        if negate:
            return _or([{"$neq": {k: v}}, {keys.typed_presence_key(fact, typ): 0}])
        return {k: v}
    if negate:
        flipped = {_DR_OP[_OPPOSITE[op]]: {k: v}}
        return _or([flipped, {keys.typed_presence_key(fact, typ): 0}])
    return {_DR_OP[op]: {k: v}}


def condition_facts(cond: Any) -> list[str]:
    if cond is None:
        return []
    if isinstance(cond, All):
        return [f for c in cond.all for f in condition_facts(c)]
    if isinstance(cond, AnyOf):
        return [f for c in cond.any for f in condition_facts(c)]
    if isinstance(cond, Not):
        return condition_facts(cond.not_)
    return [cond.fact]


def rule_expression(rule: Rule, keys: Keys) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    types = rule.event_types()
    if types:
        parts.append(compile_condition(Compare(fact="event.type", op="in", value=types), keys))
    if rule.when is not None:
        parts.append(compile_condition(rule.when, keys))
    return _and(parts) if parts else {ALWAYS: 1}


@dataclass
class CompiledPack:
    """A rules version: programme, rules in conflict order, engine definitions, message keys."""

    version: str
    program: Program
    rules: list[CompiledRule]
    keys: Keys
    rulesets: dict[str, list[CompiledRule]]  # ruleset name -> its rules
    # every fact a condition or an effect of this version reads (see `needed_facts`)
    needed_facts: frozenset[str] = frozenset()
    # message plans, derived from `keys` (see __post_init__)
    _value_plan: list[tuple[str, ValueType, str, str | None]] = field(init=False, repr=False)
    _presence_only: list[tuple[tuple[str, ValueType], str]] = field(init=False, repr=False)

    def message(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The flat durable_rules message for a facts dict (without sid / id)."""
        msg: dict[str, Any] = {ALWAYS: 1}
        get = facts.get
        # the same as value_type(v) == typ and encode(v), inlined: this runs for every event
        for fact, typ, key, presence_key in self._value_plan:
            v = get(fact)
            t = type(v)
            if t is bool:
                ok = typ == "boolean"
                if ok:
                    msg[key] = int(v)  # type: ignore[arg-type]
            elif t is int:
                ok = typ == "number"
                if ok:
                    msg[key] = v
            elif t is float:
                ok = typ == "number" and math.isfinite(v)  # type: ignore[arg-type]
                if ok:
                    msg[key] = encode(v)
            elif t is str:
                ok = typ == "string"
                if ok:
                    msg[key] = v
            else:
                ok = value_type(v) == typ  # subclasses of the plain types
                if ok:
                    msg[key] = encode(v)
            if presence_key is not None:
                msg[presence_key] = 1 if ok else 0
        for (fact, typ), key in self._presence_only:
            msg[key] = 1 if value_type(get(fact)) == typ else 0
        for fact, key in self.keys.presence.items():
            v = get(fact)
            msg[key] = 0 if v is None or (isinstance(v, float) and not math.isfinite(v)) else 1
        for (fact, item), key in self.keys.member.items():
            container = get(fact)
            msg[key] = (
                1
                if isinstance(container, set | frozenset | list | tuple) and item in container
                else 0
            )
        return msg

    def __post_init__(self) -> None:
        typed = self.keys.typed_presence
        self._value_plan = [
            (fact, typ, key, typed.get((fact, typ))) for (fact, typ), key in self.keys.value.items()
        ]
        self._presence_only = [(ft, key) for ft, key in typed.items() if ft not in self.keys.value]

    def ordered(self, indexes: set[int]) -> list[CompiledRule]:
        """Fired rules in the order their effects apply: priority (high first), then load order."""
        fired = [r for r in self.rules if r.index in indexes]
        return sorted(fired, key=lambda r: (-r.rule.priority, r.index))


def content_version(program_text: str, files: list[tuple[str, str]]) -> str:
    """A content hash of the programme and the rule files (name and text), as the version."""
    h = hashlib.sha256()
    h.update(program_text.encode())
    for name, text in sorted(files):
        h.update(b"\0" + name.encode() + b"\0" + text.encode())
    return h.hexdigest()[:16]


def compile_pack(version: str, program: Program, rules: list[tuple[str, Rule]]) -> CompiledPack:
    """Compile enabled rules; split into rulesets of at most MAX_RULES_PER_RULESET."""
    keys = Keys()
    compiled: list[CompiledRule] = []
    for index, (file, rule) in enumerate(rules):
        if not rule.enabled:
            continue
        compiled.append(
            CompiledRule(
                index=index,
                rule=rule,
                file=file,
                facts=["event.type"] * bool(rule.on) + condition_facts(rule.when),
                expression=rule_expression(rule, keys),
            )
        )
    rulesets: dict[str, list[CompiledRule]] = {}
    for n in range(0, max(len(compiled), 1), MAX_RULES_PER_RULESET):
        rulesets[f"crmflow_{version}_{n // MAX_RULES_PER_RULESET}"] = compiled[
            n : n + MAX_RULES_PER_RULESET
        ]
    needed = needed_facts([c.rule for c in compiled], [c.facts for c in compiled])
    return CompiledPack(version, program, compiled, keys, rulesets, needed)


def needed_facts(rules: list[Rule], condition_facts: list[list[str]]) -> frozenset[str]:
    """The facts that the rules' conditions and effects read: amount expressions, and the
    qualifying metrics when a tier moves to where the customer qualifies."""
    names: set[str] = {f for facts in condition_facts for f in facts}
    for rule in rules:
        for eff in rule.then:
            amount: float | str | None = None
            if isinstance(eff, AwardPoints):
                amount = eff.award_points.amount
            elif isinstance(eff, DeductPoints):
                amount = eff.deduct_points.amount
            if isinstance(amount, str):
                names.update(parse_expression(amount)[1])
            if (isinstance(eff, UpgradeTier) and eff.upgrade_tier == "qualified") or (
                isinstance(eff, DowngradeTier) and eff.downgrade_tier == "qualified"
            ):
                names.update(TIER_METRIC_FACTS)
    return frozenset(names)
