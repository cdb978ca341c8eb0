"""The KPI snapshot: its SQL on both databases, and the workflow on the time-skipping server."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.store_activities import StoreActivities
from crmflow.contracts.kpi import KpiRequest
from crmflow.ingest import import_file
from store.kpi import kpi_snapshot
from tests.conftest import write_lines
from workflows.kpi_snapshot import KpiSnapshotWorkflow


def seed(engine: Engine, tmp_path: Path) -> None:
    customers = [
        {"customer_id": "A", "lifecycle_stage": "member", "consent": {"email": True, "sms": True}},
        {"customer_id": "B", "lifecycle_stage": "member", "consent": {"email": True}},
        {"customer_id": "C", "lifecycle_stage": "lead", "consent": {"email": False}},
    ]
    events = [
        ("1", "A", "purchase", "2026-11-01T10:00:00Z", 100.0),
        ("2", "A", "purchase", "2026-11-10T10:00:00Z", 50.5),
        ("3", "B", "purchase", "2026-11-12T10:00:00Z", 20.0),
        ("4", "B", "sign_in", "2026-11-12T09:00:00Z", None),
        ("5", "C", "purchase", "2026-01-01T10:00:00Z", 999.0),  # outside a 30-day window
        ("6", "C", "purchase", "2026-11-22T10:00:00Z", 1.0),  # after as_of
    ]
    write_lines(tmp_path / "c.jsonl", [json.dumps(c) for c in customers])
    write_lines(
        tmp_path / "e.jsonl",
        [
            json.dumps(
                {
                    "event_id": i,
                    "customer_id": c,
                    "type": t,
                    "occurred_at": at,
                    "properties": {} if amt is None else {"amount": amt},
                }
            )
            for i, c, t, at, amt in events
        ],
    )
    import_file(engine, tmp_path / "c.jsonl", "customers")
    import_file(engine, tmp_path / "e.jsonl", "events")


def test_kpi_figures(engine: Engine, tmp_path: Path) -> None:
    seed(engine, tmp_path)
    with engine.connect() as conn:
        snap = kpi_snapshot(conn, KpiRequest(as_of=datetime(2026, 11, 20, tzinfo=UTC)))
    assert snap.customers == 3
    assert snap.by_stage == {"member": 2, "lead": 1}
    assert snap.consent == {"email": 2, "sms": 1}
    assert snap.events == 6
    assert snap.events_by_type == {"purchase": 5, "sign_in": 1}
    assert snap.active_customers == 2
    assert (snap.buyers, snap.repeat_buyers) == (2, 1)
    assert snap.repurchase_rate == 0.5
    assert snap.revenue == 170.5


async def test_workflow_runs_the_activity_against_the_store(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    seed(engine, tmp_path)
    queue = f"kpi-{uuid.uuid4()}"
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            ts_env.client,
            task_queue=queue,
            workflows=[KpiSnapshotWorkflow],
            activities=StoreActivities(engine).all(),
            activity_executor=pool,
        ):
            snap = await ts_env.client.execute_workflow(
                KpiSnapshotWorkflow.run,
                3650,
                id=f"kpi-{uuid.uuid4()}",
                task_queue=queue,
                execution_timeout=timedelta(minutes=2),
            )
    # as_of is the workflow's own clock; the figures are the store's at that moment
    assert snap.window_days == 3650
    assert snap.customers == 3
    with engine.connect() as conn:
        assert snap == kpi_snapshot(conn, KpiRequest(as_of=snap.as_of, window_days=3650))
