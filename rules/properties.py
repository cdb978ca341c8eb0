"""Event properties against the programme's declarations: the check every event meets at the
door (a file import, the HTTP API) when a rules version is deployed.

`check_properties` is pure: an event's type and properties and the active programme in, the
fields at fault out, each with a reason in words. A property the programme declares
(`event_properties`) must have its declared type when it is present:

- `number`: a finite number (not true or false);
- `money`: a finite number, not true or false, at least 0, at most the programme's
  `max_amount`, with at most two decimals;
- `string`: text; `boolean`: true or false.

A property sent as null counts as absent (a refund without an amount is a full refund).
Undeclared properties are not checked (rules cannot read them). The spend property of the
purchase and refund events is money whatever its declaration says: spend, points and
clawbacks are computed from it. A `currency`, when present, must be the programme's or one
that `currency_rates` lists (amounts still count one to one in this version).
"""

from __future__ import annotations

import json
import math
from typing import Any

from rules.models import EventFieldType, Program

CURRENCY = "currency"

_EXPECTED: dict[str, str] = {
    "number": "a number",
    "money": "money: a finite number ≥ 0 with at most two decimals",
    "string": "a string",
    "boolean": "true or false",
}


def shown(value: Any) -> str:
    """A value as the sender wrote it: strings quoted, JSON words for the rest."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    return isinstance(value, int) or math.isfinite(value)


def type_problem(kind: EventFieldType, value: Any, program: Program) -> str | None:
    """Why `value` is not of the declared `kind`, or None when it is."""
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "number":
        ok = _is_number(value) and _finite(value)
    else:  # money
        ok = _is_number(value) and _finite(value) and value >= 0 and round(value, 2) == value
        if ok and value > program.max_amount:
            return (
                f"expected money of at most {program.max_amount:,.2f} (the programme's "
                f"max_amount), got {shown(value)}"
            )
    return None if ok else f"expected {_EXPECTED[kind]}, got {shown(value)}"


def currency_problem(value: Any, program: Program) -> str | None:
    """Why `value` is not a currency the programme accepts, or None when it is."""
    if not isinstance(value, str):
        return f"expected a currency code such as {program.currency!r}, got {shown(value)}"
    if value == program.currency or value in program.currency_rates:
        return None
    rates = sorted(program.currency_rates)
    others = (
        f"currency_rates has rates for {', '.join(rates)} only"
        if rates
        else "currency_rates has no rate for it"
    )
    return (
        f"currency {value!r} is not accepted: the programme's currency is "
        f"{program.currency}, and {others}"
    )


def check_properties(
    event_type: str, props: dict[str, Any], program: Program
) -> list[tuple[str, str]]:
    """The properties of an `event_type` event that do not match the programme's
    declarations: `(field, reason)` pairs, the field as `properties.<name>`, in the order of
    `props`; empty when all is well."""
    declared = program.event_properties
    spend = (
        program.spend_property
        if event_type == program.purchase_event or event_type == program.refund_event
        else None
    )
    problems: list[tuple[str, str]] = []
    for name, value in props.items():  # a plain loop: this runs for every event that arrives
        if value is None:
            continue
        kind: EventFieldType | None = "money" if name == spend else declared.get(name)
        why = type_problem(kind, value, program) if kind is not None else None
        if why is None and name == CURRENCY:
            why = currency_problem(value, program)
        if why is not None:
            problems.append((f"properties.{name}", why))
    return problems
