"""The runtime a face builds once in its entry point and hands to every service.

It holds what used to be process-global: the settings, the database engine, the rules
runtime of that engine (compiled rules versions, the journeys' event-type index, kept rule
states, the rule engine: `crmflow.rules_runtime`) and a Temporal client made on first use.
Two runtimes (an API server and an in-process simulator on a throwaway database) share
nothing by accident.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from crmflow.rules_runtime import RulesRuntime, rules_runtime
from crmflow.services.errors import Unavailable
from crmflow.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client


@dataclass
class Runtime:
    """Settings, an engine on a migrated database, and a Temporal client on demand."""

    settings: Settings
    engine: Engine
    rules: RulesRuntime = field(init=False, repr=False)
    _client: Client | None = field(default=None, repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # the engine's own: every chunk processed on this database, from any thread (and
        # any other Runtime on the same engine), uses this one
        self.rules = rules_runtime(self.engine)

    async def temporal(self) -> Client:
        """The Temporal client, connected on first use; `Unavailable` when it cannot be."""
        from crmflow.temporal import TemporalSetupError, connect

        if self._client is not None:
            return self._client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await connect(self.settings)
                except TemporalSetupError as exc:
                    hint = " (start it with `crmflow up`)" if self.settings.embedded else ""
                    raise Unavailable(f"{exc}{hint}") from exc
        return self._client

    def close(self) -> None:
        self.engine.dispose()
