"""The projects service on the time-skipping server (visibility listing on the dev server),
with a worker of this test's own: create, status, every change, typed refusals, a closed
project, a silent worker, the migration check with its import."""

from __future__ import annotations

import asyncio
import csv
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

from activities.project_activities import ProjectActivities
from crmflow.contracts.projects import (
    CheckInput,
    CloseInput,
    DoneInput,
    RebaselineInput,
    RiskAddInput,
    RiskCloseInput,
    RiskUpdateInput,
    SignOffInput,
    StageInput,
)
from crmflow.services import projects as service
from crmflow.services.errors import Conflict, Invalid, NotFound, Refused, Unavailable
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from projects.state import RiskChange, RiskInput
from store.models import CustomerRow
from tests.conftest import REPO
from workflows.project import ProjectWorkflow

ROLLOUT = REPO / "examples/rollout"


def monday() -> Any:
    today = datetime.now(UTC).date()
    return today - timedelta(days=today.weekday())


def spec(name: str, **params: Any) -> service.ProjectSpec:
    return service.spec_from_files(
        name,
        monday(),
        ROLLOUT / "crm-rollout.yaml",
        ROLLOUT / "team.yaml",
        ROLLOUT / "holidays.yaml",
        params,
    )


async def runtime_on(
    env: WorkflowEnvironment, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Runtime]:
    """A runtime on `env`'s client and a task queue a worker of this test polls."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    queue = f"svc-projects-{uuid.uuid4()}"
    settings = Settings(home=tmp_path / "home", task_queue=queue)
    with ThreadPoolExecutor(4) as pool:
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[ProjectWorkflow],
            activities=ProjectActivities(engine).all(),
            activity_executor=pool,
        ):
            yield Runtime(settings, engine, _client=env.client)


@pytest.fixture
async def rt(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Runtime]:
    async for r in runtime_on(ts_env, engine, tmp_path, monkeypatch):
        yield r


async def test_create_status_changes_and_refusals(rt: Runtime) -> None:
    name = f"Svc {uuid.uuid4().hex[:6]}"
    made = await service.create(rt, spec(name))
    slug = name.lower().replace(" ", "-")
    assert (made.workflow_id, made.project_id) == (f"project-{slug}", slug)
    assert made.plan.critical_path[:2] == ["requirements", "vendor-selection"]
    assert "executive_sponsor" in made.gate_needs["requirements-approval"]

    st = await service.status(rt, name)
    assert st.workflow_id == made.workflow_id and st.closed_at is None
    assert st.health.status in ("green", "amber", "red") and st.due_next

    said = await service.check(rt, name, CheckInput(item="stakeholder-interviews", by="Lily Zhao"))
    assert said.message == "checked stakeholder-interviews (Lily Zhao)"
    with pytest.raises(service.ProjectRefused) as refused:
        await service.signoff(rt, name, SignOffInput(gate="requirements-approval", by="Ivan Sun"))
    assert str(refused.value).startswith("Ivan Sun holds it_lead; gate 'Requirements approval'")
    assert isinstance(refused.value, Refused)  # faces map it as any refusal

    await service.done(rt, name, DoneInput(milestone="kick-off", by="Peter Wang"))
    risk = RiskInput(title="Data quality", owner="Ivan Sun", probability="high", impact="high")
    said = await service.add_risk(rt, name, RiskAddInput(risk=risk, by="Peter Wang"))
    assert said.message == "risk R1 added (critical)"
    change = RiskChange(impact="low")
    said = await service.update_risk(
        rt, name, RiskUpdateInput(risk_id="R1", change=change, by="Peter Wang")
    )
    assert said.message.startswith("risk R1 updated")
    await service.close_risk(rt, name, RiskCloseInput(risk_id="R1", by="Peter Wang"))
    said = await service.rebaseline(rt, name, RebaselineInput(by="Peter Wang", reason="x"))
    assert said.message.startswith("baseline 2 taken")
    with pytest.raises(service.ProjectRefused, match="already started"):
        await service.start_stage(rt, name, StageInput(stage="requirements", by="Peter Wang"))
    with pytest.raises(service.ProjectRefused):
        await service.finish_stage(rt, name, StageInput(stage="requirements", by="Nobody"))

    svg = await service.gantt_svg(rt, name)
    assert svg.lstrip().startswith("<svg") and "Requirements" in svg
    assert (await service.snapshot(rt, name)).state.risks[0].status == "closed"

    with pytest.raises(Conflict, match="exists already"):
        await service.create(rt, spec(name))
    with pytest.raises(NotFound, match="no project named 'nothing here'"):
        await service.status(rt, "nothing here")
    with pytest.raises(NotFound):
        await service.check(rt, "!!!", CheckInput(item="x", by="y"))

    # closing ends the workflow: it still answers queries, every change is refused as over
    said = await service.close(rt, name, CloseInput(by="Peter Wang", reason="done"))
    assert said.message == f"project {name} closed by Peter Wang"
    handle = rt._client.get_workflow_handle(made.workflow_id)  # type: ignore[union-attr]
    await handle.result()
    st = await service.status(rt, name)
    assert st.closed_by == "Peter Wang" and st.close_reason == "done"
    with pytest.raises(Refused, match="is over") as over:
        await service.check(rt, name, CheckInput(item="smart-goals", by="Lily Zhao"))
    assert not isinstance(over.value, service.ProjectRefused)


async def test_create_reports_every_problem(rt: Runtime, tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="unknown parameter 'legacy'"):
        spec("x", legacy="true")
    with pytest.raises(Invalid, match="has no letters or digits"):
        spec("!!!")
    bad_team = tmp_path / "team.yaml"
    bad_team.write_text("people:\n  - {name: A, email: a@example.com, roles: [it_lead]}\n")
    with pytest.raises(Invalid) as info:
        service.spec_from_files("x", monday(), ROLLOUT / "crm-rollout.yaml", bad_team)
    [problem] = info.value.problems
    assert problem.field.startswith(str(bad_team)) and "nobody holds" in problem.reason

    # a template given as a model gets the checks that span it (here: a dependency cycle)
    good = spec("x")
    stages = [s.model_copy() for s in good.template.stages]
    first_dep = stages[1].depends_on[0].model_copy(update={"stage": stages[-1].id})
    stages[0] = stages[0].model_copy(update={"depends_on": [first_dep]})
    cyclic = good.model_copy(
        update={"template": good.template.model_copy(update={"stages": stages})}
    )
    with pytest.raises(Invalid, match="dependency cycle"):
        await service.create(rt, cyclic)
    wrong_param = good.model_copy(update={"params": {"legacy_system": "perhaps"}})
    with pytest.raises(Invalid, match="legacy_system"):
        await service.create(rt, wrong_param)


async def test_no_worker_answer_is_unavailable(
    ts_env: WorkflowEnvironment, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setattr(service, "ANSWER_SECONDS", 0.5)
    queue = f"nobody-polls-{uuid.uuid4()}"
    rt = Runtime(Settings(home=tmp_path, task_queue=queue), engine, _client=ts_env.client)
    name = f"Silent {uuid.uuid4().hex[:6]}"
    made = await service.create(rt, spec(name))
    try:
        with pytest.raises(Unavailable, match=f"task queue '{queue}'"):
            await service.status(rt, name)
    finally:
        await ts_env.client.get_workflow_handle(made.workflow_id).terminate()


def clean_export(path: Path, n: int = 40) -> Path:
    """A legacy export of `n` members with nothing wrong in it, under the name given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["member_no", "full_name", "mobile", "email", "joined", "total_spend", "tier"])
        for i in range(n):
            out.writerow(
                [
                    f"M2{i:03d}",
                    f"Member {chr(65 + i % 26)}{chr(65 + i // 26)} Example",
                    f"1391000{i:04d}",
                    f"m{i}@example.com",
                    "2020-01-15",
                    f"{100 + i}.{i % 100:02d}",
                    "Gold",
                ]
            )
    return path


