"""`make demo`: the embedded stack end to end on the shipped examples, then a summary."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from temporalio.client import Client

from crmflow import demo_messages, schedules
from crmflow.contracts.automations import RunSummary
from crmflow.dispatch import dispatch_once
from crmflow.ingest import Kind, import_file
from crmflow.ingest_report import IngestReport
from crmflow.services import points as points_service
from crmflow.services import rewards as rewards_service
from crmflow.services.errors import Refused
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from crmflow.stack import run_kpi_snapshot, stack_with_worker
from journeys.validate import load_journey
from rules.pack import load_pack
from store.db import utcnow
from store.journeys import deploy_journey
from store.rule_versions import deploy


async def _first_sends(engine: Engine, wait: float = 3.0) -> dict[str, Any]:
    """Enrollments and their messages so far, after giving the first messages a moment."""
    from sqlalchemy import func, select

    from store.models import DeliveryRow, EnrollmentRow

    def counts() -> dict[str, Any]:
        with engine.connect() as conn:
            enrolled = conn.execute(select(func.count()).select_from(EnrollmentRow)).scalar_one()
            by_status = dict(
                conn.execute(
                    select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status)
                ).all()
            )
        where = conn_where(engine)
        return {
            "where": where,
            "enrollments": int(enrolled),
            "sent": int(by_status.get("sent", 0)),
            "suppressed": int(by_status.get("suppressed", 0)),
            "decided": sum(int(v) for v in by_status.values()),
        }

    def conn_where(engine: Engine) -> dict[str, int]:
        with engine.connect() as conn:
            rows = conn.execute(
                select(EnrollmentRow.journey, EnrollmentRow.node, func.count()).group_by(
                    EnrollmentRow.journey, EnrollmentRow.node
                )
            ).all()
        return {f"{j} at {n}": int(c) for j, n, c in rows}

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    now = counts()
    while now["decided"] < now["enrollments"] and loop.time() < deadline:
        await asyncio.sleep(0.25)
        now = counts()
    return now


# the automations the demo runs once, now, after applying the schedules file
DEMO_RUNS = ("nightly-points-expiry", "nightly-tier-review", "weekly-kpi-digest")


async def _run_schedules(client: Client, settings: Settings, path: Path) -> dict[str, Any]:
    """Apply the schedules file to the server, then run a few automations now."""
    file = schedules.load_schedules(path)
    applied = await schedules.apply(client, file, settings.task_queue)
    runs = []
    for name in DEMO_RUNS:
        wid = await schedules.trigger(client, name)
        if wid is None:
            continue
        handle = client.get_workflow_handle(wid, result_type=RunSummary)
        runs.append((await handle.result()).model_dump())
    return {"applied": [c.as_dict() for c in applied], "runs": runs}


# how long the demo waits for the sign-ups' welcome e-mails that quiet hours do not hold
SEND_TIMEOUT = 60.0


def _sign_ups(rt: Runtime, say: Any) -> tuple[IngestReport, IngestReport]:
    """A few customers sign up now (`crmflow.demo_messages`): the welcome journey sends to
    them during the run. A second run sends the same sign-ups again: duplicates."""
    customers, events = demo_messages.add_sign_ups(rt, utcnow())
    say(
        f"  {customers.received} customers sign up now: {customers.stored} stored, "
        f"{events.stored} sign-up events stored, {events.duplicates} duplicates, "
        f"{events.conflicts} conflicts; {events.processed} through the rules, "
        f"{events.rules_fired} rules fired"
    )
    return customers, events


DEMO_MEMBER, DEMO_REWARD = "C0002", "coffee-voucher"


def _rewards(rt: Runtime, path: Path, say: Any) -> dict[str, Any]:
    """Apply the rewards catalogue and spend one member's points on a reward (the same key
    each run: a second demo finds the same redemption)."""
    applied = rewards_service.apply(rt, path)
    say(
        f"  rewards from {path}: {len(applied.created)} created, {len(applied.updated)} "
        f"updated, {len(applied.unchanged)} unchanged"
    )
    try:
        done = points_service.redeem(
            rt, DEMO_MEMBER, DEMO_REWARD, key=f"demo-{DEMO_MEMBER}-{DEMO_REWARD}", by="demo"
        )
    except Refused as exc:
        say(f"  {DEMO_MEMBER} could not redeem {DEMO_REWARD}: {exc}")
        return {"refused": str(exc)}
    say(
        f"  {DEMO_MEMBER} redeemed {DEMO_REWARD} for {done.cost:,.0f} points: coupon {done.code}, "
        f"balance {done.balance:,.2f} (`crmflow points show {DEMO_MEMBER}`)"
    )
    return done.model_dump(mode="json")


async def run_demo(
    settings: Settings, engine: Engine, examples: Path, console: Console, *, as_json: bool = False
) -> None:
    say = (lambda *_a, **_k: None) if as_json else console.print
    started = utcnow()  # messages sent from here on were sent during this run
    say(f"[bold]crmflow demo[/] — database {settings.db_url}")
    rules_dir = examples / "rules"
    pack, source = load_pack(rules_dir)
    with engine.begin() as conn:
        new = deploy(conn, pack.version, source, len(pack.rules), str(rules_dir))
    say(
        f"  rules version {pack.version} ({len(pack.rules)} rules from {rules_dir}) "
        + ("deployed" if new else "already deployed")
    )
    # journeys before the events, so the events they listen to reach them
    journeys_dir = examples / "journeys"
    names = []
    for file in sorted(journeys_dir.glob("*.yaml")):
        j = load_journey(file).journey
        with engine.begin() as conn:
            deploy_journey(conn, j.journey, j.definition(), file.read_text("utf-8"), str(file))
        names.append(j.journey)
    say(f"  journeys deployed from {journeys_dir}: {', '.join(names) or 'none'}")
    reports = []
    kinds: tuple[Kind, ...] = ("customers", "events")
    for kind in kinds:
        path = examples / f"{kind}.jsonl"
        if not path.exists():
            raise SystemExit(f"error: {path} is missing; run the demo from the repository root")
        report = import_file(
            engine,
            path,
            kind,
            phone_region=settings.default_phone_region,
        )
        reports.append(report)
        updated = f", {report.updated} updated" if kind == "customers" else ""
        conflicts = f", {report.conflicts} conflicts" if kind == "events" else ""
        say(
            f"  imported {path}: {report.received} received: {report.stored} stored{updated}, "
            f"{report.duplicates} duplicates{conflicts}, {report.rejected} rejected"
        )
        if kind == "events":
            say(
                f"    {report.processed} events through the rules, {report.rules_fired} rules fired"
            )
        for bad in report.faults:
            say(f"    line {bad.at}: {bad.problem}: {bad.reason}", highlight=False)
    sign_ups = _sign_ups(Runtime(settings, engine), say)
    redeemed = _rewards(Runtime(settings, engine), examples / "rewards.yaml", say)
    where = "the embedded Temporal dev server" if settings.embedded else settings.temporal_target
    say(f"  starting {where} and a worker …")
    async with stack_with_worker(settings) as client:
        handed = await dispatch_once(client, engine, settings.task_queue)
        wf_id, snap = await run_kpi_snapshot(client, settings, window_days=365)
        sends = await _first_sends(engine)
        # the sign-ups' welcome e-mails that quiet hours do not hold: wait for them (bounded)
        due = [
            c for c, at in demo_messages.send_times(settings, utcnow()).items() if at <= utcnow()
        ]
        waited = await demo_messages.wait_for_deliveries(engine, due, timeout=SEND_TIMEOUT)
        messages = demo_messages.messages_report(engine, settings, started, utcnow(), waited)
        schedules = await _run_schedules(client, settings, examples / "schedules.yaml")
    say(f"  workflow {wf_id} completed on task queue {settings.task_queue!r}")
    say(
        f"  journey outbox: {handed.commands} command(s) handed to Temporal, "
        f"{handed.started} enrollment(s) started"
        + (f" (skipped: {handed.skipped})" if handed.skipped else "")
    )
    say(
        f"  journeys: {sends['enrollments']} enrollment(s); messages sent {sends['sent']} "
        f"(in the outbox_messages table), suppressed {sends['suppressed']}"
    )
    for place, n in sorted(sends["where"].items()):
        say(f"    {n} enrolled in {place}")
    say("    (`crmflow journeys stats NAME`, `crmflow journeys enrollments NAME`)")
    for line in demo_messages.describe(messages, smtp=bool(settings.smtp_host)):
        say(line, markup=False, highlight=False)
    applied = schedules["applied"]
    say(
        f"  schedules from {examples / 'schedules.yaml'}: "
        + ", ".join(f"{c['schedule']} {c['action']}" for c in applied)
    )
    for run in schedules["runs"]:
        counts = ", ".join(f"{k} {v:g}" for k, v in run["counts"].items()) or "nothing to do"
        say(f"    ran {run['schedule']} for {run['run_date']}: {run['status']}; {counts}")
    say("    (`crmflow schedules list`, `crmflow schedules runs NAME`)")
    if as_json:
        data = {
            "imports": [r.as_dict() for r in reports],
            "sign_ups": [r.as_dict() for r in sign_ups],
            "redemption": redeemed,
            "workflow_id": wf_id,
            "journeys": {"dispatched": handed.__dict__, **sends},
            "messages": messages.model_dump(mode="json"),
            "schedules": schedules,
            "kpi": snap.model_dump(mode="json") | {"repurchase_rate": snap.repurchase_rate},
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(
        title=f"Programme in the {snap.window_days} days to {snap.as_of:%Y-%m-%d %H:%M} UTC"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("customers", snap.customers),
        ("  by stage", ", ".join(f"{k} {v}" for k, v in sorted(snap.by_stage.items()))),
        ("  consented", ", ".join(f"{k} {v}" for k, v in sorted(snap.consent.items()))),
        ("events stored", snap.events),
        ("  by type", ", ".join(f"{k} {v}" for k, v in sorted(snap.events_by_type.items()))),
        ("active customers", snap.active_customers),
        ("buyers", snap.buyers),
        ("repeat buyers", snap.repeat_buyers),
        ("repurchase rate", f"{snap.repurchase_rate:.1%}"),
        ("revenue", f"{snap.revenue:,.2f}"),
        ("members per tier", ", ".join(f"{k} {v}" for k, v in sorted(snap.tiers.items()))),
        ("points issued", f"{snap.points_issued:,.0f}"),
        ("points outstanding", f"{snap.points_outstanding:,.0f}"),
        ("tags", ", ".join(f"{k} {v}" for k, v in snap.tags.items())),
        ("open retention tasks", snap.open_tasks),
        ("journey commands queued", snap.journey_commands_pending),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if settings.embedded:
        console.print(
            f"Workflow history is kept in {settings.home / 'temporal.db'}. "
            f"`crmflow up` keeps the stack running (Web UI http://127.0.0.1:"
            f"{settings.embedded_ui_port}/namespaces/{settings.temporal_namespace}/workflows)."
        )
