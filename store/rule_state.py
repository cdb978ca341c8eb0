"""Load the rules' view of customers, and write back what the rules changed — set-based.

`load_states` reads everything the rules need for a set of customers in a handful of
queries (profiles, tags, open lots, recent purchases and earnings, last follow-up).
`write_changes` writes one chunk's outcome: tags, lots and ledger entries, profile fields,
tier history, audit trail, journey outbox, tasks and coupons — inside the caller's
transaction, together with the events' processed marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update

from rules.effects import Change
from rules.facts import EventFacts, Lot, ProfileState, order_of
from rules.ledger import (
    ADJUST_CREDIT,
    ADJUST_DEBIT,
    CLAWBACK,
    EARN,
    EARNED_KINDS,
    PENDING,
    OrderState,
    cents,
)
from rules.models import Program
from store.bulk import insert_rows
from store.customer_model import model_facts
from store.models import (
    AuditRow,
    CouponRow,
    CustomerRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
    OrderRefundRow,
    PointsLedgerRow,
    PointsLotRow,
    TagRow,
    TierHistoryRow,
)
from store.sql import insert_for, table_of, where_in


def load_states(
    conn: Connection,
    customer_ids: list[str],
    since: datetime,
    *,
    purchase_event: str,
    spend_property: str,
    follow_up_event: str,
) -> dict[str, ProfileState]:
    """Profiles of `customer_ids` as the rules see them, with history from `since` on."""
    states: dict[str, ProfileState] = {}
    c = CustomerRow
    for where in where_in(conn, c.customer_id, customer_ids):
        for row in conn.execute(
            select(
                c.customer_id,
                c.created_at,
                c.timezone,
                c.tier,
                c.lifecycle_stage,
                c.owner,
                c.consent,
                c.attributes,
                c.points_debt,
            ).where(where)
        ):
            states[row.customer_id] = ProfileState(
                customer_id=row.customer_id,
                created_at=row.created_at,
                timezone=row.timezone,
                tier=row.tier,
                lifecycle_stage=row.lifecycle_stage,
                owner=row.owner,
                consent=dict(row.consent or {}),
                attributes=dict(row.attributes or {}),
                debt=cents(row.points_debt or 0),
            )
    ids = list(states)
    for where in where_in(conn, TagRow.customer_id, ids):
        for cid, tag, expires in conn.execute(
            select(TagRow.customer_id, TagRow.tag, TagRow.expires_at).where(where)
        ):
            states[cid].tags[tag] = expires
    lot = PointsLotRow
    for where in where_in(conn, lot.customer_id, ids):
        for r in conn.execute(
            select(
                lot.customer_id,
                lot.id,
                lot.lot_key,
                lot.remaining,
                lot.earned_at,
                lot.expires_at,
                lot.order_id,
                lot.available_at,
            )
            .where(where, lot.remaining > 0)
            .order_by(lot.id)
        ):
            states[r.customer_id].lots.append(
                Lot(
                    key=r.lot_key or f"id:{r.id}",
                    remaining=cents(r.remaining),
                    earned_at=r.earned_at,
                    expires_at=r.expires_at,
                    id=r.id,
                    order_id=r.order_id,
                    available_at=r.available_at,
                )
            )
    e = EventRow
    amount = e.properties[spend_property].as_float()
    for where in where_in(conn, e.customer_id, ids):
        for cid, at, value in conn.execute(
            select(e.customer_id, e.occurred_at, amount)
            .where(
                where,
                e.type == purchase_event,
                e.occurred_at > since,
                e.processed_at.is_not(None),
            )
            .order_by(e.occurred_at)
        ):
            if value is not None:
                states[cid].purchases.append((at, float(value)))
        for cid, last in conn.execute(
            select(e.customer_id, func.max(e.occurred_at))
            .where(where, e.type == follow_up_event, e.processed_at.is_not(None))
            .group_by(e.customer_id)
        ):
            states[cid].last_follow_up_at = last
    led = PointsLedgerRow
    for where in where_in(conn, led.customer_id, ids):
        for cid, kind, at, points in conn.execute(
            select(led.customer_id, led.kind, led.at, led.amount).where(
                where,
                led.at > since,
                led.kind.in_((EARN, PENDING, ADJUST_CREDIT)),
                led.qualifying.is_(True),
            )
        ):
            target = states[cid].credits if kind == ADJUST_CREDIT else states[cid].earnings
            target.append((at, float(points)))
    for cid, scores in model_facts(conn, ids).items():
        states[cid].model_facts = scores
    ref = OrderRefundRow
    for where in where_in(conn, ref.customer_id, ids):
        for cid, bought, refunded, money, clawed in conn.execute(
            select(
                ref.customer_id, ref.purchased_at, ref.refunded_at, ref.amount, ref.points
            ).where(where, ref.purchased_at > since)
        ):
            if bought is not None:
                states[cid].refunds.append((bought, refunded, float(money), float(clawed)))
    return states


def load_orders(
    conn: Connection,
    states: dict[str, ProfileState],
    events: list[dict[str, Any]],
    program: Program,
) -> None:
    """Give `states` the orders this chunk's refunds name that they do not hold yet (bought
    in an earlier chunk): the purchase's time and amount, the points its lots earned, what
    earlier refunds took. Three queries, and none for a chunk without refunds."""
    wanted: dict[str, set[str]] = {}
    for e in events:
        if e["type"] != program.refund_event:
            continue
        oid = order_of(
            EventFacts("", e["type"], e["occurred_at"], e.get("properties") or {}), program
        )
        state = states.get(e["customer_id"])
        if oid is not None and state is not None and oid not in state.orders:
            wanted.setdefault(e["customer_id"], set()).add(oid)
    if not wanted:
        return
    cids = sorted(wanted)
    oids = sorted(set().union(*wanted.values()))
    found: dict[tuple[str, str], OrderState] = {}
    ev = EventRow
    order_col = ev.properties[program.order_property].as_string()
    amount_col = ev.properties[program.spend_property].as_float()
    for where in where_in(conn, ev.customer_id, cids):
        for cid, oid, at, amount in conn.execute(
            select(ev.customer_id, order_col, ev.occurred_at, amount_col)
            .where(
                where,
                ev.type == program.purchase_event,
                ev.processed_at.is_not(None),
                order_col.in_(oids),
            )
            .order_by(ev.occurred_at, ev.id)
        ):
            if oid not in wanted[cid] or amount is None:
                continue
            order = found.get((cid, oid))
            if order is None:
                found[(cid, oid)] = OrderState(oid, at, cents(amount))
            else:
                order.amount += cents(amount)
    if not found:
        return
    # what the order earned, from its earnings (a reversal's new lot may carry the order too)
    led, ref = PointsLedgerRow, OrderRefundRow
    for where in where_in(conn, led.customer_id, cids):
        for cid, oid, earned in conn.execute(
            select(led.customer_id, led.order_id, func.sum(led.amount))
            .where(where, led.order_id.in_(oids), led.kind.in_(EARNED_KINDS))
            .group_by(led.customer_id, led.order_id)
        ):
            if oid is not None and (cid, oid) in found:
                found[(cid, oid)].points = cents(earned or 0)
    for where in where_in(conn, ref.customer_id, cids):
        for cid, oid, amount, points in conn.execute(
            select(ref.customer_id, ref.order_id, func.sum(ref.amount), func.sum(ref.points))
            .where(where, ref.order_id.in_(oids))
            .group_by(ref.customer_id, ref.order_id)
        ):
            if oid is not None and (cid, oid) in found:
                found[(cid, oid)].refunded = cents(amount or 0)
                found[(cid, oid)].clawed = cents(points or 0)
    for (cid, oid), order in found.items():
        states[cid].orders.setdefault(oid, order)


@dataclass
class ChunkWriter:
    """Collects one chunk's changes, then writes them with a few statements."""

    rules_version: str | None
    now: datetime
    audit: list[dict[str, Any]] = field(default_factory=list)
    tier_history: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    coupons: list[dict[str, Any]] = field(default_factory=list)
    earns: list[dict[str, Any]] = field(default_factory=list)
    # points taken from lots (a rule's deduction, a refund's clawback); lot_key None: a debt
    debits: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    tags_touched: set[str] = field(default_factory=set)
    lots_touched: set[str] = field(default_factory=set)

    def revoke_consent(
        self, customer_id: str, event_id: str, at: datetime, channels: list[str]
    ) -> None:
        """An unsubscribe: consent for `channels` is already off in the state; write it, and
        say so in the audit trail."""
        self.touched.add(customer_id)
        self.audit.append(
            {
                "customer_id": customer_id,
                "at": at,
                "recorded_at": self.now,
                "event_id": event_id,
                "rule": "unsubscribe",
                "rules_version": self.rules_version,
                "kind": "consent",
                "detail": {"revoked": channels},
                "skipped": None,
            }
        )

    def journey_event(self, customer_id: str, journey: str, event: dict[str, Any]) -> None:
        """Hand an event to a journey (its entry, goal, exit or a wait): the dispatcher
        signals the customer's enrollments after this transaction commits."""
        self.outbox.append(
            {
                "dedupe_key": f"{event['event_id']}:journey:{journey}",
                "customer_id": customer_id,
                "journey": journey,
                "command": "event",
                "event": event["type"],
                "data": {
                    "event_id": event["event_id"],
                    "occurred_at": event["occurred_at"].isoformat(),
                    "properties": event.get("properties") or {},
                },
                "event_id": event["event_id"],
                "rule": None,
                "created_at": self.now,
            }
        )

    def add(self, customer_id: str, event_id: str, at: datetime, changes: list[Change]) -> None:
        for n, ch in enumerate(changes):
            self.audit.append(
                {
                    "customer_id": customer_id,
                    "at": at,
                    "recorded_at": self.now,
                    "event_id": event_id,
                    "rule": ch.rule,
                    "rules_version": self.rules_version,
                    "kind": ch.kind,
                    "detail": _jsonable(ch.detail),
                    "skipped": ch.skipped,
                }
            )
            d = ch.detail
            if ch.kind == "clawback":
                # every refund is recorded, skipped or not: it lowers spend all the same
                self.refunds.append(
                    {
                        "customer_id": customer_id,
                        "order_id": d.get("order_id"),
                        "event_id": event_id,
                        "purchased_at": d.get("purchased_at"),
                        "refunded_at": at,
                        "amount": cents(d.get("amount") or 0),
                        "points": cents(d.get("points") or 0),
                        "debt": cents(d.get("debt") or 0),
                    }
                )
            if ch.skipped:
                continue
            if ch.kind in ("add_tag", "remove_tag"):
                self.tags_touched.add(customer_id)
            elif ch.kind == "earn":
                self.lots_touched.add(customer_id)
                if d.get("debt_settled"):
                    self.touched.add(customer_id)  # the debt fell
                self.earns.append(
                    {
                        "customer_id": customer_id,
                        "lot_key": d["lot_key"],
                        "points": Decimal(str(d["points"])),
                        "at": at,
                        "expires_at": d["expires_at"],
                        "available_at": d.get("available_at"),
                        "order_id": d.get("order_id"),
                        "event_id": event_id,
                        "rule": ch.rule,
                        "reason": f"{ch.rule}: {d.get('reason') or 'earn'}",
                    }
                )
            elif ch.kind == "debit":
                self.lots_touched.add(customer_id)
                for i, alloc in enumerate(d["allocations"]):
                    self.debits.append(
                        {
                            "customer_id": customer_id,
                            "lot_key": alloc["lot_key"],
                            "kind": ADJUST_DEBIT,
                            "amount": -Decimal(str(alloc["amount"])),
                            "at": at,
                            "event_id": event_id,
                            "order_id": None,
                            "actor": f"rule:{ch.rule}",
                            "reason": f"{ch.rule}: {d.get('reason') or 'debit'}",
                            "dedupe_key": f"debit:{d['dedupe']}:{i}",
                        }
                    )
            elif ch.kind == "clawback":
                self.lots_touched.add(customer_id)
                self.touched.add(customer_id)  # the debt may rise
                parts = [
                    (a["lot_key"], a["amount"], str(i)) for i, a in enumerate(d["allocations"])
                ]
                if d.get("debt"):
                    parts.append((None, d["debt"], "debt"))
                for lot_key, amount, suffix in parts:
                    self.debits.append(
                        {
                            "customer_id": customer_id,
                            "lot_key": lot_key,
                            "kind": CLAWBACK,
                            "amount": -cents(amount),
                            "at": at,
                            "event_id": event_id,
                            "order_id": d.get("order_id"),
                            "actor": f"rule:{ch.rule}",
                            "reason": f"refund of order {d.get('order_id')}"
                            + (" (beyond the balance: a debt)" if lot_key is None else ""),
                            "dedupe_key": f"claw:{event_id}:{suffix}",
                        }
                    )
            elif ch.kind in ("tier", "stage", "owner"):
                self.touched.add(customer_id)
                if ch.kind == "tier":
                    self.tier_history.append(
                        {
                            "customer_id": customer_id,
                            "from_tier": d.get("from_tier"),
                            "to_tier": d["to_tier"],
                            "changed_at": at,
                            "reason": f"{d.get('how', 'set')} by rule {ch.rule} "
                            f"(rules {self.rules_version})",
                            "event_id": event_id,
                        }
                    )
            elif ch.kind == "journey":
                self.outbox.append(
                    {
                        "dedupe_key": f"{event_id}:{ch.rule}:{n}",
                        "customer_id": customer_id,
                        "journey": d["journey"],
                        "command": d["command"],
                        "event": d.get("event"),
                        "data": d.get("data") or {},
                        "event_id": event_id,
                        "rule": ch.rule,
                        "created_at": self.now,
                    }
                )
            elif ch.kind == "task":
                self.tasks.append(
                    {
                        "customer_id": customer_id,
                        "owner": d.get("owner"),
                        "title": d["title"],
                        "due_at": d["due_at"],
                        "status": "open",
                        "rule": ch.rule,
                        "event_id": event_id,
                        "created_at": self.now,
                    }
                )
            elif ch.kind == "coupon":
                self.coupons.append(
                    {
                        "code": d["code"],
                        "customer_id": customer_id,
                        "value": Decimal(str(d["value"])),
                        "expires_at": d["expires_at"],
                        "rule": ch.rule,
                        "event_id": event_id,
                        "created_at": self.now,
                    }
                )

    def write(self, conn: Connection, states: dict[str, ProfileState]) -> None:
        self._write_profiles(conn, states)
        self._write_tags(conn, states)
        self._write_points(conn, states)
        plain: list[tuple[Any, list[dict[str, Any]]]] = [
            (TierHistoryRow, self.tier_history),
            (FollowUpTaskRow, self.tasks),
            (AuditRow, self.audit),
        ]
        for model, rows in plain:
            insert_rows(conn, table_of(model), rows)
        keyed: list[tuple[Any, list[dict[str, Any]], str]] = [
            (JourneyCommandRow, self.outbox, "dedupe_key"),
            (CouponRow, self.coupons, "code"),
            (OrderRefundRow, self.refunds, "event_id"),
        ]
        for model, rows, key in keyed:
            if rows:
                stmt = insert_for(conn, table_of(model)).on_conflict_do_nothing(
                    index_elements=[key]
                )
                conn.execute(stmt, rows)

    def _write_profiles(self, conn: Connection, states: dict[str, ProfileState]) -> None:
        if not self.touched:
            return
        c = table_of(CustomerRow).c
        stmt = (
            update(table_of(CustomerRow))
            .where(c.customer_id == bindparam("cid"))
            .values(
                tier=bindparam("tier"),
                lifecycle_stage=bindparam("stage"),
                owner=bindparam("owner"),
                consent=bindparam("consent", type_=c.consent.type),
                points_debt=bindparam("debt", type_=c.points_debt.type),
                updated_at=bindparam("now"),
            )
        )
        conn.execute(
            stmt,
            [
                {
                    "cid": cid,
                    "tier": states[cid].tier,
                    "stage": states[cid].lifecycle_stage,
                    "owner": states[cid].owner,
                    "consent": states[cid].consent,
                    "debt": states[cid].debt,
                    "now": self.now,
                }
                for cid in sorted(self.touched)
            ],
        )

    def _write_tags(self, conn: Connection, states: dict[str, ProfileState]) -> None:
        """Replace the touched customers' tags by their final state; a tag that was there
        already keeps its source and created_at."""
        if not self.tags_touched:
            return
        ids = sorted(self.tags_touched)
        kept: dict[tuple[str, str], tuple[str | None, datetime]] = {}
        for where in where_in(conn, TagRow.customer_id, ids):
            for cid, tag, source, created in conn.execute(
                select(TagRow.customer_id, TagRow.tag, TagRow.source, TagRow.created_at).where(
                    where
                )
            ):
                kept[(cid, tag)] = (source, created)
            conn.execute(delete(TagRow).where(where))
        rows = [
            {
                "customer_id": cid,
                "tag": tag,
                "source": kept.get((cid, tag), ("rules", self.now))[0],
                "created_at": kept.get((cid, tag), ("rules", self.now))[1],
                "expires_at": expires,
            }
            for cid in ids
            for tag, expires in states[cid].tags.items()
        ]
        if rows:
            conn.execute(table_of(TagRow).insert(), rows)

    def _write_points(self, conn: Connection, states: dict[str, ProfileState]) -> None:
        if not self.lots_touched:
            return
        final: dict[str, Lot] = {
            lot.key: lot for cid in self.lots_touched for lot in states[cid].lots
        }
        lots = table_of(PointsLotRow)
        insert_rows(
            conn,
            lots,
            [
                {
                    "customer_id": e["customer_id"],
                    "earned": e["points"],
                    "remaining": final[e["lot_key"]].remaining,
                    "earned_at": e["at"],
                    "expires_at": e["expires_at"],
                    "source": e["reason"][:200],
                    "event_id": e["event_id"],
                    "lot_key": e["lot_key"],
                    "order_id": e["order_id"],
                    "available_at": e["available_at"],
                }
                for e in self.earns
            ],
        )
        # an earn entry finds its new lot by the lot's (unique) key, in the same statement
        insert_rows(
            conn,
            table_of(PointsLedgerRow),
            [
                {
                    "customer_id": e["customer_id"],
                    "lot_id": e["lot_key"],
                    "kind": PENDING if e["available_at"] is not None else EARN,
                    "amount": e["points"],
                    "at": e["at"],
                    "event_id": e["event_id"],
                    "reason": e["reason"],
                    "dedupe_key": f"earn:{e['lot_key']}",
                    "order_id": e["order_id"],
                    "qualifying": True,
                    "actor": f"rule:{e['rule']}",
                }
                for e in self.earns
            ],
            lookups={"lot_id": "(SELECT id FROM points_lots WHERE lot_key = {})"},
        )
        if not self.debits:
            return
        # Debits are rare: the lots they drew on get their new `remaining` by id; a lot
        # earned by an earlier chunk of this process does not know its id yet.
        drawn = (d["lot_key"] for d in self.debits if d["lot_key"] is not None)
        debited = [final[k] for k in dict.fromkeys(drawn)]
        unknown = [lot.key for lot in debited if lot.id is None]
        for where in where_in(conn, lots.c.lot_key, unknown) if unknown else []:
            for key, lot_id in conn.execute(select(lots.c.lot_key, lots.c.id).where(where)):
                final[str(key)].id = lot_id
        if debited:
            conn.execute(
                update(lots)
                .where(lots.c.id == bindparam("lid"))
                .values(remaining=bindparam("left")),
                [{"lid": lot.id, "left": lot.remaining} for lot in debited],
            )
        insert_rows(
            conn,
            table_of(PointsLedgerRow),
            [
                {
                    "customer_id": d["customer_id"],
                    "lot_id": final[d["lot_key"]].id if d["lot_key"] is not None else None,
                    "kind": d["kind"],
                    "amount": d["amount"],
                    "at": d["at"],
                    "event_id": d["event_id"],
                    "reason": d["reason"],
                    "dedupe_key": d["dedupe_key"],
                    "order_id": d["order_id"],
                    "actor": d["actor"],
                }
                for d in self.debits
            ],
        )


def _jsonable(detail: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in detail.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif isinstance(v, Decimal):
            out[k] = float(v)
        elif isinstance(v, timedelta):
            out[k] = v.total_seconds()
        else:
            out[k] = v
    return out
