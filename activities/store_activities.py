"""Activities that read and write the store. Idempotent: safe to retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from temporalio import activity

from crmflow.contracts.kpi import KPI_SNAPSHOT, KpiRequest, KpiSnapshot
from store import kpi


class StoreActivities:
    """Activities bound to one engine (one pool per worker process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @activity.defn(name=KPI_SNAPSHOT)
    def kpi_snapshot(self, req: KpiRequest) -> KpiSnapshot:
        with self.engine.connect() as conn:
            return kpi.kpi_snapshot(conn, req)

    def all(self) -> list[Callable[..., Any]]:
        return [self.kpi_snapshot]
