"""The rule engine interface, and the durable_rules implementation crmflow ships.

How durable_rules is used, and why (each trap measured, see shared/DESIGN.md):
- facts, not events: `assert_fact` reaches every matching rule (`post` reaches only one);
- one fixed session id per ruleset, each fact retracted right after it is asserted, so no
  per-customer state lives in the engine (the 1,025th live sid raises MemoryError) and
  half-matched facts never pile up;
- "no rule matched" (result code 1, `MessageNotHandledException` in the Python host) is the
  normal case;
- a registered ruleset can be neither replaced nor removed: every rules version gets its own
  ruleset names (the content hash), so a new version loads beside the old one, no restart;
- the engine is not thread-safe: every call goes through one lock, and the host's own
  background dispatch threads are not started (see `_SynchronousHost`).

Rulesets are registered through durable_rules' Python `Host` (which parses the definitions
into the C engine), but facts are evaluated by driving the C engine (`durable_rules_engine`)
directly with the calls the host makes — assert, then start / update / complete each action
of the fact's state, then retract — minus the host's per-action Python machinery (closures,
promises, a JSON parse of every action's message and state). The fact is serialised once
for the assert and the retract. Same engine, same matches (a test checks it against the
host's own path); about four times less time per event.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol

import durable_rules_engine as dr_c
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
    actions: every action runs inside the assert, under our lock, so they are not needed.
    """

    def _run(self) -> None:
        return None


# durable_rules' result codes for assert / retract (durable.engine.Ruleset._handle_result)
_HANDLED, _NOT_HANDLED, _OBSERVED, _NO_STATE = 0, 1, 2, 3

# the message is flat: short keys, numbers and plain strings
_dumps = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":")).encode


def _action_name(message: str) -> str:
    """The action a started-action message is for: its only key (`{"r3": {...}}`)."""
    if not message.startswith('{"'):
        return str(next(iter(json.loads(message))))
    return message[2 : message.index('"', 2)]


class DurableRulesEngine:
    """Evaluates facts against compiled packs inside durable_rules' C engine."""

    _SID = "crmflow"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host = _SynchronousHost()
        self._loaded: set[str] = set()
        # ruleset name -> (C handle, action name -> rule index)
        self._rulesets: dict[str, tuple[int, dict[str, int]]] = {}
        self._counter = 0

    def load(self, pack: CompiledPack) -> None:
        with self._lock:
            if pack.version in self._loaded:
                return
            definitions: dict[str, Any] = {}
            for name, rules in pack.rulesets.items():
                definitions[name] = {
                    f"r{r.index}": {"all": [{"m": r.expression}], "run": _no_action} for r in rules
                }
            # A ruleset with no rules cannot be registered; an empty pack fires nothing.
            definitions = {k: v for k, v in definitions.items() if v}
            if definitions:
                self._host.set_rulesets(definitions)
            for name in definitions:
                handle = self._host.get_ruleset(name)._handle
                actions = {f"r{r.index}": r.index for r in pack.rulesets[name]}
                self._rulesets[name] = (handle, actions)
            self._loaded.add(pack.version)

    def fired(self, pack: CompiledPack, facts: dict[str, Any]) -> set[int]:
        return self.fired_message(pack, pack.message(facts))

    def fired_message(self, pack: CompiledPack, message: dict[str, Any]) -> set[int]:
        """`fired` for a message `pack.message` built already (changed in place: sid, id)."""
        if pack.version not in self._loaded:
            self.load(pack)
        message["sid"] = self._SID
        hits: set[int] = set()
        with self._lock:
            for name in pack.rulesets:
                found = self._rulesets.get(name)
                if found is None:  # no rules in it
                    continue
                handle, actions = found
                self._counter += 1
                message["id"] = f"x{self._counter}"
                text = _dumps(message)
                self._run_actions(handle, dr_c.assert_fact(handle, text), actions, hits)
                self._run_actions(handle, dr_c.retract_fact(handle, text), actions, hits)
        return hits

    @staticmethod
    def _run_actions(
        handle: int, result: tuple[int, int], actions: dict[str, int], hits: set[int]
    ) -> None:
        """Run the actions the engine started for an assert's (or retract's) state: each one
        a matched rule. As `durable.engine.Ruleset.do_actions` does, without the closures."""
        code = result[0]
        if code == _NOT_HANDLED:
            return
        if code == _OBSERVED:
            raise dr_engine.MessageObservedException(result)
        state = 0 if code == _NO_STATE else result[1]
        started = dr_c.start_action_for_state(handle, state)
        if not started:
            return
        state_text, message = started[0], started[1]
        while message:
            hits.add(actions[_action_name(message)])
            dr_c.update_state(handle, state_text)
            message = dr_c.complete_and_start_action(handle, state)


def _no_action(_closure: Any) -> None:
    """Rulesets need an action per rule; evaluation reads which actions started instead."""
