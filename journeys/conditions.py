"""Evaluate a rules-language condition against a facts dict, in plain Python.

Journeys test conditions one at a time (a branch, an awaited event, an entry, a goal), where
compiling a durable_rules ruleset per journey would be heavy; this evaluator gives the same
answers as the compiled rules (a property test holds it to the engine):

- a comparison is false unless the fact holds a value of the compared value's type: a bool
  is not a number, ints and floats are both numbers, NaN and infinities are no value;
- `<`, `<=`, `>`, `>=` order numbers numerically, text by code point, false before true;
- `!=` and `not_in` are the negations of `==` and `in` (so they hold for a missing fact);
- `exists` holds when the fact is present (not None, not NaN or infinite);
- `contains` holds when a list, set or tuple fact holds the value;
- `all`, `any` and `not` combine as usual.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import TypeAdapter

from rules.compiler import condition_facts, value_type
from rules.models import All, AnyOf, Compare, Condition, Not

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_CONTAINERS = (set, frozenset, list, tuple)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _same_type(fact: Any, value: Any) -> bool:
    typ = value_type(value)
    return typ is not None and value_type(fact) == typ


def compare(c: Compare, facts: Mapping[str, Any]) -> bool:
    """One comparison, `fact op value`."""
    fact = facts.get(c.fact)
    op = c.op
    if op == "exists":
        return _present(fact)
    if op == "!=":
        return not compare(Compare(fact=c.fact, op="==", value=c.value), facts)
    if op == "not_in":
        return not compare(Compare(fact=c.fact, op="in", value=c.value), facts)
    if op == "in":
        values = c.value if isinstance(c.value, list) else [c.value]
        return any(_same_type(fact, v) and fact == v for v in values)
    if op == "contains":
        return isinstance(fact, _CONTAINERS) and str(c.value) in fact
    if not _same_type(fact, c.value):
        return False
    if op == "==":
        return bool(fact == c.value)
    return bool(_ORDER[op](fact, c.value))


def evaluate(condition: Any, facts: Mapping[str, Any]) -> bool:
    """Whether `condition` (a rules `Condition`, or None for "always") holds for `facts`."""
    if condition is None:
        return True
    if isinstance(condition, All):
        return all(evaluate(c, facts) for c in condition.all)
    if isinstance(condition, AnyOf):
        return any(evaluate(c, facts) for c in condition.any)
    if isinstance(condition, Not):
        return not evaluate(condition.not_, facts)
    if isinstance(condition, Compare):
        return compare(condition, facts)
    raise TypeError(f"not a condition: {condition!r}")


# --------------------------------------------------------------------------- what a condition reads

EVENT_TYPE = "event.type"
_CONDITIONS: TypeAdapter[list[Condition | None]] = TypeAdapter(list[Condition | None])


def needs_profile(condition: Any) -> bool:
    """Whether `condition` reads the customer's facts (anything but `event.*`)."""
    return any(not f.startswith("event.") for f in condition_facts(condition))


def reads_event_properties(condition: Any) -> bool:
    """Whether `condition` reads an event's properties (`event.<field>` but `event.type`)."""
    return any(f.startswith("event.") and f != EVENT_TYPE for f in condition_facts(condition))


def event_facts(event_type: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """An event's facts as conditions name them: `event.type`, `event.<property>`."""
    facts: dict[str, Any] = {EVENT_TYPE: event_type}
    for key, value in properties.items():
        facts[f"event.{key}"] = value
    return facts


def conditions_to_json(conditions: list[Any]) -> list[Any]:
    """Conditions as JSON data that `conditions_from_json` reads back (None stays None)."""
    return list(_CONDITIONS.dump_python(conditions, mode="json", by_alias=True, exclude_none=True))


def conditions_from_json(data: list[Any]) -> list[Condition | None]:
    return _CONDITIONS.validate_python(data)
