"""Which points count: the one definition of a live lot, read by every balance.

A lot counts towards a balance *as of a moment* when it has points left and has not expired
by then — whether or not the nightly expiry has written its `expire` entry yet (that run
only records what the clock has already decided). The customer profile, the 360 view, the
messages' `points_balance` and the KPI liability all read balances through `live_lot`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, or_


def live_lot(lot: Any, at: Any) -> ColumnElement[bool]:
    """SQL: the lot (`PointsLotRow`, or the columns of its table) has points left at `at`
    (a datetime, or a bound parameter / column)."""
    return and_(lot.remaining > 0, or_(lot.expires_at.is_(None), lot.expires_at > at))
