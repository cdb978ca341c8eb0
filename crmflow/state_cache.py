"""A cache of the rules' view of customers, kept across chunks (one per database: its
`crmflow.rules_runtime.RulesRuntime` holds it).

Loading a customer's rule state (profile, tags, open lots, a year of purchases and
earnings) costs more than evaluating the rules on one event, and consecutive chunks of an
import mostly touch the same customers. The cache keeps each state after its chunk is
written, tagged with the `customers.state_version` the chunk wrote; a later chunk reuses it
only when the stored version is still that one. Every other writer of what the rules read
bumps the version (customer import, automations), so their changes force a reload.

The version a chunk writes is a fresh random number, not a counter: a chunk whose
transaction rolls back leaves the old value in the store, which can then never match the
cached entry (a counter could be reached again by another writer — the ABA problem).
States are taken out of the cache while a chunk works on them and put back only after its
writes, so two threads never share one state object, and a failed chunk leaves nothing.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from datetime import datetime

from rules.facts import ProfileState

DEFAULT_CAPACITY = 200_000  # customers; a state is a few KB at most


def new_state_version() -> int:
    """A fresh version value (63-bit, positive; fits PostgreSQL's BIGINT)."""
    return secrets.randbits(62) + 1


class StateCache:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._key: tuple[str, ...] | None = None
        self._entries: OrderedDict[str, tuple[int, ProfileState]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def take(self, key: tuple[str, ...], versions: dict[str, int]) -> dict[str, ProfileState]:
        """Remove and return the cached states whose stored version is still `versions`'.

        `key` names what the states were built for (rules version and the programme's event
        names); a different key empties the cache."""
        found: dict[str, ProfileState] = {}
        with self._lock:
            if key != self._key:
                self._entries.clear()
                self._key = key
            for cid, version in versions.items():
                entry = self._entries.pop(cid, None)
                if entry is not None and entry[0] == version:
                    found[cid] = entry[1]
            self.hits += len(found)
            self.misses += len(versions) - len(found)
        return found

    def put(self, key: tuple[str, ...], states: dict[str, ProfileState], version: int) -> None:
        with self._lock:
            if key != self._key:
                return
            for cid, state in states.items():
                self._entries[cid] = (version, state)
                self._entries.move_to_end(cid)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def prune(state: ProfileState, since: datetime) -> None:
    """Drop what a fresh load from `since` on would not read: old history, spent lots."""
    if state.purchases and state.purchases[0][0] <= since:
        state.purchases = [p for p in state.purchases if p[0] > since]
    if state.earnings and min(t for t, _ in state.earnings) <= since:
        state.earnings = [e for e in state.earnings if e[0] > since]
    if any(lot.remaining <= 0 for lot in state.lots):
        state.lots = [lot for lot in state.lots if lot.remaining > 0]
    if state.refunds:
        state.refunds = [r for r in state.refunds if r[0] > since]
    if state.credits:
        state.credits = [c for c in state.credits if c[0] > since]
    # orders are loaded for the refunds of a chunk, never kept: a fresh load has none
    state.orders.clear()
