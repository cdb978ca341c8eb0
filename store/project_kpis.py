"""The rollout KPI review's figures: `store.kpi`'s definitions over one window each.

`measure(conn, metrics, start, end)` returns metric -> value over the window `(start, end]`
(aware datetimes; the review's windows start and end at local midnights). A metric whose
denominator is empty in the window (no buyers, nothing issued, no e-mail sent, no journey
enrollment) is left out, so the review says "not measured" instead of judging a 0.

The metric names are the rollout template's (`projects.models.Metric`); what each means is
in `store.kpi`: `active_members` (members with a customer-made event), `new_members` (by
their join date), `repurchase_rate`, `journey_conversion` (goal conversions of the
enrollments entered in the window, the holdout left out), `points_issued`,
`points_redeemed`, `redemption_rate`, `average_order_value`, `churn_rate`,
`email_open_rate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import Connection

from rules.models import Program
from store import kpi
from store.kpi import Names, Window

Metric = Callable[[Connection, Window, Names], float | None]


def _rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


METRICS: dict[str, Metric] = {
    "repurchase_rate": lambda c, w, n: _rounded(kpi.buyers(c, [w], n)[0].repurchase_rate),
    "active_members": lambda c, w, n: float(kpi.active(c, [w])[0]),
    "new_members": lambda c, w, n: float(kpi.new_members(c, [w], n)[0]),
    "journey_conversion": lambda c, w, n: _rounded(kpi.journey_conversion_rate(c, w)),
    "points_issued": lambda c, w, n: kpi.points(c, [w])[0]["points_issued"],
    "points_redeemed": lambda c, w, n: kpi.points(c, [w])[0]["points_redeemed"],
    "redemption_rate": lambda c, w, n: _rounded(kpi.redemption_rate(c, w)),
    "average_order_value": lambda c, w, n: _rounded(kpi.average_order_value(c, w, n)),
    "churn_rate": lambda c, w, n: _rounded(kpi.churn_rate(c, w, n)),
    "email_open_rate": lambda c, w, n: _rounded(kpi.email_open_rate(c, w)),
}


def measure(
    conn: Connection,
    metrics: Iterable[str],
    start: datetime,
    end: datetime,
    program: Program | None = None,
) -> dict[str, float]:
    """Each known metric over `(start, end]`; unknown or unmeasurable ones are left out."""
    window = Window(start, end)
    names = Names.of(program)
    out: dict[str, float] = {}
    for name in metrics:
        fn = METRICS.get(name)
        if fn is None:
            continue
        value = fn(conn, window, names)
        if value is not None:
            out[name] = value
    return out
