"""The `crmflow` command line: one console script for marketers, project managers and operators."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from crmflow.cli.common import (
    JsonFlag,
    console,
    emit_json,
    err,
    existing_engine,
    fail,
    load_settings,
    masked_url,
    migrated_engine,
    print_report,
    runtime,
)
from crmflow.cli.journeys import journeys_app
from crmflow.cli.keys import keys_app
from crmflow.cli.model import model_app
from crmflow.cli.operations import tasks_app
from crmflow.cli.outbox import outbox_app
from crmflow.cli.points import points_app
from crmflow.cli.projects import project_app
from crmflow.cli.rewards import rewards_app
from crmflow.cli.rules import follow_command, process_command, rules_app
from crmflow.cli.schedules import schedules_app
from crmflow.cli.segments import segments_app
from crmflow.cli.users import users_app
from crmflow.ingest import ImportError_, Kind, import_file
from crmflow.ingest_report import IngestReport
from crmflow.processing import ConcurrentProcessing
from crmflow.services import privacy
from crmflow.services.keys import Principal
from crmflow.services.permissions import Role
from crmflow.temporal import TemporalSetupError, exit_skipping_finalizers
from rules.source import SourceError
from store.db import make_engine
from store.migrate import current_revision

app = typer.Typer(
    help="crmflow: customer journeys, loyalty rules and rollout projects on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
customers_app = typer.Typer(help="Customer profiles: import.", no_args_is_help=True)
events_app = typer.Typer(help="Customer events: import, process.", no_args_is_help=True)
customer_app = typer.Typer(
    help="One customer: show; export everything stored, erase personal data.",
    no_args_is_help=True,
)
app.add_typer(customers_app, name="customers")
app.add_typer(events_app, name="events")
app.add_typer(customer_app, name="customer")
app.add_typer(points_app, name="points")
app.add_typer(rewards_app, name="rewards")
app.add_typer(rules_app, name="rules")
app.add_typer(journeys_app, name="journeys")
app.add_typer(project_app, name="project")
app.add_typer(schedules_app, name="schedules")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(segments_app, name="segments")
app.add_typer(tasks_app, name="tasks")
app.add_typer(outbox_app, name="outbox")
app.add_typer(model_app, name="model")


@app.command()
def migrate(as_json: JsonFlag = False) -> None:
    """Create or upgrade the database schema (Alembic) to the newest version."""
    settings = load_settings()
    engine = migrated_engine(settings)
    result = {"database": engine.url.render_as_string(), "revision": current_revision(engine)}
    if as_json:
        emit_json(result)
    else:
        console.print(f"schema at {result['revision']} in {result['database']}")


@app.command("settings")
def show_settings(as_json: JsonFlag = False) -> None:
    """Show the settings in force (environment and crmflow.toml)."""
    s = load_settings()
    data = s.model_dump(mode="json")
    if data.get("database_url"):
        data["database_url"] = masked_url(data["database_url"])
    data |= {
        "effective_database_url": masked_url(s.db_url),
        "temporal_target": s.temporal_target,
        "embedded": s.embedded,
    }
    if as_json:
        emit_json(data)
        return
    table = Table("setting", "value", title="crmflow settings")
    for k, v in data.items():
        table.add_row(k, str(v))
    console.print(table)


def _import(kind: Kind, path: Path, as_json: bool, workers: int | None = None) -> IngestReport:
    settings = load_settings()
    engine = migrated_engine(settings)
    size = path.stat().st_size
    with Progress(
        f"importing {kind}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as bar:
        task = bar.add_task(kind, total=size)
        try:
            report = import_file(
                engine,
                path,
                kind,
                phone_region=settings.default_phone_region,
                chunk_size=settings.import_chunk_size,
                on_progress=lambda done: bar.update(task, completed=done),
                workers=workers or settings.import_workers,
            )
        except ImportError_ as exc:
            fail(str(exc))
        except UnicodeDecodeError as exc:
            fail(f"{path}: not UTF-8 text ({exc})")
        except ConcurrentProcessing as exc:
            fail(
                f"{path}: {exc}; that chunk was rolled back (earlier chunks are kept). "
                "Import the file again: what is already stored is skipped."
            )
        except SourceError as exc:
            fail(f"the active rules version does not load:\n{exc}")
    if as_json:
        emit_json(report.as_dict())
    else:
        print_report(report)
    return report


FileArg = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="A .jsonl or .csv file"),
]


@customers_app.command("import")
def customers_import(path: FileArg, as_json: JsonFlag = False) -> None:
    """Import customer profiles (upsert by customer_id; bad rows go to a rejects file)."""
    report = _import("customers", path, as_json)
    if report.rejected and report.rejected == report.received:  # not one row validated
        raise typer.Exit(1)


@events_app.command("import")
def events_import(
    path: FileArg,
    as_json: JsonFlag = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=32,
            help="processes storing a file longer than one chunk, each taking a share of "
            "the customers [default: import_workers, one per core up to 4]",
        ),
    ] = None,
) -> None:
    """Import events (once per event_id; bad rows, and events whose id is stored with other
    content, go to a rejects file)."""
    report = _import("events", path, as_json, workers)
    if report.rejected and report.rejected == report.received:  # not one row validated
        raise typer.Exit(1)


@events_app.command("process")
def events_process(
    as_json: JsonFlag = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="keep running: process stored events as they arrive (what `crmflow api` "
            "runs beside the server) until Ctrl-C",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=32,
            help="with --follow: processes running the rules, each taking a share of the "
            "customers [default: import_workers]",
        ),
    ] = None,
) -> None:
    """Run stored events that no rules version has processed yet through the active one."""
    if follow:
        follow_command(workers)
    else:
        process_command(as_json)


@customer_app.command("show")
def customer_show(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    as_json: JsonFlag = False,
) -> None:
    """Show one customer: profile, tags, points, tier and progress, events, journeys, tasks."""
    from crmflow.services.customers import customer_360
    from crmflow.services.errors import ServiceError
    from crmflow.services.runtime import Runtime

    settings = load_settings()
    rt = Runtime(settings, existing_engine(settings))
    try:
        view = customer_360(rt, customer_id, mask=False)
    except ServiceError as exc:
        fail(str(exc))
    finally:
        rt.close()
    if as_json:
        sys.stdout.write(view.model_dump_json(indent=2) + "\n")
        return
    table = Table("field", "value", title=f"customer {customer_id}", show_header=False)
    for key, value in view.model_dump(mode="json").items():
        table.add_row(
            key,
            json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value),
        )
    console.print(table)


def _cli_principal() -> Principal:
    """Who acts from the command line: the operating system's user, with the CLI's full
    access to the database (as an admin)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(kind="cli", id=user[:100], name=user[:100], role=Role.admin)


