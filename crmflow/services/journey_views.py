"""Read models of the console's journey pages, over `crmflow.services.journeys`:

- `journey_list`: every deployed journey as `list_journeys` gives it, with its entry kind and
  how many entered and converted;
- `journey_page`: one journey (`get_journey`), its stats (`stats`), the graph of the version
  shown (the active one unless asked) and its variants against the holdout, each rate with
  a 95% Wilson score interval and the uplift with Newcombe's interval — but no uplift for a
  group of fewer than `SMALL_SAMPLE` enrollments: one customer's "-100 pp" means nothing;
- `enrollments_page`: a page of the enrollments now at a node.

The interval maths are plain functions (`wilson`, `difference_interval`), tested directly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crmflow.services import journeys
from crmflow.services.errors import NotFound
from crmflow.services.runtime import Runtime
from journeys.models import HOLDOUT, Journey
from store import journey_stats as jstats
from store import journey_views as jviews
from store import journeys as jstore

Z95 = 1.959963984540054  # the standard normal quantile of 0.975
SMALL_SAMPLE = 30  # fewer enrollments than this in a group: no uplift is claimed
PER_PAGE = 50
MAX_PER_PAGE = 200


# --------------------------------------------------------------------------- intervals


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of `successes` out of `n` (None for n = 0). Unlike the
    normal approximation it stays inside [0, 1] and is honest about small samples: 1 of 1
    gives about [0.21, 1], not [1, 1]."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float] | None:
    """A 95% interval of p1 - p2 (Newcombe's hybrid score method, from the two Wilson
    intervals); None when either group is empty."""
    a, b = wilson(k1, n1), wilson(k2, n2)
    if a is None or b is None:
        return None
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = a, b
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


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
    small_sample: bool = Field(description=f"fewer than {SMALL_SAMPLE} enrollments")
    uplift: float | None = Field(
        None, description="rate - the holdout's rate; None when either group is small"
    )
    uplift_low: float | None = Field(None, description="95% interval of the uplift")
    uplift_high: float | None = None

    @property
    def conclusive(self) -> bool:
        """The uplift's interval excludes 0."""
        if self.uplift_low is None or self.uplift_high is None:
            return False
        return self.uplift_low > 0 or self.uplift_high < 0


def conversion_views(rows: list[jstats.VariantConversion]) -> list[ConversionView]:
    """Each row with its interval; variants with the uplift over the holdout when both
    groups have at least SMALL_SAMPLE enrollments."""
    hold = next((r for r in rows if r.variant == HOLDOUT), None)
    out = []
    for r in rows:
        interval = wilson(r.conversions, r.enrollments)
        view = ConversionView(
            variant=r.variant,
            holdout=r.variant == HOLDOUT,
            enrollments=r.enrollments,
            conversions=r.conversions,
            counted_by=r.counted_by,
            rate=r.rate,
            low=interval[0] if interval else None,
            high=interval[1] if interval else None,
            small_sample=r.enrollments < SMALL_SAMPLE,
        )
        comparable = (
            hold is not None
            and r is not hold
            and r.enrollments >= SMALL_SAMPLE
            and hold.enrollments >= SMALL_SAMPLE
        )
        if comparable and hold is not None:
            diff = difference_interval(
                r.conversions, r.enrollments, hold.conversions, hold.enrollments
            )
            view.uplift = r.conversions / r.enrollments - hold.conversions / hold.enrollments
            if diff is not None:
                view.uplift_low, view.uplift_high = diff
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
        rows = jviews.enrollments_page(
            conn,
            name,
            node=q.node,
            status=q.status,
            offset=(q.page - 1) * q.per_page,
            limit=q.per_page,
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
