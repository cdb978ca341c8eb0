"""The scheduled automations' database work, one chunk at a time.

Each step function takes the run's context and the keyset cursor of the last committed
chunk, does one chunk set-based in SQL in the caller's transaction, and returns where it got
to, what it changed, and the events it wants stored (the caller passes them through the
ingest path, so the rules and journeys see them). Every chunk is idempotent for the run
date: a lot expired once is not expired again (its `remaining` is 0 and its ledger entry has
a dedupe key), an event of the run has an id made of the run date and the customer, and a
tier decision taken once finds nothing to change the second time.

Every writer of what the rules read bumps `customers.state_version`, so a worker's cached
rule state of those customers is reloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)

from automations.models import (
    ChurnScanParams,
    DateEventsParams,
    LeadSlaParams,
    PointsExpiryParams,
    TagExpiryParams,
    TierReviewParams,
)
from journeys.timing import anniversary, parse_date
from rules.facts import zone
from rules.ledger import ACTIVATE
from rules.models import Program
from rules.tiers import GRACE_TAG, TierStanding, review_tier
from store.bulk import insert_rows
from store.customer_model import low_p_alive
from store.db import utcnow
from store.models import (
    AuditRow,
    CustomerRow,
    EventRow,
    OrderRefundRow,
    PointsLedgerRow,
    PointsLotRow,
    TagRow,
    TierHistoryRow,
)
from store.sql import insert_for, table_of, where_in

CUSTOMERS = table_of(CustomerRow)
EVENTS = table_of(EventRow)
LOTS = table_of(PointsLotRow)
LEDGER = table_of(PointsLedgerRow)
TAGS = table_of(TagRow)
AUDIT = table_of(AuditRow)
TIER_HISTORY = table_of(TierHistoryRow)
REFUNDS = table_of(OrderRefundRow)


@dataclass(frozen=True)
class RunContext:
    schedule: str
    run_date: str  # the local date of `as_of` in the schedule's zone
    as_of: datetime
    timezone: str
    params: Any  # the automation's parameters model
    program: Program | None = None
    # the as-of time of the schedule's last completed run before this one (None: none):
    # date-based steps cover every local day after it
    since: datetime | None = None

    @property
    def rule(self) -> str:
        """How the audit trail names this automation."""
        return f"automation:{self.schedule}"[:100]


@dataclass
class Notice:
    """A message to a member of staff (not a customer), sent after the chunk commits."""

    key: str
    to: str | None
    subject: str
    text: str
    html: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    cursor: str | None  # where the next chunk starts
    done: bool  # nothing was left: the step is finished
    counts: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


StepFn = Callable[[Connection, RunContext, str | None], Chunk]


def _bump_versions(conn: Connection, customer_ids: Any) -> None:
    """Bump the rule-state version of the customers `customer_ids` (a subquery or a list)
    selects. Taken first in a chunk: it also locks those customers on PostgreSQL, the order
    the rules take them in, so a debit cannot slip between the chunk's statements."""
    c = CUSTOMERS.c
    conn.execute(
        update(CUSTOMERS)
        .where(c.customer_id.in_(customer_ids))
        .values(state_version=c.state_version + 1)
    )


def _next_ids(conn: Connection, table: Any, lo: int, due: Any, size: int) -> tuple[int, Any] | None:
    """The next chunk of rows `due` selects after id `lo`: its last id and the condition
    that selects exactly it (an id range, so every statement of the chunk sees the same
    rows), with its customers' versions bumped and locked. None when nothing is left."""
    ids = select(table.c.id).where(table.c.id > lo, due).order_by(table.c.id).limit(size)
    hi = conn.execute(select(func.max(ids.subquery().c.id))).scalar()
    if hi is None:
        return None
    chunk = and_(table.c.id > lo, table.c.id <= hi, due)
    _bump_versions(conn, select(table.c.customer_id).where(chunk))
    return int(hi), chunk


def _event(kind: str, key: str, customer_id: str, at: datetime, **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}:{key}:{customer_id}"[:200],
        "customer_id": customer_id,
        "type": kind,
        "occurred_at": at,
        "properties": props,
    }


# --------------------------------------------------------------------------- points expiry


