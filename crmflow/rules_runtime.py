"""What running events through the rules keeps between chunks: one object per database.

Evaluating a chunk reuses four things that are costly to build and safe to keep: the
compiled rules versions (by content hash), the index of which journeys listen to which
event types (rebuilt when deployments change), the customers' rule states (`StateCache`)
and a durable_rules engine with the versions' rulesets registered. They used to be module
globals; now a `RulesRuntime` holds them, and each holds them for one database engine.

Each face makes its engine in its entry point (`crmflow.services.runtime.Runtime` for the
CLI and the API, `worker.py` for a worker, an import worker process for its share of a
file, the simulator for its throwaway database), and the engine's runtime comes with it:
`rules_runtime(engine)` makes it on first use, and the processing code finds it through
`conn.engine`. So two databases in one process (the API's and an in-process simulation's
throwaway SQLite file) never share a cached state or a compiled version by accident, while
the API's request threads, which share one engine, share one runtime on purpose. `bind`
gives an engine a fresh one.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Engine

from crmflow.state_cache import DEFAULT_CAPACITY, StateCache
from journeys.models import Journey
from rules.compiler import CompiledPack
from rules.engine import DurableRulesEngine
from rules.pack import build_pack
from store import journeys as journey_store
from store.rule_versions import active_source


class RulesRuntime:
    """The compiled versions, the journeys' event-type index, the kept rule states and the
    rule engine of one database. Thread-safe: request threads and activity threads share it."""

    def __init__(self, *, state_capacity: int = DEFAULT_CAPACITY) -> None:
        self.rule_engine = DurableRulesEngine()
        self.states = StateCache(state_capacity)
        self._lock = threading.Lock()
        self._packs: dict[str, CompiledPack] = {}
        self._journey_types: tuple[Any, dict[str, list[str]]] = (None, {})

    def active_pack(self, conn: Connection) -> CompiledPack | None:
        """The deployed active rules version, compiled once per version."""
        found = active_source(conn)
        if found is None:
            return None
        version, source = found
        with self._lock:
            pack = self._packs.get(version)
        if pack is None:
            # compiled outside the lock: a slow compile must not hold up other threads; two
            # threads compiling one version at once keep the same result
            pack = build_pack(source)
            with self._lock:
                pack = self._packs.setdefault(version, pack)
        return pack

    def journey_event_types(self, conn: Connection) -> dict[str, list[str]]:
        """Event type -> the journeys that listen to it (entry, goal, exit, wait_for), over
        every deployed version (running enrollments keep theirs); archived journeys
        excluded. Recomputed only when the deployed versions or statuses change."""
        stamp = journey_store.deployment_stamp(conn)
        with self._lock:
            if self._journey_types[0] == stamp:
                return self._journey_types[1]
        found: dict[str, set[str]] = {}
        for name, definition in journey_store.listening_definitions(conn):
            for event_type in Journey.model_validate(definition).event_types():
                found.setdefault(event_type, set()).add(name)
        result = {t: sorted(names) for t, names in found.items()}
        with self._lock:
            self._journey_types = (stamp, result)
        return result


_bound: weakref.WeakKeyDictionary[Engine, RulesRuntime] = weakref.WeakKeyDictionary()
_bound_lock = threading.Lock()


def bind(engine: Engine, runtime: RulesRuntime | None = None) -> RulesRuntime:
    """Make `runtime` (a new one by default) the one every chunk on `engine` uses."""
    runtime = runtime or RulesRuntime()
    with _bound_lock:
        _bound[engine] = runtime
    return runtime


def rules_runtime(engine: Engine) -> RulesRuntime:
    """The runtime bound to `engine`; one of its own when none was bound."""
    with _bound_lock:
        runtime = _bound.get(engine)
        if runtime is None:
            runtime = _bound[engine] = RulesRuntime()
        return runtime
