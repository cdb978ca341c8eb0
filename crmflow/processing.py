"""Run events through the active rules and apply their effects, chunk by chunk.

For a chunk of events, in one database transaction: lock the chunk's customers (PostgreSQL),
load the state the rules need (set-based), then for each event in arrival order: fold it into
the state, build the facts, ask the engine which rules fire, apply their effects to the
in-memory state (so the next event of that customer sees them); then claim the events (set
their processed mark where it is not set yet) and write every change. All of it commits or
none of it does. A chunk that finds an event already claimed by someone else — or, on
SQLite, whose customers another writer changed after their state was read — is rolled back
(`ConcurrentProcessing`), so an event is never applied twice nor on a stale state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from crmflow.metrics import record_processed
from crmflow.rules_runtime import rules_runtime
from crmflow.state_cache import new_state_version, prune
from rules.compiler import CompiledPack, CompiledRule
from rules.effects import Outcome, apply_rules, plan_refund
from rules.engine import RuleEngine
from rules.facts import EventFacts, ProfileState, build_facts, record_event
from rules.models import Rule
from store.db import utcnow
from store.models import CustomerRow, EventRow
from store.rule_state import ChunkWriter, load_orders, load_states
from store.sql import table_of, where_in

HISTORY_DAYS = 366  # the longest window a fact looks back over, plus a day
RACE_RETRIES = 3  # chunks in a row that may lose a race with another writer


Claim = Callable[[Connection, list[str], datetime], int]


class ConcurrentProcessing(RuntimeError):
    """Another process marked some of these events processed first (or changed these
    customers meanwhile); the chunk was undone. Trying it again is safe."""


class StaleState(ConcurrentProcessing):
    """Another writer changed a chunk's customers between loading their state and writing."""


@dataclass
class ProcessReport:
    events: int = 0
    rules_fired: int = 0
    changes: int = 0
    version: str | None = None
    fired_by_rule: dict[str, int] = field(default_factory=dict)

    def add(self, other: ProcessReport) -> None:
        self.events += other.events
        self.rules_fired += other.rules_fired
        self.changes += other.changes
        self.version = other.version or self.version
        for k, v in other.fired_by_rule.items():
            self.fired_by_rule[k] = self.fired_by_rule.get(k, 0) + v


def active_pack(conn: Connection) -> CompiledPack | None:
    """The deployed active rules version, compiled once per version by the database's
    rules runtime (`crmflow.rules_runtime`)."""
    return rules_runtime(conn.engine).active_pack(conn)


def evaluate_event(
    pack: CompiledPack,
    engine: RuleEngine,
    state: ProfileState,
    event: EventFacts,
    *,
    explain: bool = False,
) -> tuple[dict[str, Any], Outcome]:
    """One event through the rules: facts, fired rules (in order), effects applied to state.
    A refund first claws back its order's points (`plan_refund`); the rules then see the
    state after it, and its change comes first in the outcome."""
    record_event(state, event, pack.program)
    refund = plan_refund(pack.program, state, event)
    # explanations show every fact; evaluation computes only the ones the rules read
    facts = build_facts(state, event, pack.program, None if explain else pack.needed_facts)
    fired = pack.ordered(engine.fired(pack, facts))
    # effects update `facts` as they apply (tier, stage, owner); keep the facts the rules saw
    seen = dict(facts) if explain else facts
    outcome = apply_rules(pack, fired, state, event, facts)
    if refund:
        outcome.changes[:0] = refund
    return seen, outcome