def expire_points(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """Expire the next chunk of lots past their date: one `expire` ledger entry per lot
    (keyed `expire:<lot id>`) for what remained, and the lot zeroed."""
    p: PointsExpiryParams = ctx.params
    lo = int(cursor or 0)
    lot = LOTS.c
    due = and_(lot.expires_at <= ctx.as_of, lot.remaining > 0)
    found = _next_ids(conn, LOTS, lo, due, p.chunk_size)
    if found is None:
        return Chunk(cursor=str(lo), done=True)
    hi, chunk = found
    lots, points, customers = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(lot.remaining), 0),
            func.count(func.distinct(lot.customer_id)),
        ).where(chunk)
    ).one()
    entries = select(
        lot.customer_id,
        lot.id,
        literal("expire", String),
        -lot.remaining,
        lot.expires_at,
        literal("points expired", String),
        literal("expire:", String) + cast(lot.id, String),
    ).where(chunk)
    columns = ["customer_id", "lot_id", "kind", "amount", "at", "reason", "dedupe_key"]
    conn.execute(
        insert_for(conn, LEDGER)
        .from_select(columns, entries)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    conn.execute(update(LOTS).where(chunk).values(remaining=0))
    return Chunk(
        cursor=str(hi),
        done=False,
        counts={"lots_expired": lots, "points_expired": float(points), "customers": customers},
    )


def activate_points(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """Make the next chunk of pending lots spendable once their return window has closed:
    an `activate` ledger entry (keyed `activate:<lot id>`; a transfer from pending to active,
    counted in no total) and the lot's `activated_at`. Balances read the clock, so a lot is
    spendable from `available_at` on whether or not this has run; this records it."""
    p: PointsExpiryParams = ctx.params
    lo = int(cursor or 0)
    lot = LOTS.c
    due = and_(lot.available_at <= ctx.as_of, lot.activated_at.is_(None))
    found = _next_ids(conn, LOTS, lo, due, p.chunk_size)
    if found is None:
        return Chunk(cursor=str(lo), done=True)
    hi, chunk = found
    lots, points = conn.execute(
        select(func.count(), func.coalesce(func.sum(lot.remaining), 0)).where(chunk)
    ).one()
    entries = select(
        lot.customer_id,
        lot.id,
        literal(ACTIVATE, String),
        lot.remaining,
        lot.available_at,
        lot.order_id,
        literal("return window closed", String),
        literal("activate:", String) + cast(lot.id, String),
    ).where(chunk, lot.remaining > 0)
    columns = ["customer_id", "lot_id", "kind", "amount", "at", "order_id", "reason", "dedupe_key"]
    conn.execute(
        insert_for(conn, LEDGER)
        .from_select(columns, entries)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )
    conn.execute(update(LOTS).where(chunk).values(activated_at=ctx.as_of))
    return Chunk(
        cursor=str(hi),
        done=False,
        counts={"lots_activated": lots, "points_activated": float(points)},
    )


def _local(at: datetime, tz: str | None) -> datetime:
    """`at` on the customer's wall clock (UTC for an unknown zone)."""
    return at.astimezone(zone(tz or "UTC") or UTC)


def warn_expiring(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """A `points_expiring` event for each customer with points expiring within the notice
    window: the earliest date, what expires then, and the window's total. One per customer
    and expiry date (the id holds the date), so tomorrow's run does not repeat it."""
    p: PointsExpiryParams = ctx.params
    if p.notice_days == 0:
        return Chunk(cursor=cursor, done=True)
    lot, cust = LOTS.c, CUSTOMERS.c
    until = ctx.as_of + timedelta(days=p.notice_days)
    soon = and_(lot.remaining > 0, lot.expires_at > ctx.as_of, lot.expires_at <= until)
    after = cursor or ""
    who = (
        select(lot.customer_id)
        .where(soon, lot.customer_id > after)
        .group_by(lot.customer_id)
        .order_by(lot.customer_id)
        .limit(p.chunk_size)
        .subquery()
    )
    rows = conn.execute(
        select(lot.customer_id, lot.expires_at, func.sum(lot.remaining), cust.timezone)
        .join(CUSTOMERS, cust.customer_id == lot.customer_id)
        .where(soon, lot.customer_id.in_(select(who.c.customer_id)))
        .group_by(lot.customer_id, lot.expires_at, cust.timezone)
        .order_by(lot.customer_id, lot.expires_at)
    ).all()
    if not rows:
        return Chunk(cursor=cursor, done=True)
    first: dict[str, tuple[datetime, float, str | None]] = {}
    totals: dict[str, float] = {}
    for cid, expires_at, amount, tz in rows:
        totals[cid] = totals.get(cid, 0.0) + float(amount)
        if cid not in first:
            first[cid] = (expires_at, float(amount), tz)
    events = []
    for cid, (expires_at, amount, tz) in first.items():
        day = _local(expires_at, tz).date().isoformat()
        events.append(
            {
                **_event("points_expiring", day, cid, ctx.as_of),
                "properties": {
                    "amount": round(amount, 2),
                    "expires_at": expires_at.isoformat(),
                    "date": day,
                    "total_expiring": round(totals[cid], 2),
                    "within_days": p.notice_days,
                },
            }
        )
    return Chunk(
        cursor=max(first),
        done=False,
        counts={"expiring_notices": len(events)},
        events=events,
    )


# --------------------------------------------------------------------------- tag expiry


def expire_tags(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """Remove the next chunk of tags whose time to live ran out, each noted in the audit
    trail (`remove_tag` by `automation:<schedule>`)."""
    p: TagExpiryParams = ctx.params
    lo = int(cursor or 0)
    t = TAGS.c
    due = t.expires_at <= ctx.as_of
    if p.tags:
        due = and_(due, t.tag.in_(p.tags))
    found = _next_ids(conn, TAGS, lo, due, p.chunk_size)
    if found is None:
        return Chunk(cursor=str(lo), done=True)
    hi, chunk = found
    build = func.jsonb_build_object if conn.dialect.name == "postgresql" else func.json_object
    trail = select(
        t.customer_id,
        t.expires_at,
        literal(utcnow(), AUDIT.c.recorded_at.type),
        literal(ctx.rule, String),
        literal("remove_tag", String),
        build("tag", t.tag, "expired", literal(True)),
        literal("tag expired", String),
    ).where(chunk)
    cols = ["customer_id", "at", "recorded_at", "rule", "kind", "detail", "skipped"]
    conn.execute(AUDIT.insert().from_select(cols, trail))
    customers = conn.execute(select(func.count(func.distinct(t.customer_id))).where(chunk))
    n_customers = customers.scalar_one()
    removed = conn.execute(delete(TAGS).where(chunk)).rowcount
    return Chunk(
        cursor=str(hi),
        done=False,
        counts={"tags_expired": removed, "customers": n_customers},
    )


# --------------------------------------------------------------------------- customer scans


def _next_customers(
    conn: Connection, where: Any, cursor: str | None, size: int, *columns: Any
) -> list[Any]:
    """The next `size` customers after `cursor` (by id) that `where` selects."""
    c = CUSTOMERS.c
    return list(
        conn.execute(
            select(c.customer_id, *columns)
            .where(where, c.customer_id > (cursor or ""))
            .order_by(c.customer_id)
            .limit(size)
        ).all()
    )


def _per_customer(
    conn: Connection, column: Any, ids: list[str], query: Callable[[Any], Any]
) -> dict[str, Any]:
    """`{customer_id: value}` from `query(<filter on column>)`, a select of (customer id,
    value), for the customers `ids` (`where_in`: one array on PostgreSQL, IN lists on
    SQLite)."""
    found: dict[str, Any] = {}
    for where in where_in(conn, column, ids):
        found.update(conn.execute(query(where)).all())
    return found


def _latest(conn: Connection, event_type: str, ids: list[str], until: datetime) -> dict[str, Any]:
    """Each customer's latest event of `event_type` up to `until`."""
    e = EVENTS.c
    return _per_customer(
        conn,
        e.customer_id,
        ids,
        lambda where: (
            select(e.customer_id, func.max(e.occurred_at))
            .where(where, e.type == event_type, e.occurred_at <= until)
            .group_by(e.customer_id)
        ),
    )


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 3)


def scan_churn(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """A `churn_scan` event for each scanned customer whose last purchase is at least
    `min_days_since_purchase` old: the rule pack's churn rules compare the gap with the
    customer's usual gap and start the retention action."""
    p: ChurnScanParams = ctx.params
    c = CUSTOMERS.c
    rows = _next_customers(conn, c.lifecycle_stage.in_(p.stages), cursor, p.chunk_size)
    if not rows:
        return Chunk(cursor=cursor, done=True)
    ids = [r.customer_id for r in rows]
    purchase = ctx.program.purchase_event if ctx.program else "purchase"
    last = _latest(conn, purchase, ids, ctx.as_of)
    cutoff = ctx.as_of - timedelta(days=p.min_days_since_purchase)
    # trigger p_alive: only the customers the customer model scores below the threshold
    low = low_p_alive(conn, ids, p.max_p_alive) if p.trigger == "p_alive" else None
    events = [
        _event(
            "churn_scan",
            ctx.run_date,
            cid,
            ctx.as_of,
            last_purchase_at=at.isoformat(),
            days_since_last_purchase=round((ctx.as_of - at).total_seconds() / 86400, 2),
            **({} if low is None else {"p_alive": round(low[cid], 4)}),
        )
        for cid, at in sorted(last.items())
        if at <= cutoff and (low is None or cid in low)
    ]
    return Chunk(
        cursor=ids[-1],
        done=False,
        counts={"customers_scanned": len(ids), "churn_checks": len(events)},
        events=events,
    )


LEAD_STAGES = ("lead", "prospect")


def scan_leads(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """A `lead_sla_check` event (with the owner at the time) for each owned lead nobody
    followed up within the SLA; the rule pack returns them to the pool."""
    p: LeadSlaParams = ctx.params
    c = CUSTOMERS.c
    owned = and_(c.lifecycle_stage.in_(LEAD_STAGES), c.owner.is_not(None))
    rows = _next_customers(conn, owned, cursor, p.chunk_size, c.owner, c.created_at)
    if not rows:
        return Chunk(cursor=cursor, done=True)
    ids = [r.customer_id for r in rows]
    follow_up = ctx.program.follow_up_event if ctx.program else "sales_follow_up"
    last = _latest(conn, follow_up, ids, ctx.as_of)
    sla = timedelta(hours=p.sla_hours)
    events = []
    for r in rows:
        since = last.get(r.customer_id) or r.created_at
        if ctx.as_of - since >= sla:
            events.append(
                _event(
                    "lead_sla_check",
                    ctx.run_date,
                    r.customer_id,
                    ctx.as_of,
                    owner=r.owner,
                    hours_since_last_follow_up=_hours(ctx.as_of - since),
                    sla_hours=p.sla_hours,
                )
            )
    return Chunk(
        cursor=ids[-1],
        done=False,
        counts={"leads_scanned": len(ids), "sla_missed": len(events)},
        events=events,
    )


def notify_managers(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """One notice per owner whose leads this run returned to the pool, to the owner's
    manager: the leads checked by this run date's `lead_sla_check` events that now have no
    owner. Keyed by schedule, date and owner, so a rerun sends nothing new."""
    p: LeadSlaParams = ctx.params
    if cursor == "sent":
        return Chunk(cursor=cursor, done=True)
    e, c = EVENTS.c, CUSTOMERS.c
    prefix = f"lead_sla_check:{ctx.run_date}:"
    rows = conn.execute(
        select(e.customer_id, e.properties["owner"].as_string(), c.name, e.properties)
        .join(CUSTOMERS, c.customer_id == e.customer_id)
        .where(e.type == "lead_sla_check", e.event_id.startswith(prefix), c.owner.is_(None))
        .order_by(e.customer_id)
    ).all()
    by_owner: dict[str, list[tuple[str, str | None, float | None]]] = {}
    for cid, owner, name, props in rows:
        hours = (props or {}).get("hours_since_last_follow_up")
        by_owner.setdefault(owner or "(unknown)", []).append((cid, name, hours))
    notices = []
    for owner, leads in sorted(by_owner.items()):
        manager = p.managers.get(owner, p.default_manager)
        lines = [
            f"- {cid}{f' ({name})' if name else ''}: {hours:g} h without a follow-up"
            if hours is not None
            else f"- {cid}"
            for cid, name, hours in leads[:100]
        ]
        if len(leads) > 100:
            lines.append(f"… and {len(leads) - 100} more")
        notices.append(
            Notice(
                key=f"lead_sla:{ctx.schedule}:{ctx.run_date}:{owner}",
                to=manager,
                subject=f"{len(leads)} lead(s) of {owner} went back to the shared pool",
                text=(
                    f"These leads of {owner} had no follow-up within {p.sla_hours:g} hours "
                    f"and are back in the shared pool ({ctx.run_date}):\n\n" + "\n".join(lines)
                ),
                data={"owner": owner, "leads": [cid for cid, _, _ in leads]},
            )
        )
    counts: dict[str, float] = {
        "leads_returned": len(rows),
        "managers_told": sum(1 for n in notices if n.to),
    }
    return Chunk(cursor="sent", done=False, counts=counts, notices=notices)


# --------------------------------------------------------------------------- date events


def _month_day(text: Any) -> Any:
    """MM-DD of a YYYY-MM-DD text column."""
    return func.substr(text, 6, 5)


def _created_month_day(conn: Connection) -> Any:
    created = CUSTOMERS.c.created_at
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", created), "MM-DD")
    return _month_day(created)


def _month_days(first: date, last: date) -> list[str] | None:
    """MM-DD of the days a customer somewhere on Earth may be living on between the UTC
    days `first` and `last` (a day either side), plus 29 February when the 28th is among
    them (a leap-day birthday is kept on the 28th in common years); None when that is every
    day of the year."""
    first, last = first - timedelta(days=1), last + timedelta(days=1)
    if (last - first).days >= 365:
        return None
    keys = {(first + timedelta(days=d)).strftime("%m-%d") for d in range((last - first).days + 1)}
    if "02-28" in keys:
        keys.add("02-29")
    return sorted(keys)


def covered_days(ctx: RunContext, tz: str | None, catch_up_days: int) -> tuple[date, date]:
    """The customer's local days this run covers: from the day after the one the last
    completed run covered (`ctx.since`, on the customer's clock) to today on their clock,
    at most `catch_up_days` of them; only today when there was no earlier run."""
    today = _local(ctx.as_of, tz).date()
    if ctx.since is None or ctx.since >= ctx.as_of:
        return today, today
    first = _local(ctx.since, tz).date() + timedelta(days=1)
    return max(first, today - timedelta(days=catch_up_days - 1)), today


def scan_dates(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """`birthday` and `membership_anniversary` events for customers whose day it is in
    their own time zone — or was, on a day since the last completed run (a night the
    schedule did not run is caught up, up to `catch_up_days` back). SQL keeps the customers
    whose date falls within a day of the covered UTC days; the exact local days are checked
    here. An event's id holds its day, so a day covered twice gives one event."""
    p: DateEventsParams = ctx.params
    c = CUSTOMERS.c
    utc_today = ctx.as_of.astimezone(UTC).date()
    utc_first = utc_today
    if ctx.since is not None and ctx.since < ctx.as_of:
        utc_first = max(
            ctx.since.astimezone(UTC).date(), utc_today - timedelta(days=p.catch_up_days)
        )
    days = _month_days(utc_first, utc_today)
    born = c.attributes[p.birthday_attribute].as_string()
    joined = c.attributes[p.anniversary_attribute].as_string()

    def on(column: Any) -> Any:
        return column.is_not(None) if days is None else column.in_(days)

    wanted = []
    if "birthday" in p.events:
        wanted.append(on(_month_day(born)))
    if "membership_anniversary" in p.events:
        wanted.append(on(_month_day(joined)))
        wanted.append(and_(joined.is_(None), on(_created_month_day(conn))))
    if not wanted:
        return Chunk(cursor=cursor, done=True)
    rows = _next_customers(
        conn, or_(*wanted), cursor, p.chunk_size, c.timezone, born, joined, c.created_at
    )
    if not rows:
        return Chunk(cursor=cursor, done=True)
    events: list[dict[str, Any]] = []
    invalid = 0
    for cid, tz, born_text, joined_text, created_at in rows:
        first, today = covered_days(ctx, tz, p.catch_up_days)
        dates: list[tuple[str, str, str | datetime]] = []
        if "birthday" in p.events and born_text:
            dates.append(("birthday", "age", born_text))
        if "membership_anniversary" in p.events:
            dates.append(("membership_anniversary", "years", joined_text or created_at))
        for kind, count, raw in dates:
            try:
                start = _local(raw, tz).date() if isinstance(raw, datetime) else parse_date(raw)
            except ValueError:
                invalid += 1
                continue
            for year in range(first.year, today.year + 1):
                day = anniversary(start, year)
                if first <= day <= today and year > start.year:
                    props = {"date": day.isoformat(), count: year - start.year}
                    events.append(_event(kind, day.isoformat(), cid, ctx.as_of, **props))
    counts: dict[str, float] = {
        "customers_checked": len(rows),
        "birthdays": sum(1 for ev in events if ev["type"] == "birthday"),
        "anniversaries": sum(1 for ev in events if ev["type"] == "membership_anniversary"),
    }
    if invalid:
        counts["invalid_dates"] = invalid
    return Chunk(cursor=rows[-1].customer_id, done=False, counts=counts, events=events)


# --------------------------------------------------------------------------- tier review


def qualifying_totals(
    conn: Connection, program: Program, ids: list[str], as_of: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tier-qualifying figures of `ids` over the programme's tier window up to `as_of`:
    `({customer_id: spend}, {customer_id: points earned})` (absent: none). The one
    definition the tier review and the customer 360 view share."""
    since = as_of - timedelta(days=program.tier_policy.window_days)
    e, led, ref = EVENTS.c, LEDGER.c, REFUNDS.c
    spend = _per_customer(
        conn,
        e.customer_id,
        ids,
        lambda where: (
            select(e.customer_id, func.sum(e.properties[program.spend_property].as_float()))
            .where(
                where,
                e.type == program.purchase_event,
                e.occurred_at > since,
                e.occurred_at <= as_of,
            )
            .group_by(e.customer_id)
        ),
    )
    earned = _per_customer(
        conn,
        led.customer_id,
        ids,
        lambda where: (
            select(led.customer_id, func.sum(led.amount))
            .where(where, led.qualifying.is_(True), led.at > since, led.at <= as_of)
            .group_by(led.customer_id)
        ),
    )
    # refunds take their money and points off the window of the purchase they refund
    in_window = (
        ref.purchased_at > since,
        ref.purchased_at <= as_of,
        ref.refunded_at <= as_of,
    )

    def refunded(column: Any) -> Callable[[Any], Any]:
        return lambda where: (
            select(ref.customer_id, func.sum(column))
            .where(where, *in_window)
            .group_by(ref.customer_id)
        )

    for totals, column in ((spend, ref.amount), (earned, ref.points)):
        taken = _per_customer(conn, ref.customer_id, ids, refunded(column))
        for cid, value in taken.items():
            if cid in totals:
                totals[cid] = max(float(totals[cid] or 0) - float(value or 0), 0.0)
    return spend, earned


def review_tiers(conn: Connection, ctx: RunContext, cursor: str | None) -> Chunk:
    """Apply the programme's tier policy to the next chunk of members with a tier: upgrade
    at once, downgrade after the grace period (the `tier-grace` tag marks its start) or on
    the membership anniversary; tier history, audit trail and a `tier_changed` event for
    each move."""
    p: TierReviewParams = ctx.params
    program = ctx.program
    if program is None:
        raise LookupError("no rules version is deployed: the tier review needs the programme")
    c = CUSTOMERS.c
    anniversary_attr = getattr(program.tier_policy.downgrade, "attribute", "member_since")
    joined = c.attributes[anniversary_attr].as_string()
    rows = _next_customers(
        conn, c.tier.is_not(None), cursor, p.chunk_size, c.tier, c.created_at, c.timezone, joined
    )
    if not rows:
        return Chunk(cursor=cursor, done=True)
    ids = [r.customer_id for r in rows]
    spend, earned = qualifying_totals(conn, program, ids, ctx.as_of)
    t, h = TAGS.c, TIER_HISTORY.c
    grace = _per_customer(
        conn,
        t.customer_id,
        ids,
        lambda where: select(t.customer_id, t.created_at).where(where, t.tag == GRACE_TAG),
    )
    changed = _per_customer(
        conn,
        h.customer_id,
        ids,
        lambda where: (
            select(h.customer_id, func.max(h.changed_at))
            .where(where, h.changed_at <= ctx.as_of)
            .group_by(h.customer_id)
        ),
    )
    moves: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []
    grace_on: list[dict[str, Any]] = []
    grace_off: list[str] = []
    events: list[dict[str, Any]] = []
    counts = {"members_reviewed": float(len(rows))}
    now = utcnow()
    for r in rows:
        cid = r.customer_id
        try:
            member_since = parse_date(r[4]) if r[4] else r.created_at.date()
        except ValueError:
            member_since = r.created_at.date()
        standing = TierStanding(
            tier=r.tier,
            spend=float(spend.get(cid) or 0),
            points_earned=float(earned.get(cid) or 0),
            grace_since=grace.get(cid),
            tier_since=changed.get(cid, r.created_at),
            anniversary=member_since,
        )
        d = review_tier(program, standing, ctx.as_of, _local(ctx.as_of, r.timezone).date())
        if d.action == "keep":
            continue
        counts[d.action] = counts.get(d.action, 0) + 1
        detail: dict[str, Any] = {"action": d.action, "reason": d.reason}
        if d.action in ("upgrade", "downgrade"):
            event = _event(
                "tier_changed",
                ctx.run_date,
                cid,
                ctx.as_of,
                from_tier=d.from_tier,
                to_tier=d.to_tier,
                direction=d.action,
                reason=d.reason,
            )
            events.append(event)
            moves.append({"cid": cid, "tier": d.to_tier})
            history.append(
                {
                    "customer_id": cid,
                    "from_tier": d.from_tier,
                    "to_tier": d.to_tier,
                    "changed_at": ctx.as_of,
                    "reason": f"{d.action} by {ctx.rule}: {d.reason}",
                    "event_id": event["event_id"],
                }
            )
            detail.update(from_tier=d.from_tier, to_tier=d.to_tier, how=d.action)
            if cid in grace:
                grace_off.append(cid)
        elif d.action == "grace_start":
            grace_on.append(
                {
                    "customer_id": cid,
                    "tag": GRACE_TAG,
                    "source": ctx.rule,
                    "created_at": ctx.as_of,
                    "expires_at": None,
                }
            )
        else:
            grace_off.append(cid)
        audit.append(
            {
                "customer_id": cid,
                "at": ctx.as_of,
                "recorded_at": now,
                "event_id": None,
                "rule": ctx.rule,
                "rules_version": None,
                "kind": "tier" if d.action in ("upgrade", "downgrade") else "tier_grace",
                "detail": detail,
                "skipped": None,
            }
        )
    touched = sorted({a["customer_id"] for a in audit})
    if touched:
        _bump_versions(conn, touched)
    if moves:
        conn.execute(
            update(CUSTOMERS)
            .where(c.customer_id == bindparam("cid"))
            .values(tier=bindparam("tier"), updated_at=now),
            moves,
        )
        insert_rows(conn, TIER_HISTORY, history)
    if grace_off:
        conn.execute(delete(TAGS).where(t.customer_id.in_(grace_off), t.tag == GRACE_TAG))
    if grace_on:
        insert_rows(conn, TAGS, grace_on, ignore_conflicts_on="customer_id, tag")
    insert_rows(conn, AUDIT, audit)
    return Chunk(cursor=ids[-1], done=False, counts=counts, events=events)


STEP_FUNCTIONS: dict[tuple[str, str], StepFn] = {
    ("points_expiry", "expire"): expire_points,
    ("points_expiry", "notify"): warn_expiring,
    ("points_expiry", "activate"): activate_points,
    ("tag_expiry", "expire"): expire_tags,
    ("churn_scan", "scan"): scan_churn,
    ("lead_sla", "scan"): scan_leads,
    ("lead_sla", "notify"): notify_managers,
    ("date_events", "scan"): scan_dates,
    ("tier_review", "review"): review_tiers,
}
