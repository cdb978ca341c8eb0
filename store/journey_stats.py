"""Journey reports from the store: per version and node, how many enrollments entered, wait
there, were sent a message or suppressed (and why), failed or ended; goal conversions per
split variant and for the holdout — one definition for every arm — with intervals, the
uplift and its p-value; and who is where.

Everything is counted by the database (GROUP BY over `journey_steps` and
`journey_enrollments`, an EXISTS over `events` for the goal), a handful of statements per
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
- Conversions have one definition for every arm (each split variant, the holdout, everyone
  when there is no split): an enrollment converted when its customer had an event of the
  version's goal type within `goal.within_days` of entering (bounds inclusive, as the
  workflow checks), matching the goal's `when` on the event's own fields (`event.*`; facts
  of the profile are not known here and do not hold) — whatever state the enrollment is in
  (active, converted, completed, exited, held out, failed). A variant customer who finished
  the journey and then bought inside the window counts, exactly as a holdout customer does.
  One GROUP BY over the enrollments with an EXISTS over `events` per version; a goal with a
  condition tests it in Python on the candidate events only (goal type, in the window).
- Rates carry a 95% Wilson interval; a variant's uplift over the holdout of the same version
  (absolute, and relative — None when the holdout's rate is 0) carries Newcombe's 95%
  interval, a two-sided p-value and a verdict unless either arm is a small sample
  (`journeys.experiment`).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, and_, case, func, literal, select

from journeys import experiment
from journeys.conditions import evaluate, event_facts
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
    """One arm of a version (or of all versions): a split variant, the holdout, or everyone
    when there is no split. Conversions are counted the same way for every arm."""

    variant: str | None = Field(description="split variant; `holdout`; None: no split")
    enrollments: int = Field(description="entered, whatever their status now")
    conversions: int = Field(description="had the goal event within the goal window")
    rate: float | None = Field(None, description="conversions / enrollments")
    low: float | None = Field(None, description="the rate's 95% interval (Wilson score)")
    high: float | None = None
    small_sample: bool = Field(
        True,
        description=f"fewer than {experiment.SMALL_SAMPLE} enrollments or fewer than "
        f"{experiment.MIN_CONVERSIONS} conversions",
    )
    counted_by: Literal["status", "goal_events"] = Field(
        "goal_events",
        description="always goal_events: the goal event within the window after entering, "
        "for every arm and status (`status` is no longer produced)",
    )
    uplift_absolute: float | None = Field(None, description="rate - the holdout's rate")
    uplift_relative: float | None = Field(
        None, description="(rate - the holdout's rate) / the holdout's rate"
    )
    uplift_low: float | None = Field(
        None, description="the uplift's 95% interval (Newcombe's hybrid score)"
    )
    uplift_high: float | None = None
    p_value: float | None = Field(None, description="two-sided, rate = the holdout's rate")
    test: Literal["z", "fisher"] | None = Field(
        None, description="z: two-proportion z-test; fisher: Fisher's exact test"
    )
    comparison_small_sample: bool | None = Field(
        None, description="this arm or the holdout is a small sample (None: no comparison)"
    )
    verdict: Literal["better", "worse", "no clear difference"] | None = Field(
        None, description="from the uplift's interval; None for small samples"
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
    waiting_for: str | None = Field(
        None, description="delay, event, quiet_hours, rate_limit or frequency_cap"
    )
    wait_until: datetime | None = Field(None, description="when that wait ends, when known")
    wait_detail: str | None = Field(None, description="the event waited for, or why")


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
        vs.conversions = _conversions(conn, name, version, goal)

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


def goal_conversions(
    conn: Connection,
    name: str,
    version: str,
    goal: Any,
    entered: tuple[datetime, datetime] | None = None,
) -> dict[str | None, tuple[int, int]]:
    """variant → (enrollments, conversions) of one version, by the one definition of a
    conversion: the enrollment's customer had an event of the goal's type within
    `goal.within_days` of entering (bounds inclusive), matching the goal's `when` on the
    event's own fields — whatever the enrollment's status. Without a goal nothing converts.
    With `entered` = (start, end), only enrollments entered in (start, end] count, and only
    goal events up to `end` (a figure as of `end`, as the KPIs read it)."""
    e, ev = EnrollmentRow, EventRow
    mine = and_(e.journey == name, e.version == version)
    if entered is not None:
        mine = and_(mine, e.entered_at > entered[0], e.entered_at <= entered[1])
    if goal is None:
        plain = conn.execute(select(e.variant, func.count()).where(mine).group_by(e.variant))
        return {variant: (int(n), 0) for variant, n in plain}
    window = _goal_window(conn, ev.occurred_at, e.entered_at, goal.within_days)
    if entered is not None:
        window = and_(window, ev.occurred_at <= entered[1])
    matching = and_(ev.customer_id == e.customer_id, ev.type == goal.event, window)
    if goal.when is None:
        hit = case((select(ev.id).where(matching).exists(), 1), else_=0)
        counted = conn.execute(
            select(e.variant, func.count(), func.sum(hit)).where(mine).group_by(e.variant)
        )
        return {variant: (int(n), int(k or 0)) for variant, n, k in counted}
    # a condition on the event's fields: the candidates (goal-type events in the windows)
    # come from SQL, the condition is tested with the evaluator the workflow uses
    counts = dict(
        conn.execute(select(e.variant, func.count()).where(mine).group_by(e.variant)).all()
    )
    hits: dict[str | None, set[str]] = defaultdict(set)
    candidates = conn.execute(
        select(e.variant, e.workflow_id, ev.type, ev.properties)
        .select_from(e)
        .join(ev, matching)
        .where(mine)
    )
    for variant, wid, typ, props in candidates:
        if wid not in hits[variant] and evaluate(goal.when, event_facts(typ, props or {})):
            hits[variant].add(wid)
    return {variant: (int(n), len(hits.get(variant, ()))) for variant, n in counts.items()}


def holdout_goal_conversions(conn: Connection, name: str, version: str, goal: Any) -> int:
    """Holdout enrollments of this version that converted (see `goal_conversions`)."""
    return goal_conversions(conn, name, version, goal).get(HOLDOUT, (0, 0))[1]


def _conversions(conn: Connection, name: str, version: str, goal: Any) -> list[VariantConversion]:
    groups = goal_conversions(conn, name, version, goal)
    out = [
        VariantConversion(variant=variant, enrollments=n, conversions=k)
        for variant, (n, k) in sorted(groups.items(), key=lambda kv: _variant_order(kv[0]))
    ]
    return _with_rates(out)


def _variant_order(variant: str | None) -> tuple[bool, str]:
    return (variant == HOLDOUT, variant or "")


def _with_rates(rows: list[VariantConversion]) -> list[VariantConversion]:
    """Each row's rate and interval; each variant's uplift over the holdout."""
    rates = {id(r): experiment.rate(r.conversions, r.enrollments) for r in rows}
    for r in rows:
        arm = rates[id(r)]
        r.rate, r.low, r.high, r.small_sample = arm.rate, arm.low, arm.high, arm.small_sample
    hold = next((r for r in rows if r.variant == HOLDOUT), None)
    if hold is None:
        return rows
    for r in rows:
        if r is hold:
            continue
        up = experiment.uplift(rates[id(r)], rates[id(hold)])
        if up is None:
            continue
        r.uplift_absolute, r.uplift_relative = up.absolute, up.relative
        r.uplift_low, r.uplift_high = up.low, up.high
        r.p_value, r.test, r.verdict = up.p_value, up.test, up.verdict
        r.comparison_small_sample = up.small_sample
    return rows


def _total_conversions(versions: Iterable[VersionStats]) -> list[VariantConversion]:
    sums: dict[str | None, list[int]] = {}
    for vs in versions:
        for c in vs.conversions:
            acc = sums.setdefault(c.variant, [0, 0])
            acc[0] += c.enrollments
            acc[1] += c.conversions
    rows = [
        VariantConversion(variant=v, enrollments=n, conversions=k)
        for v, (n, k) in sorted(sums.items(), key=lambda kv: _variant_order(kv[0]))
    ]
    return _with_rates(rows)


# --------------------------------------------------------------------------- who is where


def enrollments(
    conn: Connection,
    name: str,
    status: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    node: str | None = None,
    offset: int = 0,
) -> list[EnrollmentInfo]:
    """Enrollments of journey `name` (those with `status`, at `node`), latest move first
    (the workflow id last, so every page from `offset` is stable)."""
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
        e.waiting_for,
        e.wait_until,
        e.wait_detail,
    ).where(e.journey == name)
    stmt = stmt.where(*_enrollment_filter(status, node))
    stmt = stmt.order_by(
        func.coalesce(e.node_since, e.entered_at).desc(), e.customer_id, e.workflow_id
    )
    if offset:
        stmt = stmt.offset(offset)
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
            waiting_for=r.waiting_for if r.status == "active" else None,
            wait_until=r.wait_until if r.status == "active" else None,
            wait_detail=r.wait_detail if r.status == "active" else None,
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
