"""Read models of the console's journey pages, over `crmflow.services.journeys`:

- `journey_list`: every deployed journey as `list_journeys` gives it, with its entry kind and
  how many entered and converted;
- `journey_page`: one journey (`get_journey`), its stats (`stats`), the graph of the version
  shown (the active one unless asked) and its variants against the holdout as the stats
  give them (one definition of a conversion for every arm; each rate with a 95% Wilson
  score interval, the uplift with Newcombe's interval, a p-value and a verdict) — but no
  uplift shown when either arm is a small sample (fewer than `SMALL_SAMPLE` enrollments or
  `MIN_CONVERSIONS` conversions): one customer's "-100 pp" means nothing;
- `enrollments_page`: a page of the enrollments now at a node.

The maths are plain functions in `journeys.experiment` (`wilson`, `difference_interval`,
the p-values), re-exported here under their old names.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crmflow.services import journeys
from crmflow.services.errors import NotFound
from crmflow.services.runtime import Runtime
from journeys.experiment import MIN_CONVERSIONS, SMALL_SAMPLE, Z95, difference_interval, wilson
from journeys.models import HOLDOUT, Journey
from store import journey_stats as jstats
from store import journey_views as jviews
from store import journeys as jstore

PER_PAGE = 50
MAX_PER_PAGE = 200
# the interval maths live in `journeys.experiment`; these names stay importable from here
__all__ = ["MIN_CONVERSIONS", "SMALL_SAMPLE", "Z95", "difference_interval", "wilson"]


# --------------------------------------------------------------------------- list


class JourneyListView(journeys.JourneyListItem):
    entry_kind: Literal["rule", "event", "segment"]
    entered: int = Field(description="enrollments, whatever their status")
    converted: int = Field(description="enrollments the goal took out (status converted)")


def entry_kind(definition: dict[str, Any]) -> Literal["rule", "event", "segment"]:
    """A deployed definition's entry kind, read without validating the whole journey."""
    entry = definition.get("entry")
    if isinstance(entry, dict):
        return "segment" if "segment" in entry else "event"
    return "rule"


def journey_list(rt: Runtime) -> list[JourneyListView]:
    """Deployed journeys by name, as `list_journeys` gives them (status, active version,
    enrollments by status), with entry kind, entered and converted: one connection, two
    statements."""
    with rt.engine.connect() as conn:
        counts = jviews.enrollment_counts(conn)
        deployed = jstore.deployed(conn)
    out = []
    for d in deployed:
        by_status = counts.get(d.name, {})
        out.append(
            JourneyListView(
                journey=d.name,
                status=d.status,
                version=d.version,
                deployed_at=d.deployed_at,
                enrollments=by_status,
                entry_kind=entry_kind(d.definition),
                entered=sum(by_status.values()),
                converted=by_status.get("converted", 0),
            )
        )
    return out


# --------------------------------------------------------------------------- one journey


class ConversionView(BaseModel):
    """A split variant (or the holdout, or everyone when there is no split) with its goal
    conversions, the rate's 95% interval and, for variants, the uplift over the holdout."""

    variant: str | None
    holdout: bool
    enrollments: int
    conversions: int
    counted_by: Literal["status", "goal_events"]
    rate: float | None
    low: float | None = Field(None, description="95% Wilson score interval, lower bound")
    high: float | None = None
    small_sample: bool = Field(
        description=f"fewer than {SMALL_SAMPLE} enrollments or {MIN_CONVERSIONS} conversions"
    )
    uplift: float | None = Field(
        None, description="rate - the holdout's rate; None when either group is small"
    )
    uplift_low: float | None = Field(None, description="95% interval of the uplift")
    uplift_high: float | None = None
    p_value: float | None = Field(None, description="two-sided; None when not compared")
    test: Literal["z", "fisher"] | None = None
    verdict: Literal["better", "worse", "no clear difference"] | None = None

    @property
    def conclusive(self) -> bool:
        """The uplift's interval excludes 0."""
        if self.uplift_low is None or self.uplift_high is None:
            return False
        return self.uplift_low > 0 or self.uplift_high < 0


def conversion_views(rows: list[jstats.VariantConversion]) -> list[ConversionView]:
    """Each row as the stats computed it; a variant's uplift, interval, p-value and verdict
    only when neither it nor the holdout is a small sample."""
    hold = next((r for r in rows if r.variant == HOLDOUT), None)
    out = []
    for r in rows:
        view = ConversionView(
            variant=r.variant,
            holdout=r.variant == HOLDOUT,
            enrollments=r.enrollments,
            conversions=r.conversions,
            counted_by=r.counted_by,
            rate=r.rate,
            low=r.low,
            high=r.high,
            small_sample=r.small_sample,
        )
        comparable = hold is not None and r is not hold and r.comparison_small_sample is False
        if comparable:
            view.uplift = r.uplift_absolute
            view.uplift_low, view.uplift_high = r.uplift_low, r.uplift_high
            view.p_value, view.test, view.verdict = r.p_value, r.test, r.verdict
        out.append(view)
    return out


class JourneyPage(BaseModel):
    """What the journey page shows: the journey, the version drawn, its stats."""

    detail: journeys.JourneyDetail
    version: str = Field(description="the version drawn and counted")
    graph: Journey = Field(description="that version's definition")
    stats: jstats.JourneyStats
    version_stats: jstats.VersionStats | None
    conversions: list[ConversionView] = Field(description="of the version shown")


def journey_page(rt: Runtime, name: str, version: str | None = None) -> JourneyPage:
    """Journey `name` with the graph and stats of `version` (default: the active one);
    `NotFound` for an unknown journey or version."""
    detail = journeys.get_journey(rt, name)
    shown = version or detail.version
    with rt.engine.connect() as conn:
        definition = jviews.version_definition(conn, name, shown)
    if definition is None:
        raise NotFound(f"journey {name!r} has no version {shown!r}")
    stats = journeys.stats(rt, name)
    vs = next((v for v in stats.versions if v.version == shown), None)
    return JourneyPage(
        detail=detail,
        version=shown,
        graph=Journey.model_validate(definition),
        stats=stats,
        version_stats=vs,
        conversions=conversion_views(vs.conversions) if vs is not None else [],
    )


# --------------------------------------------------------------------------- enrollments


class EnrollmentsPageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str | None = Field(None, pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")
    status: journeys.EnrollmentStatus | None = None
    page: int = Field(1, ge=1, le=100_000)
    per_page: int = Field(PER_PAGE, ge=1, le=MAX_PER_PAGE)


class EnrollmentPage(BaseModel):
    journey: str
    node: str | None
    status: str | None
    total: int = Field(description="enrollments matching, on every page")
    page: int
    per_page: int
    pages: int
    enrollments: list[jstats.EnrollmentInfo] = Field(description="latest move first")


def enrollments_page(rt: Runtime, name: str, query: EnrollmentsPageQuery) -> EnrollmentPage:
    """One page of journey `name`'s enrollments (now at a node, with a status)."""
    q = query
    with rt.engine.connect() as conn:
        if not jstats.journey_exists(conn, name):
            raise NotFound(f"no journey named {name!r} (deploy one, or check the name)")
        total = jstats.count_enrollments(conn, name, q.status, q.node)
        rows = jstats.enrollments(
            conn,
            name,
            q.status,
            limit=q.per_page,
            node=q.node,
            offset=(q.page - 1) * q.per_page,
        )
    return EnrollmentPage(
        journey=name,
        node=q.node,
        status=q.status,
        total=total,
        page=q.page,
        per_page=q.per_page,
        pages=max(1, math.ceil(total / q.per_page)),
        enrollments=rows,
    )
