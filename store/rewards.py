"""The rewards catalogue in the database: apply a catalogue (upsert, withdraw what it leaves
out), read it, give back an item of a reward's stock; read and reverse redemptions.

`issued` counts the items handed out and not given back; it belongs to the database, never
to the file: applying a catalogue keeps it. Stock left = `stock - issued` (no stock: no
limit). A redemption's own statements (taking an item of stock, its row) are in
`store.points`, on the redemption's fast path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, select, update

from store.models import RedemptionRow, RewardRow
from store.sql import insert_for, table_of

REWARDS = table_of(RewardRow)
DONE, REVERSED = "done", "reversed"  # a redemption's status
# what a catalogue file sets; `issued` and `active` are the database's
FILE_COLUMNS = (
    "name",
    "kind",
    "cost",
    "stock",
    "per_member_limit",
    "valid_from",
    "valid_to",
    "min_tier",
    "description",
    "coupon",
)


def read(conn: Connection, *, withdrawn: bool = True) -> list[Row[Any]]:
    """Every reward (or only the active ones), by id."""
    r = REWARDS.c
    query = select(REWARDS).order_by(r.reward_id)
    if not withdrawn:
        query = query.where(r.active.is_(True))
    return list(conn.execute(query))


def one(conn: Connection, reward_id: str) -> Row[Any] | None:
    return conn.execute(select(REWARDS).where(REWARDS.c.reward_id == reward_id)).first()


def upsert(conn: Connection, rows: list[dict[str, Any]], now: datetime) -> None:
    """Insert or update rewards (`reward_id` and the FILE_COLUMNS); each becomes active, and
    an existing one keeps what it has issued."""
    if not rows:
        return
    ins = insert_for(conn, REWARDS)
    stmt = ins.on_conflict_do_update(
        index_elements=["reward_id"],
        set_={
            **{c: ins.excluded[c] for c in FILE_COLUMNS},
            "active": True,
            "updated_at": now,
        },
    )
    conn.execute(stmt, [{**row, "active": True, "issued": 0, "updated_at": now} for row in rows])


def withdraw(conn: Connection, reward_ids: list[str], now: datetime) -> None:
    """Mark these rewards withdrawn (inactive); their redemptions and `issued` stay."""
    if reward_ids:
        r = REWARDS.c
        conn.execute(
            update(REWARDS)
            .where(r.reward_id.in_(reward_ids), r.active.is_(True))
            .values(active=False, updated_at=now)
        )


def give_back(conn: Connection, reward_id: str) -> None:
    """Return one issued item to the stock (a reversed redemption)."""
    r = REWARDS.c
    conn.execute(
        update(REWARDS).where(r.reward_id == reward_id, r.issued > 0).values(issued=r.issued - 1)
    )


# --------------------------------------------------------------------------- redemptions

REDEMPTIONS = table_of(RedemptionRow)


def redemption(conn: Connection, key: str) -> Row[Any] | None:
    """The redemption with this key."""
    return conn.execute(select(REDEMPTIONS).where(REDEMPTIONS.c.key == key)).first()


def mark_reversed(conn: Connection, key: str, at: datetime, by: str | None) -> None:
    conn.execute(
        update(REDEMPTIONS)
        .where(REDEMPTIONS.c.key == key)
        .values(status=REVERSED, reversed_at=at, reversed_by=by)
    )
