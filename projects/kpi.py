"""The KPI review after go-live, pure: measured values before and after against the targets.

The store measures each metric over `baseline_weeks` before go-live and over the weeks up
to the review (`review_weeks` after go-live); `review_kpis` compares them with the
template's SMART targets. A metric that was not measured, or a relative target over a zero
baseline, cannot be judged and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta

from pydantic import BaseModel

from projects.models import KpiReview, KpiTarget


class KpiResult(BaseModel):
    metric: str
    before: float | None
    after: float | None
    achieved: float | None  # the value, the change or the relative change, per `compare`
    target: float
    compare: str
    direction: str
    met: bool | None  # None: cannot be judged
    note: str


def review_date(review: KpiReview, go_live: date) -> date:
    return go_live + timedelta(weeks=review.review_weeks)


def baseline_window(review: KpiReview, go_live: date) -> tuple[date, date]:
    """[from, to) measured before go-live."""
    return go_live - timedelta(weeks=review.baseline_weeks), go_live


def _judge(t: KpiTarget, before: float | None, after: float | None) -> KpiResult:
    def result(achieved: float | None, met: bool | None, note: str) -> KpiResult:
        return KpiResult(
            metric=t.metric,
            before=before,
            after=after,
            achieved=achieved,
            target=t.target,
            compare=t.compare,
            direction=t.direction,
            met=met,
            note=note,
        )

    if after is None or (t.compare != "absolute" and before is None):
        return result(None, None, "not measured")
    sign = 1 if t.direction == "increase" else -1
    if t.compare == "absolute":
        met = after >= t.target if sign > 0 else after <= t.target
        word = "at least" if sign > 0 else "at most"
        return result(after, met, f"{after:g} against {word} {t.target:g}")
    assert before is not None
    if t.compare == "change":
        achieved = (after - before) * sign
        return result(
            achieved, achieved >= t.target, f"{t.direction} of {achieved:g} against {t.target:g}"
        )
    if before == 0:
        return result(None, None, "the value before go-live is 0: no relative change")
    achieved = (after - before) / abs(before) * sign
    return result(
        achieved, achieved >= t.target, f"{t.direction} of {achieved:.1%} against {t.target:.1%}"
    )


def review_kpis(
    review: KpiReview, before: Mapping[str, float], after: Mapping[str, float]
) -> list[KpiResult]:
    """Each target judged on the measured values (metric -> value) before and after."""
    return [_judge(t, before.get(t.metric), after.get(t.metric)) for t in review.targets]
