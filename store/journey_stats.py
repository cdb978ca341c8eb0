"""Journey reports from the store: per version and node, how many enrollments entered, wait
there, were sent a message or suppressed (and why), failed or ended; goal conversions per
split variant and for the holdout, with the uplift; and who is where.

Everything is counted by the database (GROUP BY over `journey_steps` and
`journey_enrollments`, an EXISTS over `events` for the holdout), a handful of statements per
report whatever the number of enrollments; Python only assembles the groups.

What counts:

- `entered`: distinct enrollments with an `entered` step at the node (a start node logs its
  entry twice — on entering the journey and on the split or update itself — and a node
  visited again in a loop is still one enrollment). The workflow logs entries at message,
  split and update nodes and at the start node; for other nodes `entered` is None (not
  recorded) unless some entry was logged.
- `sent`, `suppressed`, `failed`: steps (messages) at the node; suppressed and failed with
  counts per reason.
- `exited`, `converted`, `completed`, `held_out`: enrollments that ended at the node so.
- `waiting`: active enrollments whose current node is this one.
- A variant's conversions are its enrollments with status `converted` (the workflow took them
  out on the goal event). Holdout enrollments end at once (`held_out`), so theirs are counted
  from the events table: enrollments whose customer had an event of the version's goal type
  within `goal.within_days` of entering (bounds inclusive, as the workflow checks), matching
  the goal's `when` on the event's own fields (`event.*`; facts of the profile are not known
  here and do not hold).
- Uplift: a variant's rate minus the holdout's of the same version (absolute) and that
  difference over the holdout's rate (relative; None when the holdout's rate is 0).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, and_, case, func, literal, select

from journeys.conditions import evaluate
from journeys.models import HOLDOUT, Journey, edges
from store.db import utcnow
from store.models import (
    EnrollmentRow,
    EventRow,
    JourneyRow,
    JourneyStepRow,
    JourneyVersionRow,
)

ENROLLMENT_STATUSES = ("active", "completed", "converted", "exited", "held_out", "failed")
END_KINDS = ("exited", "converted", "completed", "held_out")
# node types at which the workflow logs an `entered` step (any type when it is the start)
ENTRY_LOGGED = ("message", "split", "update")
DEFAULT_LIMIT = 100


class UnknownJourney(LookupError):
    """No journey of that name was deployed and none has enrollments."""


# --------------------------------------------------------------------------- output models


class NodeStats(BaseModel):
    node: str
    type: str | None = Field(None, description="the node's type in this version's graph")
    entered: int | None = Field(
        None, description="distinct enrollments that entered (None: not recorded at this node)"
    )
    waiting: int = Field(0, description="active enrollments at this node now")
    sent: int = 0
    suppressed: int = 0
    suppressed_reasons: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    failed_reasons: dict[str, int] = Field(default_factory=dict)
    exited: int = 0
    converted: int = 0
    completed: int = 0
    held_out: int = 0


class GoalInfo(BaseModel):
    event: str
    within_days: int
    when: bool = Field(False, description="the goal has a condition on the event")


class VariantConversion(BaseModel):
    variant: str | None = Field(description="split variant; `holdout`; None: no split")
    enrollments: int
    conversions: int
    rate: float | None = Field(None, description="conversions / enrollments")
    counted_by: Literal["status", "goal_events"] = Field(
        "status",
        description="status: enrollments converted by the workflow; goal_events: the "
        "holdout's goal events within the window after entering",
    )
    uplift_absolute: float | None = Field(None, description="rate - the holdout's rate")
    uplift_relative: float | None = Field(
        None, description="(rate - the holdout's rate) / the holdout's rate"
    )


class VersionStats(BaseModel):
    version: str
    active: bool = Field(False, description="the version new enrollments use")
    deployed_at: datetime | None = None
    goal: GoalInfo | None = None
    start: str | None = None
    enrollments: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict, description="enrollments by status")
    nodes: list[NodeStats] = Field(default_factory=list, description="in graph order")
    conversions: list[VariantConversion] = Field(default_factory=list)


class JourneyStats(BaseModel):
    journey: str
    status: str | None = Field(None, description="active, paused, archived (None: not deployed)")
    active_version: str | None = None
    generated_at: datetime
    enrollments: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    conversions: list[VariantConversion] = Field(
        default_factory=list, description="all versions together"
    )
    versions: list[VersionStats] = Field(default_factory=list)


class EnrollmentInfo(BaseModel):
    customer_id: str
    node: str | None
    since: datetime | None
    status: str
    variant: str | None
    version: str
    entry_no: int
    entered_at: datetime
    finished_at: datetime | None
    outcome: str | None
    workflow_id: str


# --------------------------------------------------------------------------- stats


def journey_exists(conn: Connection, name: str) -> bool:
    for column in (JourneyRow.name, JourneyVersionRow.journey, EnrollmentRow.journey):
        if conn.execute(select(literal(1)).where(column == name).limit(1)).first() is not None:
            return True
    return False


def journey_stats(conn: Connection, name: str) -> JourneyStats:
    """The report for journey `name`; UnknownJourney when there is no such journey."""
    if not journey_exists(conn, name):
        raise UnknownJourney(f"no journey named {name!r} (deploy one, or check the name)")
    head = conn.execute(
        select(JourneyRow.status, JourneyRow.active_version).where(JourneyRow.name == name)
    ).first()
    status, active_version = (head.status, head.active_version) if head else (None, None)

    deployed = conn.execute(
        select(
            JourneyVersionRow.version, JourneyVersionRow.definition, JourneyVersionRow.deployed_at
        )
        .where(JourneyVersionRow.journey == name)
        .order_by(JourneyVersionRow.id)
    ).all()
    versions: dict[str, VersionStats] = {}
    graphs: dict[str, Journey | None] = {}
    for row in deployed:
        graphs[row.version] = _parse(row.definition)
        versions[row.version] = _version_head(
            row.version, graphs[row.version], row.deployed_at, active_version
        )

    outcomes = _outcomes(conn, name)
    steps = _steps(conn, name)
    reasons = _reasons(conn, name)
    waiting = _waiting(conn, name)
    variants = _variants(conn, name)

    # versions that have enrollments or steps but were never deployed (started directly)
    seen = set(outcomes) | {v for v, _ in steps} | {v for v, _ in waiting}
    for version in sorted(seen - set(versions)):
        graphs[version] = None
        versions[version] = _version_head(version, None, None, active_version)

    for version, vs in versions.items():
        vs.outcomes = outcomes.get(version, {})
        vs.enrollments = sum(vs.outcomes.values())
        vs.nodes = _nodes(version, graphs[version], steps, reasons, waiting)
        graph = graphs[version]
        goal = graph.goal if graph is not None else None
        vs.conversions = _conversions(conn, name, version, goal, variants.get(version, {}))

    result = JourneyStats(
        journey=name,
        status=status,
        active_version=active_version,
        generated_at=utcnow(),
        versions=list(versions.values()),
    )
    for vs in result.versions:
        for key, n in vs.outcomes.items():
            result.outcomes[key] = result.outcomes.get(key, 0) + n
    result.outcomes = dict(sorted(result.outcomes.items(), key=lambda kv: _status_order(kv[0])))
    result.enrollments = sum(result.outcomes.values())
    result.conversions = _total_conversions(result.versions)
    return result


def _parse(definition: Any) -> Journey | None:
    try:
        return Journey.model_validate(definition)
    except ValidationError:
        return None


def _version_head(
    version: str, graph: Journey | None, deployed_at: datetime | None, active: str | None
) -> VersionStats:
    goal = None
    if graph is not None and graph.goal is not None:
        g = graph.goal
        goal = GoalInfo(event=g.event, within_days=g.within_days, when=g.when is not None)
    return VersionStats(
        version=version,
        active=version == active,
        deployed_at=deployed_at,
        goal=goal,
        start=graph.start if graph is not None else None,
    )


def _status_order(status: str) -> tuple[int, str]:
    try:
        return (ENROLLMENT_STATUSES.index(status), status)
    except ValueError:
        return (len(ENROLLMENT_STATUSES), status)


def _outcomes(conn: Connection, name: str) -> dict[str, dict[str, int]]:
    e = EnrollmentRow
    rows = conn.execute(
        select(e.version, e.status, func.count())
        .where(e.journey == name)
        .group_by(e.version, e.status)
    ).all()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for version, status, n in sorted(rows, key=lambda r: _status_order(r[1])):
        out[version][status] = int(n)
    return out


StepCounts = dict[tuple[str, str], dict[str, tuple[int, int]]]


def _steps(conn: Connection, name: str) -> StepCounts:
    """(version, node) → kind → (steps, distinct enrollments)."""
    s = JourneyStepRow
    rows = conn.execute(
        select(s.version, s.node, s.kind, func.count(), func.count(s.workflow_id.distinct()))
        .where(s.journey == name)
        .group_by(s.version, s.node, s.kind)
    ).all()
    out: StepCounts = defaultdict(dict)
    for version, node, kind, n, distinct in rows:
        out[(version, node)][kind] = (int(n), int(distinct))
    return out


def _reasons(conn: Connection, name: str) -> dict[tuple[str, str, str], dict[str, int]]:
    """(version, node, kind) → reason → steps, for suppressed and failed messages."""
    s = JourneyStepRow
    reason = func.coalesce(s.reason, "(no reason)")
    rows = conn.execute(
        select(s.version, s.node, s.kind, reason, func.count())
        .where(s.journey == name, s.kind.in_(("suppressed", "failed")))
        .group_by(s.version, s.node, s.kind, reason)
    ).all()
    out: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for version, node, kind, why, n in sorted(rows, key=lambda r: (-r[4], r[3])):
        out[(version, node, kind)][why] = int(n)
    return out


def _waiting(conn: Connection, name: str) -> dict[tuple[str, str], int]:
    e = EnrollmentRow
    rows = conn.execute(
        select(e.version, e.node, func.count())
        .where(e.journey == name, e.status == "active", e.node.is_not(None))
        .group_by(e.version, e.node)
    ).all()
    return {(version, str(node)): int(n) for version, node, n in rows}


def _variants(conn: Connection, name: str) -> dict[str, dict[str | None, tuple[int, int]]]:
    """version → variant → (enrollments, converted)."""
    e = EnrollmentRow
    converted = func.sum(case((e.status == "converted", 1), else_=0))
    rows = conn.execute(
        select(e.version, e.variant, func.count(), converted)
        .where(e.journey == name)
        .group_by(e.version, e.variant)
    ).all()
    out: dict[str, dict[str | None, tuple[int, int]]] = defaultdict(dict)
    for version, variant, n, conv in rows:
        out[version][variant] = (int(n), int(conv or 0))
    return out


def graph_order(graph: Journey) -> list[str]:
    """Node ids breadth-first from `start` (edges in file order), then any unreachable."""
    order: list[str] = []
    queue = deque([graph.start])
    seen = {graph.start}
    while queue:
        nid = queue.popleft()
        order.append(nid)
        node = graph.nodes.get(nid)
        for _, nxt in edges(node) if node is not None else []:
            if nxt not in seen and nxt in graph.nodes:
                seen.add(nxt)
                queue.append(nxt)
    order.extend(n for n in graph.nodes if n not in seen)
    return order


def _nodes(
    version: str,
    graph: Journey | None,
    steps: StepCounts,
    reasons: dict[tuple[str, str, str], dict[str, int]],
    waiting: dict[tuple[str, str], int],
) -> list[NodeStats]:
    order = graph_order(graph) if graph is not None else []
    extra = sorted(
        {n for v, n in steps if v == version and n not in order}
        | {n for v, n in waiting if v == version and n not in order}
    )
    out = []
    for nid in [*order, *extra]:
        kinds = steps.get((version, nid), {})
        node_type = getattr(graph.nodes.get(nid), "type", None) if graph is not None else None
        logged = graph is None or node_type in ENTRY_LOGGED or nid == graph.start
        entered = kinds.get("entered", (0, 0))[1]
        ns = NodeStats(
            node=nid,
            type=node_type,
            entered=entered if entered or logged else None,
            waiting=waiting.get((version, nid), 0),
            suppressed_reasons=reasons.get((version, nid, "suppressed"), {}),
            failed_reasons=reasons.get((version, nid, "failed"), {}),
        )
        for kind in ("sent", "suppressed", "failed"):
            setattr(ns, kind, kinds.get(kind, (0, 0))[0])
        for kind in END_KINDS:
            setattr(ns, kind, kinds.get(kind, (0, 0))[1])
        out.append(ns)
    return out


# --------------------------------------------------------------------------- conversions


def _goal_window(conn: Connection, occurred: Any, entered: Any, days: int) -> Any:
    """`entered <= occurred <= entered + days` in the database's own date arithmetic."""
    if conn.dialect.name == "sqlite":  # naive UTC text: compare as Julian day numbers
        jo, je = func.julianday(occurred), func.julianday(entered)
        return and_(jo >= je, jo <= je + days)
    return and_(occurred >= entered, occurred <= entered + func.make_interval(0, 0, 0, days))