def process_chunk(
    conn: Connection,
    pack: CompiledPack,
    events: list[dict[str, Any]],
    engine: RuleEngine | None = None,
    *,
    claim: Claim | None = None,
) -> ProcessReport:
    """Apply the rules to `events` (dicts with event_id, customer_id, type, occurred_at,
    properties) inside the caller's transaction, and mark them processed.

    `claim(conn, event_ids, now)` marks the events and returns how many it marked; by
    default `mark_processed` (stored events not marked yet). An import passes one that
    stores the new events already marked."""
    report = ProcessReport(version=pack.version)
    if not events:
        return report
    runtime = rules_runtime(conn.engine)
    engine = engine or runtime.rule_engine
    # Arrival order, not time order: the result must not depend on where chunks are cut.
    ordered = list(events)
    since = min(e["occurred_at"] for e in ordered) - timedelta(days=HISTORY_DAYS)
    program = pack.program
    customer_ids = sorted({e["customer_id"] for e in ordered})
    versions = lock_customers(conn, customer_ids)
    cache = runtime.states
    key = state_key(pack)
    states = cache.take(key, versions)
    for state in states.values():
        prune(state, since)
    missing = [cid for cid in customer_ids if cid not in states]
    if missing:
        states.update(
            load_states(
                conn,
                missing,
                since,
                purchase_event=program.purchase_event,
                spend_property=program.spend_property,
                follow_up_event=program.follow_up_event,
            )
        )
    load_orders(conn, states, ordered, program)
    now = utcnow()
    writer = ChunkWriter(rules_version=pack.version, now=now)
    journeys = runtime.journey_event_types(conn)
    for e in ordered:
        state = states[e["customer_id"]]
        event = EventFacts(e["event_id"], e["type"], e["occurred_at"], e.get("properties") or {})
        _, outcome = evaluate_event(pack, engine, state, event)
        report.rules_fired += len(outcome.fired)
        report.changes += sum(1 for c in outcome.changes if not c.skipped)
        for name in outcome.fired:
            report.fired_by_rule[name] = report.fired_by_rule.get(name, 0) + 1
        writer.add(e["customer_id"], e["event_id"], e["occurred_at"], outcome.changes)
        if e["type"] == UNSUBSCRIBED:
            writer.revoke_consent(
                e["customer_id"], e["event_id"], e["occurred_at"], revoke_consent(state, event)
            )
        for name in journeys.get(e["type"], ()):
            writer.journey_event(e["customer_id"], name, e)
    # Evaluated in memory; now claim the events: the mark is only set where none is set, so
    # an event another process got to first shows up here, and the whole chunk is undone.
    # On SQLite this is the transaction's first write (the rules were evaluated without
    # holding the database's one write lock, so another importer can evaluate meanwhile).
    marked = (claim or mark_processed)(conn, [e["event_id"] for e in ordered], now)
    if marked != len(ordered):
        raise ConcurrentProcessing(
            f"{len(ordered) - marked} of {len(ordered)} events were processed meanwhile"
        )
    check_not_stale(conn, versions)
    writer.write(conn, states)
    version = new_state_version()
    bump_state_versions(conn, customer_ids, version)
    # Kept for the next chunk; if this transaction does not commit, the stored versions stay
    # as they were and these entries never match.
    cache.put(key, states, version)
    report.events = len(ordered)
    return report


UNSUBSCRIBED = "unsubscribed"


def revoke_consent(state: ProfileState, event: EventFacts) -> list[str]:
    """An `unsubscribed` event turns consent off at once: for its `channel`, or for every
    channel when it names none. Returns the channels revoked."""
    channel = event.properties.get("channel")
    channels = [channel] if isinstance(channel, str) and channel else sorted(state.consent)
    for ch in channels:
        state.consent[ch] = False
    return channels


def revoke_consents(conn: Connection, events: list[dict[str, Any]], now: datetime) -> None:
    """Unsubscribes stored while no rules version is deployed: consent off all the same."""
    for e in events:
        cid = e["customer_id"]
        states = load_states(
            conn, [cid], e["occurred_at"], purchase_event="", spend_property="", follow_up_event=""
        )
        if cid not in states:
            continue
        state = states[cid]
        event = EventFacts(e["event_id"], e["type"], e["occurred_at"], e.get("properties") or {})
        writer = ChunkWriter(rules_version=None, now=now)
        writer.revoke_consent(cid, e["event_id"], e["occurred_at"], revoke_consent(state, event))
        writer.write(conn, states)
        bump_state_versions(conn, [cid], new_state_version())


def state_key(pack: CompiledPack) -> tuple[str, ...]:
    """What kept rule states depend on: the rules version and the events the history reads."""
    p = pack.program
    return (
        pack.version,
        p.purchase_event,
        p.spend_property,
        p.follow_up_event,
        p.refund_event,
        p.order_property,
    )


def lock_customers(conn: Connection, customer_ids: list[str]) -> dict[str, int]:
    """The customers' state versions; on PostgreSQL also row locks that serialise chunks
    touching the same customers (taken in id order, so two chunks cannot deadlock). The
    locks are `FOR NO KEY UPDATE`: a transaction that only stores events for these
    customers (their foreign keys take `KEY SHARE`, an asynchronous accept) neither waits
    for a chunk nor deadlocks with it. SQLite has one writer at a time already."""
    c = table_of(CustomerRow).c
    versions: dict[str, int] = {}
    for where in where_in(conn, c.customer_id, customer_ids):
        stmt = select(c.customer_id, c.state_version).where(where)
        if conn.dialect.name == "postgresql":
            stmt = stmt.order_by(c.customer_id).with_for_update(key_share=True)
        versions.update((cid, int(v)) for cid, v in conn.execute(stmt))
    return versions


