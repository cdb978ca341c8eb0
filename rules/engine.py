"""The rule engine interface, and the durable_rules implementation crmflow ships.

How durable_rules is used, and why (each trap measured, see shared/DESIGN.md):
- facts, not events: `assert_fact` reaches every matching rule (`post` reaches only one);
- one fixed session id per ruleset, each fact retracted right after it is asserted, so no
  per-customer state lives in the engine (the 1,025th live sid raises MemoryError) and
  half-matched facts never pile up;
- "no rule matched" (`MessageNotHandledException`) is the normal case;
- a registered ruleset can be neither replaced nor removed: every rules version gets its own
  ruleset names (the content hash), so a new version loads beside the old one, no restart;
- the host is not thread-safe: every call goes through one lock, and the host's own
  background dispatch threads are not started (see `_SynchronousHost`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Protocol

from durable import engine as dr_engine

from rules.compiler import CompiledPack


class RuleEngine(Protocol):
    def load(self, pack: CompiledPack) -> None:
        """Make `pack` ready to evaluate (idempotent)."""

    def fired(self, pack: CompiledPack, facts: dict[str, Any]) -> set[int]:
        """The indexes of every rule of `pack` whose condition holds for `facts`."""


class _SynchronousHost(dr_engine.Host):
    """A durable_rules host without its background dispatch threads.

    The stock host starts timer threads that call into every ruleset five times a second,
    outside any lock of ours (and a new thread each time). crmflow uses no timers or queued
    actions: every action runs inside `assert_fact`, under our lock, so they are not needed.
    """

    def _run(self) -> None:
        return None


class DurableRulesEngine:
    """Evaluates facts against compiled packs inside durable_rules' C engine."""

    _SID = "crmflow"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host = _SynchronousHost()
        self._loaded: set[str] = set()
        self._hits: list[int] = []
        self._counter = 0

    def load(self, pack: CompiledPack) -> None:
        with self._lock:
            if pack.version in self._loaded:
                return
            definitions: dict[str, Any] = {}
            for name, rules in pack.rulesets.items():
                definitions[name] = {
                    f"r{r.index}": {"all": [{"m": r.expression}], "run": self._callback(r.index)}
                    for r in rules
                }
            # A ruleset with no rules cannot be registered; an empty pack fires nothing.
            definitions = {k: v for k, v in definitions.items() if v}
            if definitions:
                self._host.set_rulesets(definitions)
            self._loaded.add(pack.version)

    def _callback(self, index: int) -> Any:
        def run(_c: Any) -> None:
            self._hits.append(index)

        return run

    def fired(self, pack: CompiledPack, facts: dict[str, Any]) -> set[int]:
        if pack.version not in self._loaded:
            self.load(pack)
        message = pack.message(facts)
        with self._lock:
            hits: list[int] = []
            self._hits = hits
            for name, rules in pack.rulesets.items():
                if not rules:
                    continue
                self._counter += 1
                fact = {**message, "sid": self._SID, "id": f"x{self._counter}"}
                # "nothing matched" is raised as an exception; it is the normal case
                with contextlib.suppress(dr_engine.MessageNotHandledException):
                    self._host.assert_fact(name, fact)
                self._host.retract_fact(name, fact)
            return set(hits)


_shared: DurableRulesEngine | None = None
_shared_lock = threading.Lock()


def shared_engine() -> DurableRulesEngine:
    """The process's engine: durable_rules has one host per process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DurableRulesEngine()
        return _shared