def holdout_goal_conversions(conn: Connection, name: str, version: str, goal: Any) -> int:
    """Holdout enrollments of this version whose customer had a goal event in the window."""
    e, ev = EnrollmentRow, EventRow
    holdout = and_(e.journey == name, e.version == version, e.variant == HOLDOUT)
    window = _goal_window(conn, ev.occurred_at, e.entered_at, goal.within_days)
    matching = and_(ev.customer_id == e.customer_id, ev.type == goal.event, window)
    if goal.when is None:
        return int(
            conn.execute(
                select(func.count())
                .select_from(e)
                .where(holdout, select(ev.id).where(matching).exists())
            ).scalar_one()
        )
    # a condition on the event's fields: test the candidate events (only the holdout's
    # goal-type events in their windows) in Python, with the evaluator the workflow uses
    rows = conn.execute(
        select(e.workflow_id, ev.type, ev.properties)
        .select_from(e)
        .join(ev, matching)
        .where(holdout)
    )
    hits = {wid for wid, typ, props in rows if evaluate(goal.when, _event_facts(typ, props))}
    return len(hits)


def _event_facts(typ: str, properties: dict[str, Any] | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"event.type": typ}
    for key, value in (properties or {}).items():
        facts[f"event.{key}"] = value
    return facts


def _conversions(
    conn: Connection,
    name: str,
    version: str,
    goal: Any,
    groups: dict[str | None, tuple[int, int]],
) -> list[VariantConversion]:
    out = []
    for variant in sorted(groups, key=lambda v: (v == HOLDOUT, v or "")):
        n, converted = groups[variant]
        counted_by: Literal["status", "goal_events"] = "status"
        if variant == HOLDOUT:
            counted_by = "goal_events"
            converted = holdout_goal_conversions(conn, name, version, goal) if goal else 0
        out.append(
            VariantConversion(
                variant=variant, enrollments=n, conversions=converted, counted_by=counted_by
            )
        )
    return _with_rates(out)