def check_not_stale(conn: Connection, versions: dict[str, int]) -> None:
    """On SQLite, after the transaction's first write (which takes the database's write
    lock): raise `StaleState` when another writer changed any of these customers since
    `versions` were read with their state. (PostgreSQL locked them before reading.)"""
    if conn.dialect.name == "postgresql" or not versions:
        return
    now = lock_customers(conn, sorted(versions))
    changed = sorted(cid for cid, v in versions.items() if now.get(cid) != v)
    if changed:
        raise StaleState(
            f"{len(changed)} of {len(versions)} customers were changed meanwhile "
            f"(first {changed[0]!r})"
        )


def bump_state_versions(conn: Connection, customer_ids: list[str], version: int) -> None:
    t = table_of(CustomerRow)
    for where in where_in(conn, t.c.customer_id, customer_ids):
        conn.execute(update(t).where(where).values(state_version=version))


def mark_processed(conn: Connection, event_ids: list[str], now: datetime) -> int:
    t = table_of(EventRow)
    marked = 0
    for where in where_in(conn, t.c.event_id, event_ids):
        result = conn.execute(
            update(t).where(where, t.c.processed_at.is_(None)).values(processed_at=now)
        )
        marked += result.rowcount
    return marked


def process_pending(engine: Engine, chunk_size: int = 5000) -> ProcessReport:
    """Process every stored event not processed yet, oldest first, one chunk per transaction."""
    total = ProcessReport()
    e = EventRow
    raced = 0
    while True:
        try:
            with engine.begin() as conn:
                pack = active_pack(conn)
                if pack is None:
                    return total
                rows = conn.execute(
                    select(e.event_id, e.customer_id, e.type, e.occurred_at, e.properties)
                    .where(e.processed_at.is_(None))
                    .order_by(e.id)
                    .limit(chunk_size)
                ).all()
                if not rows:
                    return total
                done = process_chunk(conn, pack, [dict(r._mapping) for r in rows])
            total.add(done)
            record_processed(done.events, done.rules_fired)  # after the commit
            raced = 0
        except ConcurrentProcessing:
            # another writer got there first: the next look-up sees what it did
            raced += 1
            if raced == RACE_RETRIES:
                raise


def apply_effects(
    conn: Connection,
    pack: CompiledPack,
    customer_id: str,
    rule: Rule,
    key: str,
    at: datetime,
) -> Outcome:
    """Apply `rule`'s effects to one customer outside an event (a journey's update node),
    with the same planning, audit trail and writes as the rules. `key` stands in for the
    event id: it keys the lots and ledger entries, so the caller must apply a key once."""
    versions = lock_customers(conn, [customer_id])
    if customer_id not in versions:
        raise KeyError(f"no customer {customer_id!r}")
    program = pack.program
    cache = rules_runtime(conn.engine).states
    states = cache.take(state_key(pack), versions)
    since = at - timedelta(days=HISTORY_DAYS)
    if customer_id in states:
        prune(states[customer_id], since)
    else:
        states = load_states(
            conn,
            [customer_id],
            since,
            purchase_event=program.purchase_event,
            spend_property=program.spend_property,
            follow_up_event=program.follow_up_event,
        )
    state = states[customer_id]
    event = EventFacts(key, "journey_update", at, {})
    facts = build_facts(state, event, program, None)
    compiled = CompiledRule(index=0, rule=rule, file="journey", facts=[], expression={})
    outcome = apply_rules(pack, [compiled], state, event, facts)
    writer = ChunkWriter(rules_version=pack.version, now=utcnow())
    writer.add(customer_id, key, at, outcome.changes)
    writer.write(conn, states)
    check_not_stale(conn, versions)
    bump_state_versions(conn, [customer_id], new_state_version())
    return outcome


def evaluate_facts(
    conn: Connection, pack: CompiledPack, customer_id: str, at: datetime
) -> dict[str, Any]:
    """A customer's facts at `at` as the rules build them (no event), JSON-safe: what a
    journey's branch and conditions test."""
    program = pack.program
    states = load_states(
        conn,
        [customer_id],
        at - timedelta(days=HISTORY_DAYS),
        purchase_event=program.purchase_event,
        spend_property=program.spend_property,
        follow_up_event=program.follow_up_event,
    )
    if customer_id not in states:
        return {}
    state = states[customer_id]
    state.purchases = [p for p in state.purchases if p[0] <= at]
    facts = build_facts(state, EventFacts("", "", at, {}), program, None)
    del facts["event.type"]
    return {k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in facts.items()}