def _private_file(path: Path) -> int:
    """`path` opened for writing, created or emptied, readable by its owner only (0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    return fd


@customer_app.command("export")
def customer_export(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", dir_okay=False, help="Write the JSON to this file (mode 0600), not stdout"
        ),
    ] = None,
) -> None:
    """Export everything stored about one customer as one JSON document: profile, consent
    and its changes, events, tags, points, tiers, audit trail, messages with their content,
    tasks, coupons, journey enrollments (and their state in Temporal, or why it is missing).
    Recorded in the privacy log (who, when, how many rows; no personal data)."""
    fd = _private_file(out) if out is not None else None
    try:
        with runtime(write=True) as rt:
            doc = asyncio.run(privacy.export_customer(rt, customer_id, who=_cli_principal()))
    except BaseException:
        if fd is not None and out is not None:
            os.close(fd)
            out.unlink(missing_ok=True)
        raise
    text = doc.model_dump_json(indent=2) + "\n"
    if fd is None:
        sys.stdout.write(text)
    else:
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        rows = sum(doc.counts.values())
        console.print(
            f"customer {customer_id}: {rows} rows from {len(doc.counts)} tables written to "
            f"{out} (readable by its owner only)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if not doc.journeys.temporal.reachable:
        err.print(
            f"Temporal: {doc.journeys.temporal.note}", highlight=False, markup=False, soft_wrap=True
        )
    else:
        exit_skipping_finalizers(0)  # a Temporal client was used (see the function)


@customer_app.command("erase")
def customer_erase(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Really erase (without it: say what would happen)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Erase one customer's personal data from every table, keeping the id as a
    pseudonymous tombstone (counts, the KPI digest and points totals do not change); end
    running journey enrollments; reject later imports of the id. Without --yes nothing is
    changed: it says what would happen. Recorded in the privacy log."""
    with runtime(write=True) as rt:
        report = asyncio.run(
            privacy.erase_customer(rt, customer_id, who=_cli_principal(), dry_run=not yes)
        )
    if as_json:
        emit_json(report.model_dump(mode="json"))
    elif not yes:
        again = f" (erased before, on {report.erased_at:%Y-%m-%d})" if report.erased_at else ""
        console.print(
            f"erasing customer {customer_id}{again} would change these rows about them:",
            highlight=False,
            markup=False,
        )
        console.print(
            "  " + ", ".join(f"{t} {n}" for t, n in report.rows.items() if n),
            highlight=False,
            markup=False,
        )
        for line in report.what_happens:
            console.print(f"  - {line}", highlight=False, markup=False)
        if report.enrollments_ended:
            console.print(
                f"  running enrollments to end: {', '.join(report.enrollments_ended)}",
                highlight=False,
                markup=False,
            )
    else:
        changed = ", ".join(f"{t} {n}" for t, n in report.rows.items() if n)
        console.print(
            f"customer {customer_id} erased on {report.erased_at:%Y-%m-%d %H:%M} UTC "
            f"(privacy log entry {report.log_id}); rows changed: {changed or 'none'}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        if report.enrollments_ended:
            console.print(
                f"enrollments ended: {', '.join(report.enrollments_ended)}",
                highlight=False,
                markup=False,
            )
        if report.temporal is not None:
            console.print(
                f"Temporal: {report.temporal.note}", highlight=False, markup=False, soft_wrap=True
            )
    if not yes:
        fail("nothing was erased: run again with --yes to erase")
    if report.temporal is not None and report.temporal.reachable:
        exit_skipping_finalizers(0)  # a Temporal client was used (see the function)


@app.command()
def worker() -> None:
    """Run one worker against the configured Temporal and database (same as `python worker.py`)."""
    import worker as worker_module

    load_settings()
    try:
        worker_module.main()
    except TemporalSetupError as exc:
        fail(str(exc))
    exit_skipping_finalizers(0)


@app.command()
def up() -> None:
    """Run the embedded stack (dev server with Web UI), a worker, the API and the web console
    until Ctrl-C."""
    from crmflow.api.serve import serve_until
    from crmflow.stack import run_up

    settings = load_settings()
    migrated_engine(settings).dispose()
    try:
        asyncio.run(run_up(settings, console, lambda stop: serve_until(settings, stop)))
    except TemporalSetupError as exc:
        fail(str(exc))
    exit_skipping_finalizers(0)


DEFAULT_UNSUBSCRIBE_SECRET = "crmflow-embedded-unsubscribe-secret-change-me"


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8080,
    certfile: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="TLS certificate (PEM): serve HTTPS [api_certfile]"),
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(dir_okay=False, help="TLS private key (PEM) [api_keyfile]")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=32,
            help="server processes (PostgreSQL: about one per core; SQLite: keep 1, its "
            "one write lock makes more processes slower)",
        ),
    ] = 1,
    process: Annotated[
        bool,
        typer.Option(
            "--process/--no-process",
            help="run an event processor beside the server: it applies the rules to events "
            "accepted with `Prefer: respond-async` (one per database works at a time; "
            "--no-process when `crmflow events process --follow` runs elsewhere)",
        ),
    ] = True,
) -> None:
    """Serve the HTTP API (/api/v1, keys required) and the unsubscribe pages until Ctrl-C."""
    import uvicorn

    from crmflow.api import create_app
    from crmflow.api.app import FACTORY
    from crmflow.services.runtime import Runtime

    settings = load_settings()
    secret = settings.unsubscribe_secret.get_secret_value()
    if not _loopback(host) and secret == DEFAULT_UNSUBSCRIBE_SECRET:
        fail(
            f"refusing to listen on {host}: the unsubscribe secret is the built-in default, "
            "so anyone could unsubscribe any customer. Set CRMFLOW_UNSUBSCRIBE_SECRET to a "
            "long random value, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    certfile = certfile or settings.api_certfile
    keyfile = keyfile or settings.api_keyfile
    if (certfile is None) != (keyfile is None):
        fail("give both --certfile and --keyfile (or neither)")
    for f in (certfile, keyfile):
        if f is not None and not f.is_file():
            fail(f"no such file: {f}")
    engine = migrated_engine(settings)
    scheme = "https" if certfile else "http"
    processes = f" ({workers} processes)" if workers > 1 else ""
    console.print(
        f"crmflow API on {scheme}://{host}:{port}/api/v1{processes} (make a key: `crmflow keys "
        f"create`); unsubscribe links point at {settings.public_base_url}",
        highlight=False,
    )
    ssl_certfile = str(certfile) if certfile else None
    ssl_keyfile = str(keyfile) if keyfile else None
    rt = Runtime(settings, engine)  # the app's (one process) and the event processor's
    processor = None
    if process:
        from crmflow.services.events import event_processor

        processor = event_processor(rt).start()
    try:
        if workers == 1:
            uvicorn.run(
                create_app(rt),
                host=host,
                port=port,
                log_level="info",
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
        else:
            # each process builds its own app, engine and rules runtime from the same
            # settings (environment and crmflow.toml): uvicorn needs an import string
            engine.dispose()
            uvicorn.run(
                FACTORY,
                factory=True,
                workers=workers,
                host=host,
                port=port,
                log_level="info",
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
    finally:
        if processor is not None:
            processor.stop()
        engine.dispose()


@app.command("api-schema")
def api_schema(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the schema to this file, not stdout")
    ] = None,
) -> None:
    """Print the HTTP API's OpenAPI schema (JSON), generated from the pydantic models."""
    from crmflow.api import create_app
    from crmflow.services.runtime import Runtime

    settings = load_settings()
    engine = make_engine(settings.db_url)  # not connected: the schema needs no database
    docs = settings.model_copy(update={"api_public_docs": True})
    text = json.dumps(create_app(Runtime(docs, engine)).openapi(), indent=2, ensure_ascii=False)
    engine.dispose()
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n", encoding="utf-8")
        console.print(f"OpenAPI schema written to {out}", highlight=False)


@app.command()
def demo(
    examples: Annotated[
        Path, typer.Option(help="Folder with customers.jsonl and events.jsonl")
    ] = Path("examples"),
    as_json: JsonFlag = False,
) -> None:
    """Set up the embedded stack, load the examples, run a workflow, print what happened."""
    from crmflow.demo import run_demo

    settings = load_settings()
    engine = migrated_engine(settings)
    try:
        asyncio.run(run_demo(settings, engine, examples, console, as_json=as_json))
    except TemporalSetupError as exc:
        fail(str(exc))
    engine.dispose()
    exit_skipping_finalizers(0)
