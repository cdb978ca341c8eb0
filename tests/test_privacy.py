"""Export and erasure of one customer's data, on SQLite and PostgreSQL.

The example customers and events go through the example rules (points, tiers, tags,
refunds, the audit trail); one customer also gets free-text events, a manual tag, an
adjustment whose reason names them, a journey enrollment with its steps and deliveries,
outbox messages, a task and a notice to a manager that names them. Export, erase, export
again: the second export holds nothing of the person, the KPI digest and the points totals
are the same, the privacy log holds both actions without personal data, and the original
files cannot bring the person back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from crmflow.cli.app import app as cli_app
from crmflow.ingest import import_file
from crmflow.services import privacy
from crmflow.services.audit import privacy_log
from crmflow.services.customers import add_tag
from crmflow.services.errors import Invalid, NotFound
from crmflow.services.keys import Principal
from crmflow.services.permissions import Role
from crmflow.services.points import adjust, statement
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.db import utcnow
from store.kpi_digest import digest_figures
from store.models import (
    AuditRow,
    ChangeLogRow,
    CustomerRow,
    DeliveryRow,
    EnrollmentRow,
    EventRow,
    FollowUpTaskRow,
    JourneyStepRow,
    OutboxMessageRow,
    PointsLedgerRow,
    PrivacyLogRow,
)
from store.sql import table_of
from tests.conftest import free_port
from tests.rules_helpers import deploy_dir

REPO = Path(__file__).resolve().parents[1]
WHO = "C0002"
OTHER = "C0003"
WORKFLOW = f"journey:welcome:{WHO}:1"
NOTE = "please ring her after six, she lives at 88 Nanjing Road"
TITLE = "Complaint about the parcel left at the neighbour"
# the person's identifiers as the example file has them, and the free text about them
SECRETS = [
    "Wang Fang",
    "wang.fang@example.com",
    "13920246633",
    "2002-07-02",
    NOTE,
    TITLE,
    "88 Nanjing Road",
]
AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Principal(kind="key", id="k1", name="dpo-key", role=Role.admin, person="Li Na")


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there: Temporal is not running


def source_files(tmp: Path) -> tuple[Path, Path]:
    """The example customers, and the example events with free-text events of `WHO`."""
    customers = tmp / "customers.jsonl"
    shutil.copy(REPO / "examples" / "customers.jsonl", customers)
    events = tmp / "events.jsonl"
    extra = [
        {
            "event_id": "note-1",
            "customer_id": WHO,
            "type": "page_view",
            "occurred_at": "2026-09-01T10:00:00+08:00",
            "properties": {"note": NOTE, "page_title": TITLE, "seconds": 42, "channel": "web"},
        },
        {
            "event_id": "note-2",
            "customer_id": OTHER,
            "type": "page_view",
            "occurred_at": "2026-09-01T11:00:00+08:00",
            "properties": {"note": "Zhang Min's own note"},
        },
    ]
    text = (REPO / "examples" / "events.jsonl").read_text()
    events.write_text(text + "".join(json.dumps(e) + "\n" for e in extra))
    return customers, events


def seed(engine: Engine, tmp: Path, settings: Settings) -> tuple[Runtime, Path, Path]:
    deploy_dir(engine, REPO / "examples" / "rules")
    customers, events = source_files(tmp)
    assert import_file(engine, customers, "customers").rejected == 0
    assert import_file(engine, events, "events").rejected == 0
    rt = Runtime(settings, engine)
    add_tag(rt, WHO, "complained", by="Li Na")
    adjust(rt, WHO, 25, reason="goodwill: Wang Fang's parcel was lost", by="Li Na")
    now = utcnow()
    entered = datetime(2026, 10, 20, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(table_of(EnrollmentRow)).values(
                workflow_id=WORKFLOW,
                journey="welcome",
                version="v1",
                customer_id=WHO,
                status="active",
                node="wait",
                node_since=entered,
                entered_at=entered,
            )
        )
        conn.execute(
            insert(table_of(JourneyStepRow)).values(
                step_key=f"{WORKFLOW}:send",
                workflow_id=WORKFLOW,
                journey="welcome",
                version="v1",
                customer_id=WHO,
                node="send",
                kind="failed",
                reason="the mailbox wang.fang@example.com is full",
                at=entered,
            )
        )
        conn.execute(
            insert(table_of(DeliveryRow)).values(
                dedupe_key=f"{WORKFLOW}:send",
                customer_id=WHO,
                channel="email",
                status="sent",
                subject="Welcome, Wang Fang",
                body="Dear Wang Fang, happy birthday (2002-07-02)!",
                meta={"journey": "welcome", "node": "send", "via": "outbox", "to": "x"},
                created_at=now,
            )
        )
        o = table_of(OutboxMessageRow)
        conn.execute(
            insert(o).values(
                dedupe_key=f"{WORKFLOW}:send:outbox",
                customer_id=WHO,
                channel="email",
                address="wang.fang@example.com",
                subject="Welcome, Wang Fang",
                body_text="Dear Wang Fang",
                body_html="<p>Dear Wang Fang</p>",
                headers={"To": "Wang Fang <wang.fang@example.com>"},
                created_at=now,
            )
        )
        conn.execute(
            insert(o).values(
                dedupe_key="lead_sla:notice",
                customer_id=None,
                channel="email",
                address="manager@acme.example",
                subject="2 lead(s) went back to the pool",
                body_text="- C0002 (Wang Fang): 30 h\n- C0003 (Zhang Min): 31 h",
                headers={},
                created_at=now,
            )
        )
        conn.execute(
            insert(table_of(FollowUpTaskRow)).values(
                customer_id=WHO,
                owner="sales-1",
                title="Call Wang Fang on 13920246633",
                due_at=now + timedelta(days=1),
                status="open",
                created_at=now,
            )
        )
    return rt, customers, events


def settings(tmp: Path) -> Settings:
    return Settings(home=tmp / "home", temporal_address=closed_address())


def absent(text: str, secrets: list[str]) -> list[str]:
    low = text.lower()
    return [s for s in secrets if s.lower() in low]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args))


def kpi(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return digest_figures(conn, AS_OF, 120, "2026-11-01").model_dump()


def ledger_sums(engine: Engine) -> list[tuple[str, str, float]]:
    p = PointsLedgerRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(p.customer_id, p.kind, func.sum(p.amount))
            .group_by(p.customer_id, p.kind)
            .order_by(p.customer_id, p.kind)
        ).all()
    return [(c, k, float(a)) for c, k, a in rows]


def test_export_erase_export_from_the_command_line(
    engine: Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", closed_address())
    seed(engine, cli_env, settings(cli_env))

    out = cli_env / "export.json"
    done = run("customer", "export", WHO, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    first = out.read_text()
    assert absent(first, SECRETS) == SECRETS  # everything is there before
    doc = json.loads(first)
    assert doc["customer_id"] == WHO and doc["erased_at"] is None
    assert doc["profile"]["name"] == "Wang Fang"
    assert {t["tag"] for t in doc["tags"]} >= {"complained"}
    assert doc["points"]["ledger"] and doc["points"]["lots"] and doc["points"]["refunds"]
    assert doc["messages"]["deliveries"][0]["body"].startswith("Dear Wang Fang")
    assert doc["messages"]["outbox"][0]["address"] == "wang.fang@example.com"
    assert [e["workflow_id"] for e in doc["journeys"]["enrollments"]] == [WORKFLOW]
    temporal = doc["journeys"]["temporal"]
    assert temporal["reachable"] is False and "not reachable" in temporal["note"]
    assert doc["tasks"][0]["title"].startswith("Call Wang Fang")
    assert doc["audit_trail"] and doc["tiers"]["history"]
    assert doc["counts"]["events"] == len(doc["events"])
    printed = run("customer", "export", WHO)
    assert printed.exit_code == 0
    assert json.loads(printed.stdout)["customer_id"] == WHO

    kpi_before, sums_before = kpi(engine), ledger_sums(engine)
    shown = run("points", "show", WHO, "--json")
    assert shown.exit_code == 0, shown.output
    totals_before = json.loads(shown.stdout)["totals"]

    refused = run("customer", "erase", WHO)
    assert refused.exit_code == 1
    said = " ".join(refused.output.split())
    assert "nothing was erased: run again with --yes" in said
    assert "running enrollments to end: " + WORKFLOW in said
    assert "[erased]" in said
    with engine.connect() as conn:
        assert conn.execute(select(CustomerRow.name).where(CustomerRow.customer_id == WHO)).scalar()

    erased = run("customer", "erase", WHO, "--yes")
    assert erased.exit_code == 0, erased.output
    assert f"customer {WHO} erased on" in erased.output
    assert "Temporal is not reachable" in " ".join(erased.output.split())

    again = run("customer", "export", WHO)
    assert again.exit_code == 0
    second = again.stdout
    assert absent(second, SECRETS) == []
    after = json.loads(second)
    assert after["erased_at"] is not None
    assert after["profile"]["name"] is None and after["profile"]["attributes"] == {}
    assert after["tags"] == []
    note = next(e for e in after["events"] if e["event_id"] == "note-1")
    assert note["properties"] == {"seconds": 42, "channel": "web"}
    purchase = next(e for e in after["events"] if e["type"] == "purchase")
    assert set(purchase["properties"]) == {"amount", "currency", "order_id", "channel"}
    [enrollment] = after["journeys"]["enrollments"]
    assert enrollment["status"] == "exited" and enrollment["finished_at"] is not None
    assert after["messages"]["outbox"][0]["address"] is None
    assert after["tasks"][0]["title"] == "Call [erased] on [erased]"
    assert len(after["events"]) == len(doc["events"])  # kept, as counts need them

    # the figures do not move
    assert kpi(engine) == kpi_before
    assert ledger_sums(engine) == sums_before
    shown = run("points", "show", WHO, "--json")
    assert json.loads(shown.stdout)["totals"] == totals_before

    # a notice to a manager no longer names the person, and still names the other lead
    with engine.connect() as conn:
        notice = conn.execute(
            select(OutboxMessageRow.body_text).where(OutboxMessageRow.customer_id.is_(None))
        ).scalar_one()
        other = conn.execute(select(CustomerRow.name).where(CustomerRow.customer_id == OTHER))
        assert other.scalar() == "Zhang Min"
    assert notice is not None and "Wang Fang" not in notice and "Zhang Min" in notice

    # the privacy log: two exports before, the erasure, the export after; no personal data
    with engine.connect() as conn:
        log_rows = conn.execute(select(table_of(PrivacyLogRow)).order_by(PrivacyLogRow.id))
        log = [dict(r._mapping) for r in log_rows]
        trail = [dict(r._mapping) for r in conn.execute(select(table_of(AuditRow)))]
        changes = [dict(r._mapping) for r in conn.execute(select(table_of(ChangeLogRow)))]
    assert [r["action"] for r in log] == ["export", "export", "erase", "export"]
    erasure = log[2]
    assert erasure["customer_id"] == WHO and erasure["actor"].startswith("cli:")
    assert erasure["tables"]["customers"] == 1 and erasure["tables"]["customer_tags"] >= 1
    assert erasure["tables"]["journey_enrollments"] == 1
    assert erasure["detail"]["temporal"] == "not reachable"
    assert log[0]["tables"]["events"] == len(doc["events"])
    assert absent(json.dumps([log, trail, changes], default=str), SECRETS) == []


def test_reimporting_the_original_files_rejects_the_erased_id_only(
    engine: Engine, tmp_path: Path
) -> None:
    rt, customers, events = seed(engine, tmp_path, settings(tmp_path))
    report = asyncio.run(privacy.erase_customer(rt, WHO, who=ADMIN))
    assert report.erased_at is not None and report.log_id is not None
    day = f"{report.erased_at:%Y-%m-%d}"
    expected = f"field 'customer_id': customer '{WHO}' was erased on {day}"

    lines = customers.read_text().splitlines()
    mine = [n for n, text in enumerate(lines, start=1) if json.loads(text)["customer_id"] == WHO]
    again = import_file(engine, customers, "customers")
    assert again.rejected == len(mine) == 1
    assert [f.at for f in again.faults] == mine
    assert expected in again.faults[0].reason
    assert again.duplicates == len(lines) - 1 and again.stored == again.updated == 0
    rejects = Path(again.rejects_file or "")
    assert stat.S_IMODE(os.stat(rejects).st_mode) == 0o600
    assert [json.loads(r)["line"] for r in rejects.read_text().splitlines()] == mine

    ev_lines = events.read_text().splitlines()
    ev_mine = [
        n for n, text in enumerate(ev_lines, start=1) if json.loads(text)["customer_id"] == WHO
    ]
    # in chunks, and on PostgreSQL in worker processes: each chunk's ids looked up at once
    ev_again = import_file(engine, events, "events", chunk_size=40, workers=2)
    assert ev_again.rejected == len(ev_mine) > 5
    assert [f.at for f in ev_again.faults] == ev_mine
    assert all(expected in f.reason for f in ev_again.faults)
    assert ev_again.duplicates == len(ev_lines) - len(ev_mine)

    # a new event of another customer in the same file still goes in
    extra = tmp_path / "more.jsonl"
    extra.write_text(
        json.dumps(
            {
                "event_id": "late-1",
                "customer_id": OTHER,
                "type": "sign_in",
                "occurred_at": "2026-10-30T10:00:00+08:00",
            }
        )
        + "\n"
        + json.dumps(
            {
                "event_id": "late-2",
                "customer_id": WHO,
                "type": "sign_in",
                "occurred_at": "2026-10-30T10:00:00+08:00",
            }
        )
        + "\n"
    )
    mixed = import_file(engine, extra, "events")
    assert (mixed.stored, mixed.rejected) == (1, 1)
    assert mixed.faults[0].at == 2
    with engine.connect() as conn:
        row = conn.execute(select(CustomerRow).where(CustomerRow.customer_id == WHO)).one()
        late = conn.execute(select(EventRow.event_id).where(EventRow.event_id == "late-2"))
        assert late.first() is None
    assert row.name is None and row.email is None and row.erased_at is not None


def test_erasing_twice_keeps_the_first_date_and_logs_both(engine: Engine, tmp_path: Path) -> None:
    rt, _, _ = seed(engine, tmp_path, settings(tmp_path))
    plan = asyncio.run(privacy.erase_customer(rt, WHO, who=ADMIN, dry_run=True))
    assert plan.dry_run and not plan.already_erased and plan.enrollments_ended == [WORKFLOW]
    assert plan.rows["events"] > 5 and plan.log_id is None
    assert privacy_log(rt, customer_id=WHO) == []  # a dry run changes and records nothing
    first = asyncio.run(privacy.erase_customer(rt, WHO, who=ADMIN))
    second = asyncio.run(privacy.erase_customer(rt, WHO, who=ADMIN))
    assert second.already_erased and second.erased_at == first.erased_at
    assert second.enrollments_ended == []
    log = privacy_log(rt, customer_id=WHO)
    assert [r.action for r in log] == ["erase", "erase"]
    assert log[0].detail["again"] is True and log[1].detail["again"] is False
    assert log[1].person == "Li Na" and log[1].role == "admin"


def test_unknown_and_bad_ids_are_said_plainly(engine: Engine, tmp_path: Path) -> None:
    rt = Runtime(settings(tmp_path), engine)
    with pytest.raises(NotFound, match="no customer with id 'nobody'"):
        asyncio.run(privacy.export_customer(rt, "nobody", who=ADMIN))
    with pytest.raises(NotFound, match="no customer with id 'nobody'"):
        asyncio.run(privacy.erase_customer(rt, "nobody", who=ADMIN))
    with pytest.raises(Invalid, match="NUL"):
        asyncio.run(privacy.erase_customer(rt, "a\x00b", who=ADMIN))
    assert privacy_log(rt) == []


def test_the_command_line_names_an_unknown_customer(
    engine: Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", closed_address())
    out = cli_env / "x.json"
    r = run("customer", "export", "nobody", "--out", str(out))
    assert r.exit_code == 1 and "no customer with id 'nobody'" in r.output
    assert not out.exists()  # no empty file left behind
    r = run("customer", "erase", "nobody", "--yes")
    assert r.exit_code == 1 and "no customer with id 'nobody'" in r.output


@pytest.mark.devserver
async def test_erasure_terminates_the_enrollment_workflows(
    dev_env: WorkflowEnvironment, engine: Engine, tmp_path: Path
) -> None:
    """A running enrollment's workflow (here one no worker serves, so it stays running) is
    described by the export and terminated by the erasure."""
    rt, _, _ = seed(engine, tmp_path, settings(tmp_path))
    rt = Runtime(rt.settings, engine, _client=dev_env.client)
    wid = f"{WORKFLOW}:{engine.dialect.name}:{free_port()}"
    with engine.begin() as conn:
        e = table_of(EnrollmentRow)
        conn.execute(e.update().where(e.c.workflow_id == WORKFLOW).values(workflow_id=wid))
    handle = await dev_env.client.start_workflow(
        "NobodyServesThis", id=wid, task_queue=f"privacy-test-{free_port()}"
    )
    doc = await privacy.export_customer(rt, WHO, who=ADMIN)
    temporal = doc.journeys.temporal
    assert temporal.reachable is True
    assert [(w.workflow_id, w.status) for w in temporal.workflows] == [(wid, "RUNNING")]
    report = await privacy.erase_customer(rt, WHO, who=ADMIN)
    assert report.enrollments_ended == [wid]
    assert report.temporal is not None and report.temporal.reachable is True
    assert [w.note for w in report.temporal.workflows] == ["terminated"]
    assert (await handle.describe()).status.name == "TERMINATED"  # type: ignore[union-attr]
    log = privacy_log(rt, customer_id=WHO)
    assert log[0].detail["workflows_terminated"] == 1
    again = await privacy.erase_customer(rt, WHO, who=ADMIN)  # retried: nothing left to end
    assert again.temporal is not None
    assert [w.note for w in again.temporal.workflows] == ["not running in Temporal"]
    after = await privacy.export_customer(rt, WHO, who=ADMIN)
    assert after.journeys.temporal.workflows[0].status == "TERMINATED"
    assert statement(rt, WHO).customer_id == WHO