async def test_migration_check_records_and_imports(
    rt: Runtime, engine: Engine, tmp_path: Path
) -> None:
    name = f"Migr {uuid.uuid4().hex[:6]}"
    await service.create(rt, spec(name, legacy_system="true"))
    rows, mapping = service.read_migration_input(ROLLOUT / "legacy.csv", ROLLOUT / "mapping.yaml")
    failed = await service.migration_check(rt, name, rows, mapping, "legacy.csv", import_rows=True)
    assert not failed.passed and failed.imported is None
    assert failed.recorded.passed is False and failed.recorded.failures
    assert any("duplicate rate" in r for r in failed.reasons)

    # three hand-picked rows under another name: clean, but not the file the template names
    with (ROLLOUT / "legacy.csv").open(encoding="utf-8") as fh:
        legacy = list(csv.DictReader(fh))
    picked = [legacy[0], legacy[1], legacy[3]]
    sample = await service.migration_check(rt, name, picked, mapping, "clean.csv", import_rows=True)
    assert not sample.passed and sample.imported is None
    assert sample.reasons == [
        "the check was of 'clean.csv'; the template's migration gate needs a check of 'legacy.csv'",
        "the source has 3 rows; the template needs a check of at least 35",
    ]
    assert sample.recorded.failures == sample.reasons

    # the export itself, cleaned: checked with its hash, imported, reconciled with the store
    export = clean_export(tmp_path / "legacy.csv")
    rows, mapping = service.read_migration_input(export, ROLLOUT / "mapping.yaml")
    digest = service.source_sha256(export)
    ok = await service.migration_check(
        rt, name, rows, mapping, str(export), import_rows=True, sha256=digest
    )
    assert ok.passed and ok.recorded.passed, ok.reasons
    assert ok.summary["rows_out"] == 40 and ok.summary["source_sha256"] == digest
    assert ok.imported is not None
    assert (ok.imported.stored, ok.imported.rejected) == (40, 0)
    rec = ok.reconciliation
    assert rec is not None and rec.matches
    assert (rec.rows_migrated, rec.rows_found, rec.numbers_as_text) == (40, 40, 0)
    assert rec.amount_found == rec.amount_migrated == ok.report.amount_source
    snap = await service.snapshot(rt, name)
    kept = snap.state.migration_check
    assert kept is not None
    assert (kept.source_name, kept.source_sha256, kept.rows_in, kept.target_rows) == (
        "legacy.csv",
        digest,
        40,
        40,
    )
    assert kept.amount_target == kept.amount_mapped
    with engine.connect() as conn:
        stored = conn.execute(
            select(CustomerRow.customer_id, CustomerRow.lifecycle_stage, CustomerRow.attributes)
        ).all()
    assert len(stored) == 40 and {s.lifecycle_stage for s in stored} == {"member"}
    first = next(s for s in stored if s.customer_id == "M2001")
    # numbers stay numbers
    assert first.attributes["lifetime_spend"] == 101.01
    assert isinstance(first.attributes["lifetime_spend"], float)
    assert first.attributes["migrated_from"] == str(export)
    # the same rows again change nothing, and still reconcile
    again = await service.migration_check(
        rt, name, rows, mapping, str(export), import_rows=True, sha256=digest
    )
    assert again.imported is not None and again.imported.duplicates == 40
    assert again.reconciliation is not None and again.reconciliation.matches
    await service.close(rt, name, CloseInput(by="Peter Wang"))


