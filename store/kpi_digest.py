"""The KPI digest's figures: `store.kpi`'s definitions over the digest's window and the one
before it (see `automations.digest` for the report).

Set-based: each figure is one statement over both windows (conditional aggregates split
them), whatever the number of customers, on SQLite and PostgreSQL alike; journey
conversions are one statement per journey version and window. The window is
`(as_of - window_days, as_of]`, the previous one the same length before it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from automations.digest import JourneyConversion, KpiDigest, TierMove
from rules.models import Program
from store import kpi
from store.kpi import Names, Window

# kept for the callers that read the tier distribution through the digest
tier_distribution = kpi.tier_distribution


def _journeys(
    conn: Connection, now: Window, then: Window
) -> tuple[list[JourneyConversion], dict[str, float]]:
    """Per journey entered in the window, its enrollments and goal conversions; and the
    previous window's totals (`journey_enrolled`, `journey_converted`)."""
    out = [
        JourneyConversion(
            journey=f.journey,
            enrolled=f.enrolled,
            converted=f.converted,
            conversion_rate=f.conversion_rate or 0.0,
            held_out=f.held_out,
        )
        for f in sorted(kpi.journey_conversions(conn, now).values(), key=lambda f: f.journey)
    ]
    before = kpi.journey_conversions(conn, then).values()
    previous = {
        "journey_enrolled": float(sum(f.enrolled for f in before)),
        "journey_converted": float(sum(f.converted for f in before)),
    }
    return out, previous


def digest_figures(
    conn: Connection,
    as_of: datetime,
    window_days: int,
    run_date: str,
    program: Program | None = None,
) -> KpiDigest:
    """The digest for the window `(as_of - window_days, as_of]`, with the previous window's
    figures in `previous`; the programme (when given) names the purchase and refund events,
    the amount and the membership attribute."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if window_days < 1:
        raise ValueError("window_days must be at least 1")
    names = Names.of(program)
    now = Window.days_before(as_of, window_days)
    then = now.before()
    both = [now, then]
    active_now, active_then = kpi.active(conn, both)
    new_now, new_then = kpi.new_members(conn, both, names)
    buyers_now, buyers_then = kpi.buyers(conn, both, names)
    revenue_now, revenue_then = kpi.revenue(conn, both, names)
    points_now, points_then = kpi.points(conn, both)
    journeys, journeys_then = _journeys(conn, now, then)
    previous: dict[str, float] = {
        "active_members": active_then,
        "new_members": new_then,
        "buyers": buyers_then.buyers,
        "repeat_buyers": buyers_then.repeat,
        "repurchase_rate": buyers_then.repurchase_rate or 0.0,
        "revenue": revenue_then,
        **points_then,
        **journeys_then,
    }
    return KpiDigest(
        as_of=as_of,
        window_days=window_days,
        run_date=run_date,
        members_total=kpi.members_total(conn),
        active_members=active_now,
        new_members=new_now,
        buyers=buyers_now.buyers,
        repeat_buyers=buyers_now.repeat,
        repurchase_rate=buyers_now.repurchase_rate or 0.0,
        revenue=revenue_now,
        points_issued=points_now["points_issued"],
        points_redeemed=points_now["points_redeemed"],
        points_expired=points_now["points_expired"],
        points_clawed_back=points_now["points_clawed_back"],
        points_liability=kpi.points_liability(conn, as_of),
        tier_distribution=kpi.tier_distribution(conn),
        tier_movement=[
            TierMove(from_tier=f, to_tier=t, count=n) for f, t, n in kpi.tier_movement(conn, now)
        ],
        journey_conversions=journeys,
        previous=previous,
    )
