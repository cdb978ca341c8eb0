"""`crmflow project …` against the dev server, with a worker of this test's own.

The commands run in process through typer's CliRunner, in a thread: each command runs its
own event loop (asyncio.run) while the test's loop keeps the worker polling.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner, Result

from activities.project_activities import ProjectActivities
from crmflow.cli import app
from store.models import CustomerRow
from tests.conftest import REPO
from tests.test_services_projects import clean_export
from workflows.project import ProjectWorkflow

pytestmark = pytest.mark.devserver
runner = CliRunner()
ROLLOUT = REPO / "examples/rollout"


@pytest.fixture
async def served(
    dev_env: WorkflowEnvironment, engine: Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Path]:
    """CLI settings pointing at the dev server and a task queue this test's worker polls."""
    queue = f"cli-projects-{uuid.uuid4()}"
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", queue)
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[ProjectWorkflow],
            activities=ProjectActivities(engine).all(),
            activity_executor=pool,
        ):
            yield cli_env


async def crmflow(*args: str) -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args))


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def refused(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


async def create(name: str, *extra: str) -> dict[str, Any]:
    monday = datetime.now(UTC).date() - timedelta(days=datetime.now(UTC).weekday())
    result = ok(
        await crmflow(
            "project",
            "create",
            str(ROLLOUT / "crm-rollout.yaml"),
            "--name",
            name,
            "--start",
            str(monday),
            "--team",
            str(ROLLOUT / "team.yaml"),
            "--holidays",
            str(ROLLOUT / "holidays.yaml"),
            *extra,
        )
    )
    return dict(json.loads(result.stdout)) if "--json" in extra else {"output": result.output}


async def test_create_status_check_and_a_refused_signoff(served: Path, engine: Engine) -> None:
    name = f"Acme CRM {uuid.uuid4().hex[:6]}"
    slug = name.lower().replace(" ", "-")
    created = await create(name)
    out = created["output"]
    assert f"started as workflow project-{slug}" in " ".join(out.split())
    assert "critical path requirements → vendor-selection" in " ".join(out.split())
    assert "Requirements" in out and "Go-live" in out  # the plan and milestone tables

    status = json.loads(ok(await crmflow("project", "status", name, "--json")).stdout)
    assert status["project_id"] == slug and status["workflow_id"] == f"project-{slug}"
    assert [s["id"] for s in status["stages"]][:2] == ["requirements", "vendor-selection"]
    assert "data-migration" in [s["id"] for s in status["stages"]]  # legacy_system defaults on
    assert status["health"]["status"] in ("green", "amber", "red")
    assert status["due_next"] and status["kpi_review"] is None

    said = ok(
        await crmflow("project", "check", name, "stakeholder-interviews", "--as", "Lily Zhao")
    )
    assert "checked stakeholder-interviews (Lily Zhao)" in said.output
    status = json.loads(ok(await crmflow("project", "status", name, "--json")).stdout)
    req = next(s for s in status["stages"] if s["id"] == "requirements")
    assert req["items_done"] == 1 and req["actual_start"] is not None

    # a sign-off by someone without a role the gate needs: the validator's reason, exit 1
    text = refused(
        await crmflow("project", "signoff", name, "requirements-approval", "--as", "Ivan Sun")
    )
    assert "refused: Ivan Sun holds it_lead; gate 'Requirements approval' needs" in text
    assert "executive_sponsor" in text and "business_owner" in text
    # the right role, but the required items are still open
    text = refused(
        await crmflow("project", "signoff", name, "requirements-approval", "--as", "Grace Chen")
    )
    assert "required checklist items are still open" in text
    text = refused(
        await crmflow("project", "check", name, "stakeholder-interviews", "--as", "Marco Liu")
    )
    assert "already checked by Lily Zhao" in text
    # what issue 17 found accepted: go-live before testing, an it_lead on a business_owner
    # item of a later stage, a later stage started beside the one it waits for
    text = refused(await crmflow("project", "done", name, "go-live", "--as", "Peter Wang"))
    assert "refused: milestone 'Go-live (pilot)' cannot be done yet" in text
    assert "Testing & UAT" in text and "Go-live approval" in text
    text = refused(await crmflow("project", "check", name, "demos", "--as", "Ivan Sun"))
    assert "Ivan Sun holds it_lead; item 'Scripted demos scored' is checked by its" in text
    text = refused(await crmflow("project", "check", name, "demos", "--as", "Lily Zhao"))
    assert "would start stage 'Vendor selection', which waits for" in text
    said = ok(
        await crmflow(
            "project", "start", name, "planning", "--as", "Peter Wang",
            "--override", "the team is available now",
        )
    )  # fmt: skip
    assert "override (dependencies still open): the team is available now" in " ".join(
        said.output.split()
    )

    ok(await crmflow("project", "done", name, "kick-off", "--as", "Peter Wang"))
    added = ok(
        await crmflow(
            "project", "risk", "add", name, "--title", "Data quality", "--owner", "Ivan Sun",
            "--probability", "high", "--impact", "high", "--as", "Peter Wang",
        )
    )  # fmt: skip
    assert "risk R1 added (critical)" in added.output
    table = ok(await crmflow("project", "status", name)).output
    assert "RED" in table and "open critical risk R1" in table
    text = refused(await crmflow("project", "risk", "close", name, "R1", "--as", "Peter Wang"))
    assert "closing it needs a reason" in text
    text = refused(
        await crmflow("project", "risk", "close", name, "R1", "--as", "Lily Zhao", "--reason", "ok")
    )
    assert "closed by its owner (Ivan Sun) or the project manager" in text
    ok(
        await crmflow(
            "project", "risk", "close", name, "R1", "--as", "Ivan Sun",
            "--reason", "legacy data cleaned",
        )
    )  # fmt: skip
    said = ok(await crmflow("project", "rebaseline", name, "--as", "Peter Wang", "--reason", "x"))
    assert "baseline 2 taken" in said.output

    listed = json.loads(ok(await crmflow("project", "list", "--json")).stdout)
    mine = [p for p in listed if p["workflow_id"] == f"project-{slug}"]
    assert mine and mine[0]["name"] == name and mine[0]["workflow_status"] == "running"
    assert mine[0]["health"] in ("green", "amber", "red")

    text = refused(await crmflow("project", "create", *_create_args(name)))
    assert "exists already" in text
    text = refused(await crmflow("project", "status", "no such project"))
    assert "no project named 'no such project'" in text


def _create_args(name: str) -> list[str]:
    return [
        str(ROLLOUT / "crm-rollout.yaml"),
        "--name",
        name,
        "--start",
        "2025-03-03",
        "--team",
        str(ROLLOUT / "team.yaml"),
    ]


async def test_create_refuses_bad_input_before_starting_anything(served: Path) -> None:
    bad_team = served / "team.yaml"
    bad_team.write_text("people:\n  - {name: A, email: a@example.com, roles: [it_lead]}\n")
    args = _create_args("x")
    args[args.index("--team") + 1] = str(bad_team)
    text = refused(await crmflow("project", "create", *args))
    assert "nobody holds project_manager or executive_sponsor" in text
    text = refused(await crmflow("project", "create", *_create_args("x"), "--param", "legacy=true"))
    assert "unknown parameter 'legacy'" in text
    args = _create_args("x")
    args[args.index("--start") + 1] = "2025-02-30"
    text = refused(await crmflow("project", "create", *args))
    assert "--start '2025-02-30' is not a date" in text


async def test_gantt_and_migrate_check(served: Path, engine: Engine) -> None:
    name = f"Migr {uuid.uuid4().hex[:6]}"
    await create(name, "--param", "legacy_system=true", "--json")

    svg, html = served / "plan.svg", served / "plan.html"
    ok(await crmflow("project", "gantt", name, "--out", str(svg)))
    assert svg.read_text().lstrip().startswith("<svg") and "Data migration" in svg.read_text()
    ok(await crmflow("project", "gantt", name, "--out", str(html)))
    assert "<html" in html.read_text()
    assert refused(await crmflow("project", "gantt", name, "--out", str(served / "x.png")))

    # the example legacy data fails the template's thresholds: reported, recorded, exit 1
    report = served / "migration.html"
    result = await crmflow(
        "project", "migrate-check", name, "--source", str(ROLLOUT / "legacy.csv"),
        "--mapping", str(ROLLOUT / "mapping.yaml"), "--html", str(report), "--import",
    )  # fmt: skip
    text = refused(result)
    assert "FAIL" in text and "duplicate rate is 8.3%, above 2.0%" in text
    assert "not imported" in text
    assert "Migration check" in report.read_text()
    with engine.connect() as conn:
        assert conn.execute(select(CustomerRow.customer_id)).first() is None
    # the migration gate cannot be signed on that check
    text = refused(
        await crmflow("project", "signoff", name, "migration-sign-off", "--as", "Ivan Sun")
    )
    assert "does not meet the thresholds" in text

    # three clean rows, hand-picked: not the file the template names, and too few
    clean = served / "clean.csv"
    with (ROLLOUT / "legacy.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with clean.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([rows[0], rows[1], rows[3]])
    result = await crmflow(
        "project", "migrate-check", name, "--source", str(clean),
        "--mapping", str(ROLLOUT / "mapping.yaml"), "--import", "--json",
    )  # fmt: skip
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["imported"] is None
    assert data["reasons"] == [
        "the check was of 'clean.csv'; the template's migration gate needs a check of 'legacy.csv'",
        "the source has 3 rows; the template needs a check of at least 35",
    ]

    # the export itself, cleaned: checked with its hash, imported, reconciled with the store
    export = clean_export(served / "exports-legacy" / "legacy.csv")
    result = ok(
        await crmflow(
            "project", "migrate-check", name, "--source", str(export),
            "--mapping", str(ROLLOUT / "mapping.yaml"), "--import", "--json",
        )
    )  # fmt: skip
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["recorded"] == {"passed": True, "failures": []}
    assert data["rows_in"] == data["rows_out"] == data["rows_in_store"] == 40
    assert data["source_sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()
    assert data["imported"]["stored"] == 40 and data["imported"]["rejected"] == 0
    assert data["reconciliation"]["matches"] is True
    assert data["amount_in_store"] == data["amount_mapped"] == data["amount_source"]
    with engine.connect() as conn:
        stored = conn.execute(
            select(CustomerRow.customer_id, CustomerRow.phone, CustomerRow.attributes).order_by(
                CustomerRow.customer_id
            )
        ).all()
    assert len(stored) == 40 and stored[0].customer_id == "M2000"
    assert stored[0].phone == "+8613910000000"
    assert stored[1].attributes["lifetime_spend"] == 101.01  # a number, not text
    assert stored[0].attributes["tier"] == "gold"
    # now the gate's only blocker is its open checklist items
    text = refused(
        await crmflow("project", "signoff", name, "migration-sign-off", "--as", "Ivan Sun")
    )
    assert "thresholds" not in text and "required checklist items are still open" in text