def _with_rates(rows: list[VariantConversion]) -> list[VariantConversion]:
    for r in rows:
        r.rate = r.conversions / r.enrollments if r.enrollments else None
    hold = next((r for r in rows if r.variant == HOLDOUT), None)
    if hold is not None and hold.rate is not None:
        for r in rows:
            if r is hold or r.rate is None:
                continue
            r.uplift_absolute = r.rate - hold.rate
            r.uplift_relative = (r.rate - hold.rate) / hold.rate if hold.rate else None
    return rows


def _total_conversions(versions: Iterable[VersionStats]) -> list[VariantConversion]:
    sums: dict[str | None, list[int]] = {}
    kinds: dict[str | None, Literal["status", "goal_events"]] = {}
    for vs in versions:
        for c in vs.conversions:
            acc = sums.setdefault(c.variant, [0, 0])
            acc[0] += c.enrollments
            acc[1] += c.conversions
            kinds[c.variant] = c.counted_by
    rows = [
        VariantConversion(variant=v, enrollments=n, conversions=k, counted_by=kinds[v])
        for v, (n, k) in sorted(sums.items(), key=lambda kv: (kv[0] == HOLDOUT, kv[0] or ""))
    ]
    return _with_rates(rows)


# --------------------------------------------------------------------------- who is where


