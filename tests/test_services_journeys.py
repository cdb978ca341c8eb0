"""The journeys service on SQLite and PostgreSQL: validate (file or text), deploy in one
transaction, list and show, status changes with their schedule, segment entry, enrollments,
stats and simulation."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from temporalio.testing import WorkflowEnvironment

from crmflow.services import journeys as service
from crmflow.services.errors import Invalid, NotFound, Refused
from crmflow.services.journeys import (
    EnrollmentsQuery,
    InvalidJourney,
    JourneyFile,
    JourneyText,
    SimulationOptions,
)
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.models import JourneyCommandRow, JourneyRow, JourneyVersionRow
from tests.rules_helpers import REPO, deploy_dir
from tests.test_journey_segments import VIP_ONCE, VIP_WEEKLY, queued, seed
from tests.test_journey_stats import T0, Seed

WINBACK = REPO / "examples/journeys/winback.yaml"
SIMPLE = """
journey: simple
entry: rule
channels: [email]
start: hi
nodes:
  hi:
    type: message
    channel: email
    template: {subject: "Hi", text: "hello"}
    next: wait
  wait: {type: delay, duration: 2d, next: done}
  done: {type: exit}
"""


@pytest.fixture
def rt(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    return Runtime(Settings(home=tmp_path / "home"), engine)


def versions_stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(JourneyVersionRow)).scalar_one())


# --------------------------------------------------------------------------- validate


def test_validate_a_file_needs_no_database() -> None:
    s = service.validate(None, JourneyFile(path=WINBACK))
    assert (s.journey, s.start, s.file) == ("winback", "offer_test", str(WINBACK))
    assert s.entry.model_dump() == {"kind": "event", "event": "churn_risk", "when": False}
    assert s.program.endswith("examples/program.yaml")


def test_validate_text_uses_the_active_rules_programme(rt: Runtime) -> None:
    with pytest.raises(Refused, match="deploy a rules version first"):
        service.validate(rt, JourneyText(yaml=SIMPLE))
    deploy_dir(rt.engine, REPO / "examples/rules")
    s = service.validate(rt, JourneyText(yaml=SIMPLE))
    assert s.journey == "simple" and s.file == "journey.yaml" and s.channels == ["email"]
    assert s.program.endswith("program.yaml")
    bad = SIMPLE.replace("next: done", "next: gone") + "  spare: {type: exit}\n"
    with pytest.raises(InvalidJourney) as info:
        service.validate(rt, JourneyText(yaml=bad))
    assert isinstance(info.value, Invalid)  # 422 on the API
    problems = [(p.field, p.reason) for p in info.value.problems]
    assert problems[0][0] == "yaml.nodes.wait" and problems[0][1].startswith("line 12: ")
    assert "'gone' is not a node" in problems[0][1]
    assert any(f == "yaml.nodes.spare" and "unreachable" in r for f, r in problems)


# --------------------------------------------------------------------------- deploy


async def test_deploy_text_then_the_same_again(rt: Runtime) -> None:
    deploy_dir(rt.engine, REPO / "examples/rules")
    first = await service.deploy(rt, JourneyText(yaml=SIMPLE), origin="api:test")
    again = await service.deploy(rt, JourneyText(yaml=SIMPLE))
    assert first.new and not again.new and first.version == again.version
    assert first.segment is None and first.schedule is None
    detail = service.get_journey(rt, "simple")
    assert [v.origin for v in detail.versions] == ["api:test"]


async def test_a_once_segment_is_entered_in_the_deploys_transaction(
    rt: Runtime, tmp_path: Path
) -> None:
    file = tmp_path / "vip.yaml"
    file.write_text(VIP_ONCE)
    (tmp_path / "program.yaml").write_text((REPO / "examples/program.yaml").read_text())
    # no rules version: the segment cannot be evaluated, and nothing is deployed
    with pytest.raises(Refused, match="rules version"):
        await service.deploy(rt, JourneyFile(path=file))
    assert versions_stored(rt.engine) == 0
    with rt.engine.connect() as conn:
        assert conn.execute(select(JourneyRow.name)).first() is None
    seed(rt.engine, tmp_path)
    report = await service.deploy(rt, JourneyFile(path=file))
    assert report.new and report.segment is not None
    assert (report.segment.customers, report.segment.matched, report.segment.queued) == (3, 1, 1)
    assert queued(rt.engine) == ["big"]
    assert service.get_journey(rt, "vip-once").versions[0].origin == str(file)
    # a later run queues again; an unknown journey or one not entered by a segment is refused
    assert service.enter(rt, "vip-once", "r2").queued == 1
    with pytest.raises(NotFound):
        service.enter(rt, "nope")
    await service.deploy(rt, JourneyText(yaml=SIMPLE))
    with pytest.raises(Refused, match="not entered by a segment"):
        service.enter(rt, "simple")


async def test_scheduled_segments_follow_the_status(
    dev_env: WorkflowEnvironment, rt: Runtime, tmp_path: Path
) -> None:
    seed(rt.engine, tmp_path)
    rt._client = dev_env.client
    name = f"vip-weekly-{uuid.uuid4().hex[:6]}"
    text = JourneyText(yaml=VIP_WEEKLY.replace("vip-weekly", name))
    report = await service.deploy(rt, text)
    assert report.schedule is not None and "created" in report.schedule
    assert report.schedule_problem is None
    paused = await service.pause(rt, name)
    assert (paused.before, paused.status) == ("active", "paused")
    assert paused.schedule is not None and "updated" in paused.schedule
    assert (await service.resume(rt, name)).before == "paused"
    archived = await service.archive(rt, name)
    assert archived.schedule == "schedule deleted"
    with rt.engine.connect() as conn:  # nothing was queued: the schedule had not run
        assert conn.execute(select(JourneyCommandRow.id)).first() is None


async def test_status_changes(rt: Runtime) -> None:
    deploy_dir(rt.engine, REPO / "examples/rules")
    with pytest.raises(NotFound):
        await service.pause(rt, "simple")
    await service.deploy(rt, JourneyText(yaml=SIMPLE))
    change = await service.pause(rt, "simple")
    assert (change.before, change.status, change.schedule) == ("active", "paused", None)
    assert service.list_journeys(rt)[0].status == "paused"
    # deploying again keeps a paused journey paused; archived ones come back
    await service.deploy(rt, JourneyText(yaml=SIMPLE + "\n# v2\n"))
    assert service.get_journey(rt, "simple").status == "paused"
    await service.archive(rt, "simple")
    await service.deploy(rt, JourneyText(yaml=SIMPLE + "\n# v3\n"))
    assert service.get_journey(rt, "simple").status == "active"
    with pytest.raises(Invalid):
        await service.set_status(rt, "simple", "sleeping")


# --------------------------------------------------------------------------- list and show


async def test_list_and_show(rt: Runtime) -> None:
    assert service.list_journeys(rt) == []
    with pytest.raises(NotFound):
        service.get_journey(rt, "simple")
    deploy_dir(rt.engine, REPO / "examples/rules")
    v1 = (await service.deploy(rt, JourneyText(yaml=SIMPLE))).version
    v2 = (await service.deploy(rt, JourneyText(yaml=SIMPLE.replace("2d", "3d")))).version
    with rt.engine.begin() as conn:
        s = Seed(conn, "simple")
        s.enrollment("A", v1, "active", "wait", None, T0)
        s.enrollment("B", v2, "completed", "done", None, T0)
    (item,) = service.list_journeys(rt)
    assert (item.journey, item.status, item.version) == ("simple", "active", v2)
    assert item.enrollments == {"active": 1, "completed": 1}
    d = service.get_journey(rt, "simple")
    assert [n.id for n in d.nodes] == ["hi", "wait", "done"]
    assert d.nodes[1].definition == {"type": "delay", "duration": "3d", "next": "done"}
    assert [(e.source, e.target, e.via) for e in d.edges] == [
        ("hi", "wait", "next"),
        ("wait", "done", "next"),
    ]
    assert [(v.version, v.active) for v in d.versions] == [(v1, False), (v2, True)]
    assert d.entry.kind == "rule" and d.start == "hi"


# --------------------------------------------------------------------------- reports


def test_enrollments_by_node_and_status(rt: Runtime) -> None:
    with pytest.raises(NotFound):
        service.enrollments(rt, "promo")
    with pytest.raises(NotFound):
        service.stats(rt, "promo")
    with rt.engine.begin() as conn:
        s = Seed(conn)
        for i in range(5):
            s.enrollment(f"W{i}", "v1", "active", "pause", "a", T0)
        s.enrollment("M1", "v1", "active", "mail", "b", T0)
        s.enrollment("D1", "v1", "completed", "done", "b", T0)
    every = service.enrollments(rt, "promo")
    assert every.total == 7 and len(every.enrollments) == 7
    at_pause = service.enrollments(rt, "promo", EnrollmentsQuery(node="pause", limit=2))
    assert at_pause.total == 5 and len(at_pause.enrollments) == 2
    assert {e.node for e in at_pause.enrollments} == {"pause"}
    done = service.enrollments(rt, "promo", EnrollmentsQuery(status="completed"))
    assert [e.customer_id for e in done.enrollments] == ["D1"]
    with pytest.raises(ValueError):
        EnrollmentsQuery(limit=service.MAX_ENROLLMENTS + 1)
    assert service.stats(rt, "promo").enrollments == 7


async def test_simulate_text_with_the_active_rules(rt: Runtime) -> None:
    options = SimulationOptions(
        customer={"customer_id": "C1", "email": "c1@example.com", "consent": {"email": True}},
        until_days=3,
        no_quiet_hours=True,
    )
    with pytest.raises(Refused):
        await service.simulate(rt, JourneyText(yaml=SIMPLE), options)
    deploy_dir(rt.engine, REPO / "examples/rules")
    with pytest.raises(InvalidJourney):
        await service.simulate(rt, JourneyText(yaml=SIMPLE.replace("next: done", "")), options)
    report = await service.simulate(
        rt, JourneyText(yaml=SIMPLE), options.model_copy(update={"rules": True})
    )
    assert report.outcome == "completed" and report.sent == 1
    assert [p.node for p in report.path] == ["hi", "wait", "done"]
    assert report.rules_version is not None
    bad = options.model_copy(update={"quiet_hours": "late", "no_quiet_hours": False})
    with pytest.raises(Invalid, match="quiet-hours"):
        await service.simulate(rt, JourneyText(yaml=SIMPLE), bad)
