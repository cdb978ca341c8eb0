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
from rules.facts import Lot, ProfileState
from store.bulk import insert_rows
from store.models import (
    AuditRow,
    CouponRow,
    CustomerRow,
    EventRow,
    FollowUpTaskRow,
    JourneyCommandRow,
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
                lot.customer_id, lot.id, lot.lot_key, lot.remaining, lot.earned_at, lot.expires_at
            )
            .where(where, lot.remaining > 0)
            .order_by(lot.id)
        ):
            states[r.customer_id].lots.append(
                Lot(
                    key=r.lot_key or f"id:{r.id}",
                    remaining=Decimal(r.remaining),
                    earned_at=r.earned_at,
                    expires_at=r.expires_at,
                    id=r.id,
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
        for cid, at, points in conn.execute(
            select(led.customer_id, led.at, led.amount).where(
                where, led.kind == "earn", led.at > since
            )
        ):
            states[cid].earnings.append((at, float(points)))
    return states


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
    debits: list[dict[str, Any]] = field(default_factory=list)
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
            if ch.skipped:
                continue
            d = ch.detail
            if ch.kind in ("add_tag", "remove_tag"):
                self.tags_touched.add(customer_id)
            elif ch.kind == "earn":
                self.lots_touched.add(customer_id)
                self.earns.append(
                    {
                        "customer_id": customer_id,
                        "lot_key": d["lot_key"],
                        "points": Decimal(str(d["points"])),
                        "at": at,
                        "expires_at": d["expires_at"],
                        "event_id": event_id,
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
                            "amount": -Decimal(str(alloc["amount"])),
                            "at": at,
                            "event_id": event_id,
                            "reason": f"{ch.rule}: {d.get('reason') or 'debit'}",
                            "dedupe_key": f"debit:{d['dedupe']}:{i}",
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
                    "kind": "earn",
                    "amount": e["points"],
                    "at": e["at"],
                    "event_id": e["event_id"],
                    "reason": e["reason"],
                    "dedupe_key": f"earn:{e['lot_key']}",
                }
                for e in self.earns
            ],
            lookups={"lot_id": "(SELECT id FROM points_lots WHERE lot_key = {})"},
        )
        if not self.debits:
            return
        # Debits are rare: the lots they drew on get their new `remaining` by id; a lot
        # earned by an earlier chunk of this process does not know its id yet.
        debited = [final[k] for k in dict.fromkeys(d["lot_key"] for d in self.debits)]
        unknown = [lot.key for lot in debited if lot.id is None]
        for where in where_in(conn, lots.c.lot_key, unknown) if unknown else []:
            for key, lot_id in conn.execute(select(lots.c.lot_key, lots.c.id).where(where)):
                final[str(key)].id = lot_id
        conn.execute(
            update(lots).where(lots.c.id == bindparam("lid")).values(remaining=bindparam("left")),
            [{"lid": lot.id, "left": lot.remaining} for lot in debited],
        )
        insert_rows(
            conn,
            table_of(PointsLedgerRow),
            [
                {
                    "customer_id": d["customer_id"],
                    "lot_id": final[d["lot_key"]].id,
                    "kind": "debit",
                    "amount": d["amount"],
                    "at": d["at"],
                    "event_id": d["event_id"],
                    "reason": d["reason"],
                    "dedupe_key": d["dedupe_key"],
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