def enrollments(
    conn: Connection,
    name: str,
    status: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    node: str | None = None,
) -> list[EnrollmentInfo]:
    """Enrollments of journey `name` (those with `status`, at `node`), latest move first."""
    if status is not None and status not in ENROLLMENT_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ENROLLMENT_STATUSES)}")
    if not journey_exists(conn, name):
        raise UnknownJourney(f"no journey named {name!r} (deploy one, or check the name)")
    e = EnrollmentRow
    stmt = select(
        e.customer_id,
        e.node,
        e.node_since,
        e.status,
        e.variant,
        e.version,
        e.entry_no,
        e.entered_at,
        e.finished_at,
        e.outcome,
        e.workflow_id,
    ).where(e.journey == name)
    stmt = stmt.where(*_enrollment_filter(status, node))
    stmt = stmt.order_by(
        func.coalesce(e.node_since, e.entered_at).desc(), e.customer_id, e.workflow_id
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return [
        EnrollmentInfo(
            customer_id=r.customer_id,
            node=r.node,
            since=r.node_since,
            status=r.status,
            variant=r.variant,
            version=r.version,
            entry_no=r.entry_no,
            entered_at=r.entered_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            workflow_id=r.workflow_id,
        )
        for r in conn.execute(stmt)
    ]


def count_enrollments(
    conn: Connection, name: str, status: str | None = None, node: str | None = None
) -> int:
    e = EnrollmentRow
    stmt = select(func.count()).select_from(e).where(e.journey == name)
    stmt = stmt.where(*_enrollment_filter(status, node))
    return int(conn.execute(stmt).scalar_one())


def _enrollment_filter(status: str | None, node: str | None) -> list[Any]:
    e = EnrollmentRow
    where: list[Any] = []
    if status is not None:
        where.append(e.status == status)
    if node is not None:
        where.append(e.node == node)
    return where
