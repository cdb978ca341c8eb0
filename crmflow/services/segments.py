"""Segment previews: how many customers a condition matches now, and a few of them.

The condition is the rules' own language (the one a journey's segment entry uses), tested on
the facts the rules build from each profile, as `crmflow.segments.enter_segment` does —
without queueing anything. Customers are read in pages by id, each page's rule state loaded
set-based. The programme that types the facts is the active rules version's, or one given.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from crmflow.processing import active_pack
from crmflow.segments import match_page
from crmflow.services.errors import FieldProblem, Invalid, Refused
from crmflow.services.rules import MAX_YAML_DEPTH, MAX_YAML_NODES, yaml_bounds
from crmflow.services.runtime import Runtime
from rules.compiler import condition_facts
from rules.models import Condition, Program
from rules.pack import Checker
from rules.source import SourceError, YamlDoc, errors_from_validation, parse_yaml
from store.db import utcnow

PAGE = 1000
MAX_SAMPLE = 100
MAX_CONDITION_CHARS = 20_000
FIELD = "condition"

_condition: TypeAdapter[Any] = TypeAdapter(Condition)


class SegmentQuery(BaseModel):
    """A condition on the customer's profile and how many matching ids to show."""

    condition: dict[str, Any] | Annotated[str, Field(max_length=MAX_CONDITION_CHARS)] = Field(
        description="a rules condition: 'tags contains vip', {all: [...]}, {any: [...]}, "
        "{not: ...} (as JSON, or as YAML text)",
        examples=[{"all": ["tags contains big-spender", "consent.email == true"]}],
    )
    sample: int = Field(20, ge=0, le=MAX_SAMPLE, description="matching customer ids to show")


class SegmentPreview(BaseModel):
    matched: int = Field(description="customers the condition matches now")
    customers: int = Field(description="customers tested (all but stubs)")
    sample: list[str] = Field(description="the first matching customer ids, by id")
    at: datetime = Field(description="the time the facts were computed for")
    rules_version: str | None = Field(
        description="the rules version whose programme typed the facts (None: a given one)"
    )


def _data_bounds(data: Any) -> str | None:
    """The problem with a JSON condition too large or too deep to evaluate, or None."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            return f"more than {MAX_YAML_NODES} values"
        if depth > MAX_YAML_DEPTH:
            return f"nested deeper than {MAX_YAML_DEPTH} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return None


def _doc(condition: dict[str, Any] | str) -> YamlDoc:
    if isinstance(condition, dict):
        bad = _data_bounds(condition)
        if bad:
            raise Invalid(bad, field=FIELD)
        return YamlDoc(path=FIELD, data=condition, lines={}, text="")
    too_big = yaml_bounds(condition, FIELD)
    if too_big is not None:
        raise Invalid(too_big.message, field=FIELD)
    try:
        return parse_yaml(condition, FIELD)
    except SourceError as exc:
        raise Invalid([FieldProblem(FIELD, e.message) for e in exc.errors]) from exc


def parse_condition(condition: dict[str, Any] | str, program: Program) -> Any:
    """A validated condition on the profile; `Invalid` naming what is wrong (unknown facts,
    operators that do not fit, `event.*` facts: a segment has no event)."""
    doc = _doc(condition)
    if doc.data is None:
        raise Invalid("empty: give a condition such as 'tags contains vip'", field=FIELD)
    try:
        cond = _condition.validate_python(doc.data)
    except ValidationError as exc:
        raise Invalid(
            [FieldProblem(FIELD, e.message) for e in errors_from_validation(doc, exc)]
        ) from exc
    checker = Checker(program, doc)
    checker.condition(cond, ())
    problems = [FieldProblem(FIELD, e.message) for e in checker.errors]
    for fact in dict.fromkeys(condition_facts(cond)):
        if fact.startswith("event."):
            problems.append(
                FieldProblem(FIELD, f"segments test the customer's profile; {fact!r} is an event's")
            )
    if problems:
        raise Invalid(problems)
    return cond


def preview(
    rt: Runtime,
    query: SegmentQuery,
    program: Program | None = None,
    at: datetime | None = None,
) -> SegmentPreview:
    """Count the customers `query.condition` matches at `at` (default now) and show the
    first `query.sample` of them. The facts are typed by `program`, by default the active
    rules version's (`Refused` when none is deployed)."""
    at = at or utcnow()
    version: str | None = None
    if program is None:
        with rt.engine.connect() as conn:
            pack = active_pack(conn)
        if pack is None:
            raise Refused("a segment is tested on the rules' facts: deploy a rules version first")
        program, version = pack.program, pack.version
    cond = parse_condition(query.condition, program)
    needed = frozenset(condition_facts(cond))
    sample = min(query.sample, MAX_SAMPLE)
    result = SegmentPreview(matched=0, customers=0, sample=[], at=at, rules_version=version)
    after = ""
    while True:
        with rt.engine.connect() as conn:
            ids, matched = match_page(conn, cond, program, at, after, needed)
        if not ids:
            return result
        after = ids[-1]
        result.matched += len(matched)
        result.sample.extend(matched[: sample - len(result.sample)])
        result.customers += len(ids)