def test_import_customers_reports_bad_rows(engine: Engine, tmp_path: Path) -> None:
    rt = Runtime(Settings(home=tmp_path), engine)
    got = service.import_customers(
        rt,
        [{"customer_id": "A1", "email": "a@example.com"}, {"customer_id": "A2", "email": "nope"}],
        "rows",
    )
    assert (got.received, got.stored, got.rejected) == (2, 1, 1)
    assert got.faults[0].at == 2 and "email" in got.faults[0].reason


@pytest.mark.devserver
async def test_list_projects_with_health(
    dev_env: WorkflowEnvironment, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for rt in runtime_on(dev_env, engine, tmp_path, monkeypatch):
        name = f"Listed {uuid.uuid4().hex[:6]}"
        made = await service.create(rt, spec(name))
        for _ in range(50):  # visibility lags the start a little
            rows = await service.list_projects(rt)
            mine = [r for r in rows if r.workflow_id == made.workflow_id]
            if mine:
                break
            await asyncio.sleep(0.1)
        assert mine and mine[0].name == name and mine[0].template == "crm-rollout"
        assert mine[0].workflow_status == "running" and mine[0].health in ("green", "amber", "red")
        assert mine[0].forecast_finish is not None and mine[0].next_due
        await service.close(rt, name, CloseInput(by="Peter Wang"))
