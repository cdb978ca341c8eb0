"""Why each rule fired or did not, for one event: what `crmflow rules test` shows.

`explain_event(pack, facts, fired)` takes the facts an event was evaluated with (the facts
the engine saw) and the names of the rules that fired, and says for every rule of the pack,
in the order their effects apply, one of:

- `fired`, with the values of the facts its condition read;
- `not_listening`: its `on:` does not name this event type;
- `condition_false`: the first part of its `when` that was false, where it is in the rule
  (`when.all[1]`) and the values it saw (`spend_365d >= 8000 was false: spend_365d =
  1200.0`); a fact the customer does not have is said to be missing. An `any` that was false
  says why each of its alternatives was; a `not` that was false shows what held inside it;
- `not_fired`: the engine did not fire it although its condition holds for these facts (the
  two are held equal by tests; this is said rather than hidden if they ever differ).

Which part is false is decided by the Python evaluator of the same conditions that journeys
use (`journeys.conditions`), which a property test holds to the compiled rules. Pure: facts
in, explanations out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from journeys.conditions import compare, evaluate
from rules.compiler import CompiledPack, CompiledRule, condition_facts
from rules.models import All, AnyOf, Compare, Not

Status = Literal["fired", "not_listening", "condition_false", "not_fired"]


class FalseCondition(BaseModel):
    """The first part of a rule's condition that was false, and the facts it saw."""

    path: str = Field(description="where it is in the rule: when, when.all[1], when.any[0].not")
    condition: str = Field(description="the condition, as written: spend_365d >= 8000")
    values: dict[str, Any] = Field(description="the facts it read, with the values they had")
    missing: list[str] = Field(description="facts it read that this customer does not have")
    branches: list[FalseCondition] = Field(
        default_factory=list, description="for `any`: why each of its alternatives was false"
    )

    def text(self) -> str:
        """One line: `when.all[1]: spend_365d >= 8000 was false: spend_365d = 1200.0`."""
        if self.branches:
            why = "; ".join(b.text() for b in self.branches)
            return f"{self._none_held()}: {why}"
        return f"{self.path}: {self.condition} was false: {seen_text(self.values, self.missing)}"

    def lines(self) -> list[str]:
        """The same over lines: an `any`'s alternatives each on its own, indented."""
        if not self.branches:
            return [self.text()]
        return [f"{self._none_held()}:", *("  " + x for b in self.branches for x in b.lines())]

    def _none_held(self) -> str:
        return f"{self.path}: none of its {len(self.branches)} alternatives held"


class RuleExplanation(BaseModel):
    """Whether one rule fired for one event, and why (or why not)."""

    rule: str
    file: str
    priority: int
    status: Status
    reason: str = Field(description="the same in one line of text")
    false_condition: FalseCondition | None = Field(
        None, description="for condition_false: the first part of `when` that was false"
    )


# --------------------------------------------------------------------------- text


def literal(value: Any) -> str:
    """A condition's value as it is written in a rule file: `true`, `8000`, `[lead, prospect]`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return str(value)


def condition_text(cond: Any) -> str:
    """A condition in one line: `a >= 1`, `(a >= 1 and b == x)`, `not (tags contains vip)`."""
    if isinstance(cond, All):
        return "(" + " and ".join(condition_text(c) for c in cond.all) + ")"
    if isinstance(cond, AnyOf):
        return "(" + " or ".join(condition_text(c) for c in cond.any) + ")"
    if isinstance(cond, Not):
        inner = condition_text(cond.not_)
        return f"not {inner}" if inner.startswith("(") else f"not ({inner})"
    assert isinstance(cond, Compare)
    if cond.value is None:
        return f"{cond.fact} {cond.op}"
    return f"{cond.fact} {cond.op} {literal(cond.value)}"


def plain(value: Any) -> Any:
    """A fact's value as JSON can hold it (tags are a set: a sorted list)."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    return value


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def seen_text(values: Mapping[str, Any], missing: Collection[str]) -> str:
    """`spend_365d = 1200.0, tier is missing`, in the order given (values, then missing)."""
    parts = [f"{k} = {_shown(v)}" for k, v in values.items()]
    parts += [f"{k} is missing" for k in missing]
    return ", ".join(parts) or "no facts"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def seen(facts: Mapping[str, Any], names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The values of `names` in `facts` (each once, in order) and the names that are missing."""
    values: dict[str, Any] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        value = facts.get(name)
        if _present(value):
            values[name] = plain(value)
        else:
            missing.append(name)
    return values, missing


# --------------------------------------------------------------------------- walker


def _false(cond: Any, facts: Mapping[str, Any], path: str, **more: Any) -> FalseCondition:
    values, missing = seen(facts, condition_facts(cond))
    return FalseCondition(
        path=path, condition=condition_text(cond), values=values, missing=missing, **more
    )


def first_false(cond: Any, facts: Mapping[str, Any], path: str = "when") -> FalseCondition | None:
    """The first part of `cond` that is false for `facts`, or None when `cond` holds.

    `all`: its first false member, looked into; `any`: the `any` itself, with why each
    alternative was false; `not`: the `not` itself, with the facts of what held inside it;
    a comparison: itself, with the value of its fact."""
    if cond is None:
        return None
    if isinstance(cond, All):
        for i, c in enumerate(cond.all):
            if not evaluate(c, facts):
                return first_false(c, facts, f"{path}.all[{i}]")
        return None
    if isinstance(cond, AnyOf):
        if evaluate(cond, facts):
            return None
        branches = [first_false(c, facts, f"{path}.any[{i}]") for i, c in enumerate(cond.any)]
        return _false(cond, facts, path, branches=[b for b in branches if b is not None])
    if isinstance(cond, Not):
        return _false(cond, facts, path) if evaluate(cond.not_, facts) else None
    if isinstance(cond, Compare):
        return None if compare(cond, facts) else _false(cond, facts, path)
    raise TypeError(f"not a condition: {cond!r}")


def explain_rule(rule: CompiledRule, facts: Mapping[str, Any], fired: bool) -> RuleExplanation:
    """Whether `rule` fired for the event `facts` describe, and why (or why not)."""
    r = rule.rule
    head: dict[str, Any] = {"rule": r.name, "file": rule.file, "priority": r.priority}
    types = r.event_types()
    event_type = facts.get("event.type")
    if fired:
        if r.when is None:
            reason = f"fired: on {event_type}, no condition" if types else "fired: no condition"
        else:
            values, missing = seen(facts, condition_facts(r.when))
            reason = f"fired: {seen_text(values, missing)}"
        return RuleExplanation(**head, status="fired", reason=reason)
    if types and event_type not in types:
        return RuleExplanation(
            **head,
            status="not_listening",
            reason=f"listens to {', '.join(types)}, not {event_type}",
        )
    false = first_false(r.when, facts)
    if false is None:
        return RuleExplanation(
            **head,
            status="not_fired",
            reason="not fired, though its condition holds for these facts (the engine and "
            "this explanation disagree: please report it)",
        )
    return RuleExplanation(
        **head, status="condition_false", reason=false.text(), false_condition=false
    )


def explain_event(
    pack: CompiledPack, facts: Mapping[str, Any], fired: Collection[str]
) -> list[RuleExplanation]:
    """Every enabled rule of `pack`, in the order effects apply, explained for one event:
    `facts` are the facts the rules saw, `fired` the names of the rules that fired."""
    names = set(fired)
    order = pack.ordered({r.index for r in pack.rules})
    return [explain_rule(r, facts, r.rule.name in names) for r in order]
