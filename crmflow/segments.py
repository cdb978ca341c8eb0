"""Segment entries: the customers matching a journey's segment condition enter it.

The condition is the rules' own (tags, tier, points, spend windows, attributes, consent …),
tested on the facts the rules build. Customers are read in pages by id, each page's rule
state loaded set-based (a handful of queries per page, never one per customer), and the
ones that match get an `enroll` command in the journey outbox — under a key naming the
journey, the version and the run, so running the same segment entry twice enrolls nobody
twice; the dispatcher then applies the journey's status and re-entry policy as for any
other enrollment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, select

from crmflow.dispatch import may_enter
from crmflow.processing import HISTORY_DAYS, active_pack
from journeys.conditions import evaluate
from journeys.models import Journey, ReentryPolicy, SegmentEntry
from rules.facts import EventFacts, build_facts
from rules.models import Condition, Program
from store import journeys as jstore
from store.db import utcnow
from store.models import CustomerRow, JourneyCommandRow
from store.rule_state import load_states
from store.sql import insert_for, table_of

PAGE = 1000


class SegmentError(ValueError):
    pass


@dataclass
class SegmentRun:
    journey: str
    run: str
    customers: int = 0
    matched: int = 0
    queued: int = 0
    # matched but not queued, by why (re-entry policy, already enrolled, queued before in
    # this run, the journey paused): the dispatcher would refuse them
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, why: str, n: int = 1) -> None:
        self.refused[why] = self.refused.get(why, 0) + n


@dataclass(frozen=True)
class _Plan:
    journey: str
    version: str
    segment: Condition  # the entry's condition
    program: Program  # the active rules' programme
    reentry: str | ReentryPolicy
    status: str  # active, paused, archived


def _plan(conn: Connection, name: str) -> _Plan:
    found = jstore.deployed(conn, name)
    pack = active_pack(conn)
    if not found:
        raise SegmentError(f"no journey {name!r} is deployed")
    d = found[0]
    journey = Journey.model_validate(d.definition)
    entry = journey.entry
    if not isinstance(entry, SegmentEntry):
        raise SegmentError(f"journey {name!r} is not entered by a segment")
    if pack is None:
        raise SegmentError("a segment is tested on the rules' facts: deploy a rules version first")
    return _Plan(name, d.version, entry.segment, pack.program, journey.reentry, d.status)


def enter_segment(engine: Engine, name: str, run: str, at: datetime | None = None) -> SegmentRun:
    """Queue an enrollment for every customer in journey `name`'s segment at `at`, one
    transaction per page of customers.

    `run` names this evaluation (`once`, or a schedule's run time): a customer is queued once
    per journey version and run."""
    at = at or utcnow()
    with engine.connect() as conn:
        plan = _plan(conn, name)
    report = SegmentRun(journey=name, run=run)
    after: str | None = ""
    while after is not None:
        with engine.begin() as conn:
            after = _page(conn, plan, run, at, after, report)
    return report


def enter_segment_in(
    conn: Connection, name: str, run: str, at: datetime | None = None
) -> SegmentRun:
    """`enter_segment` inside the caller's transaction: a deploy that enters its segment at
    once stores the version and the enrollments together, or neither."""
    at = at or utcnow()
    plan = _plan(conn, name)
    report = SegmentRun(journey=name, run=run)
    after: str | None = ""
    while after is not None:
        after = _page(conn, plan, run, at, after, report)
    return report


def match_page(
    conn: Connection,
    condition: Condition,
    program: Program,
    at: datetime,
    after: str,
    needed: frozenset[str] | None = None,
) -> tuple[list[str], list[str]]:
    """The next page of customers (ids after `after`, stubs left out) and those of them
    whose facts at `at` meet `condition`. One page's rule states are loaded set-based;
    `needed` limits the facts built to the ones the condition reads."""
    c = CustomerRow
    ids = list(
        conn.execute(
            select(c.customer_id)
            .where(c.customer_id > after, c.is_stub.is_(False))
            .order_by(c.customer_id)
            .limit(PAGE)
        ).scalars()
    )
    if not ids:
        return [], []
    states = load_states(
        conn,
        ids,
        at - timedelta(days=HISTORY_DAYS),
        purchase_event=program.purchase_event,
        spend_property=program.spend_property,
        follow_up_event=program.follow_up_event,
    )
    matched = []
    for cid in ids:
        state = states[cid]
        state.purchases = [p for p in state.purchases if p[0] <= at]
        facts = build_facts(state, EventFacts("", "", at, {}), program, needed)
        if evaluate(condition, facts):
            matched.append(cid)
    return ids, matched


def _page(
    conn: Connection, plan: _Plan, run: str, at: datetime, after: str, report: SegmentRun
) -> str | None:
    """Test one page of customers after id `after` and queue the ones that match; the last
    id of the page, or None when there were none."""
    ids, matched = match_page(conn, plan.segment, plan.program, at, after)
    if not ids:
        return None
    report.customers += len(ids)
    report.matched += len(matched)
    matched = _may_enter(conn, plan, matched, at, report)
    if matched:
        t = table_of(JourneyCommandRow)
        result = conn.execute(
            insert_for(conn, t)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(t.c.id),
            [
                {
                    "dedupe_key": f"segment:{plan.journey}:{plan.version}:{run}:{cid}",
                    "customer_id": cid,
                    "journey": plan.journey,
                    "command": "enroll",
                    "event": None,
                    "data": {"segment_run": run},
                    "event_id": None,
                    "rule": None,
                    "created_at": utcnow(),
                }
                for cid in matched
            ],
        )
        queued = len(result.all())
        report.queued += queued
        if queued < len(matched):
            report.refuse("already queued in this run", len(matched) - queued)
    return ids[-1]


def _may_enter(
    conn: Connection, plan: _Plan, matched: list[str], at: datetime, report: SegmentRun
) -> list[str]:
    """Those of `matched` the dispatcher would start (the others counted by why not): the
    same re-entry checks, made now so that `journeys enter` can say who will start."""
    if plan.status != "active":
        report.refuse(f"journey {plan.status}", len(matched))
        return []
    past = jstore.past_enrollments_many(conn, plan.journey, matched)
    allowed = []
    for cid in matched:
        before = past.get(cid)
        why = may_enter(plan.reentry, before, at) if before is not None else None
        if why is None:
            allowed.append(cid)
        else:
            report.refuse(why)
    return allowed
