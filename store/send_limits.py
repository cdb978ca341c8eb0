"""Places under a sending limit, taken atomically before a send, and every send's attempts.

A journey's rate limit (`rate:<journey>`, N per minute) and the programme's frequency cap
(`cap:<customer>`, N per D days) are counted in reservations, not in messages already sent:
a message takes its place before its send, keeps it while the send is in flight or being
retried, and gives it back only when it is abandoned. Counting sent messages let every
in-flight and retried send through (six webhook messages in one second under a limit of
two per minute).

Atomic under many workers on both databases: a reservation first locks its scope's row
(`send_scopes`; an UPDATE, so on SQLite the transaction holds the database's write lock
from there, and on PostgreSQL other reservers of that scope wait on the row) and only then
counts. Two workers can never both see room for the last place.

The frequency cap counts messages: a message holds one place (its key is its delivery's)
from its first attempt to its end. The rate limit counts attempts, each a place of its own
(`<delivery>#<n>`) taken at its own time: a retry waits for room like a first try, so the
requests a provider sees per minute stay within the rate, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update
from sqlalchemy.sql.expression import Executable

from store.journeys import _prepared
from store.models import DeliveryAttemptRow, SendReservationRow, SendScopeRow
from store.sql import insert_for, table_of

HELD, USED, RELEASED = "held", "used", "released"
# a provider's answer is kept for the operator, cut to this many characters
RESPONSE_CHARS = 1000


@dataclass(frozen=True)
class Limit:
    """At most `count` messages under `scope` in any `window`."""

    scope: str
    count: int
    window: timedelta


def rate_scope(journey: str) -> str:
    return f"rate:{journey}"


def cap_scope(customer_id: str) -> str:
    return f"cap:{customer_id}"


def reserve(
    conn: Connection,
    places: list[tuple[Limit, str]],
    *,
    workflow_id: str | None,
    at: datetime,
) -> tuple[Limit, datetime] | None:
    """Take a place at `at` under every limit, each under its key, all or none. None: taken
    (a key that holds its place already keeps it, at `at`). Otherwise the first limit that
    is full and when it has room."""
    places = sorted(places, key=lambda place: place[0].scope)  # one lock order: no deadlock
    for limit, _ in places:
        _lock(conn, limit.scope, at)
    for limit, key in places:
        room_at = _room_at(conn, limit, key, at)
        if room_at is not None:
            return limit, room_at
    for limit, key in places:
        _hold(conn, limit.scope, key, workflow_id, at)
    return None


def _lock(conn: Connection, scope: str, at: datetime) -> None:
    s = table_of(SendScopeRow)
    conn.execute(insert_for(conn, s).values(scope=scope).on_conflict_do_nothing())
    # an UPDATE takes the row's lock on PostgreSQL and the write lock on SQLite, until commit
    conn.execute(update(s).where(s.c.scope == scope).values(touched_at=at))


def _room_at(conn: Connection, limit: Limit, key: str, at: datetime) -> datetime | None:
    """None when another place is free at `at`; else the time the window has room."""
    r = table_of(SendReservationRow)
    slots = sorted(
        t
        for (t,) in conn.execute(
            select(r.c.slot_at).where(
                r.c.scope == limit.scope,
                r.c.key != key,
                r.c.status.in_((HELD, USED)),
                r.c.slot_at > at - limit.window,
            )
        )
    )
    if len(slots) < limit.count:
        return None
    # the window has room once all but count-1 of these have left it
    return slots[len(slots) - limit.count] + limit.window


def _hold(conn: Connection, scope: str, key: str, workflow_id: str | None, at: datetime) -> None:
    r = table_of(SendReservationRow)
    values = {"slot_at": at, "status": HELD, "updated_at": at}
    stmt = insert_for(conn, r).values(scope=scope, key=key, workflow_id=workflow_id, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["scope", "key"], set_=values))


def record_used(conn: Connection, scope: str, key: str, at: datetime) -> None:
    """A place under `scope` taken by a message that went out without asking (an operator's
    re-send): it counts in the window like any other."""
    _lock(conn, scope, at)
    r = table_of(SendReservationRow)
    values = {"slot_at": at, "status": USED, "updated_at": at}
    stmt = insert_for(conn, r).values(scope=scope, key=key, workflow_id=None, **values)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["scope", "key"]))


def settle(conn: Connection, keys: list[str], status: str, at: datetime) -> None:
    """What was held under `keys` happened (`used`: it keeps its place in the windows) or
    was abandoned (`released`: its place is free again)."""
    r = table_of(SendReservationRow)
    conn.execute(
        update(r).where(r.c.key.in_(keys), r.c.status == HELD).values(status=status, updated_at=at)
    )


def release_enrollment(conn: Connection, workflow_id: str, at: datetime) -> int:
    """Give back the places an ended enrollment still held (it ended while a send waited
    or was being retried); the number released."""
    r = table_of(SendReservationRow)
    result = conn.execute(
        update(r)
        .where(and_(r.c.workflow_id == workflow_id, r.c.status == HELD))
        .values(status=RELEASED, updated_at=at)
    )
    return int(result.rowcount or 0)


def held_count(conn: Connection, scope: str, since: datetime) -> int:
    """Places held or used under `scope` since `since` (for reports and tests)."""
    r = table_of(SendReservationRow)
    return int(
        conn.execute(
            select(func.count()).where(
                r.c.scope == scope, r.c.status.in_((HELD, USED)), r.c.slot_at > since
            )
        ).scalar_one()
    )


# --------------------------------------------------------------------------- attempts


@dataclass(frozen=True)
class Attempt:
    dedupe_key: str
    attempt: int
    at: datetime
    channel: str
    outcome: str
    response: str | None
    latency_ms: int | None


def attempt_count(conn: Connection, dedupe_key: str) -> int:
    """How many tries of the send under `dedupe_key` are logged."""
    a = table_of(DeliveryAttemptRow)
    return int(conn.execute(select(func.count()).where(a.c.dedupe_key == dedupe_key)).scalar_one())


def record_attempt(
    conn: Connection,
    *,
    dedupe_key: str,
    customer_id: str | None,
    at: datetime,
    channel: str,
    outcome: str,
    response: str | None,
    latency_ms: int | None,
) -> None:
    """Log one try of the send under `dedupe_key`, numbered after the ones before it (one
    statement, built once: it is on every send's path)."""
    conn.execute(
        _prepared(conn, "record_attempt", _record_attempt_stmt),
        {
            "dedupe_key": dedupe_key,
            "customer_id": customer_id,
            "at": at,
            "channel": channel,
            "outcome": outcome,
            "response": response[:RESPONSE_CHARS] if response else None,
            "latency_ms": latency_ms,
        },
    )


def _record_attempt_stmt(conn: Connection) -> Executable:
    a = table_of(DeliveryAttemptRow)
    before = (
        select(func.coalesce(func.max(a.c.attempt), 0) + 1)
        .where(a.c.dedupe_key == bindparam("dedupe_key"))
        .scalar_subquery()
    )
    values = {
        "dedupe_key": bindparam("dedupe_key"),
        "customer_id": bindparam("customer_id"),
        "attempt": before,
        "at": bindparam("at", type_=a.c.at.type),
        "channel": bindparam("channel"),
        "outcome": bindparam("outcome"),
        "response": bindparam("response"),
        "latency_ms": bindparam("latency_ms"),
    }
    return insert(a).values(values)


def settle_attempt(conn: Connection, dedupe_key: str, at: datetime) -> None:
    """The attempt of the send under `dedupe_key` that held a place under a rate limit
    happened: the place is used."""
    r = table_of(SendReservationRow)
    conn.execute(
        update(r)
        .where(r.c.key.startswith(f"{dedupe_key}#", autoescape=True), r.c.status == HELD)
        .values(status=USED, updated_at=at)
    )


def attempts(conn: Connection, dedupe_keys: list[str]) -> dict[str, list[Attempt]]:
    """The attempts of each send, oldest first."""
    if not dedupe_keys:
        return {}
    a = table_of(DeliveryAttemptRow)
    found: dict[str, list[Attempt]] = {k: [] for k in dedupe_keys}
    rows = conn.execute(
        select(
            a.c.dedupe_key,
            a.c.attempt,
            a.c.at,
            a.c.channel,
            a.c.outcome,
            a.c.response,
            a.c.latency_ms,
        )
        .where(a.c.dedupe_key.in_(dedupe_keys))
        .order_by(a.c.dedupe_key, a.c.attempt)
    )
    for row in rows:
        found[row.dedupe_key].append(Attempt(*row))
    return found
