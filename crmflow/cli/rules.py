"""`crmflow rules …`: validate, publish the schema, dry-run, deploy and list rules versions.

A thin face over `crmflow.services.rules`: parse the options, call one service, present
its result. Service errors become `error: …` and exit code 1 in one place (`_service`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from crmflow.cli import common
from crmflow.domain import Event, describe_errors
from crmflow.ingest import read_json_lines
from crmflow.services import rules as service
from crmflow.services.runtime import Runtime
from rules.explain import RuleExplanation
from store.db import make_engine

if TYPE_CHECKING:
    from crmflow.event_chunks import StoredEvents

rules_app = typer.Typer(
    help="Loyalty rules: validate, schema, test, deploy, versions.", no_args_is_help=True
)

DirArg = Annotated[
    Path, typer.Argument(exists=True, file_okay=False, help="Folder of rule files (*.yaml)")
]
ProgramOpt = Annotated[
    Path | None,
    typer.Option(
        "--program",
        exists=True,
        dir_okay=False,
        help="Programme file (default: program.yaml in the folder or its parent)",
    ),
]
JourneysOpt = Annotated[
    Path | None,
    typer.Option(
        "--journeys",
        exists=True,
        file_okay=False,
        help="Folder of journey files: rules may name only these journeys (checked with them)",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _service(as_json: bool = False) -> AbstractContextManager[None]:
    """A pack's problems one per line (or as JSON), anything else as `error: …`."""
    return common.file_problems(service.RulesInvalid, as_json)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        hint = " (--journeys DIR checks them)" if w.startswith("journey names") else ""
        common.console.print(f"[yellow]warning:[/] {w}{hint}", highlight=False)


def _runtime(*, write: bool = False) -> Runtime:
    settings = common.load_settings()
    engine = common.migrated_engine(settings) if write else common.existing_engine(settings)
    return Runtime(settings, engine)


@rules_app.command("validate")
def validate(
    rules_dir: DirArg,
    program: ProgramOpt = None,
    journeys: JourneysOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Check the programme and rule files (and the journeys they name, with --journeys);
    every problem with its file and line."""
    src = service.RulesFolder(folder=rules_dir, program=program, journeys=journeys)
    with _service(as_json):
        summary = service.validate(src)
    if as_json:
        common.emit_json(
            summary.model_dump(include={"ok", "version", "program", "files", "rules", "warnings"})
        )
        return
    _warn(summary.warnings)
    common.console.print(
        f"ok: {len(summary.rules)} rules in {len(summary.files)} files, programme "
        f"{summary.program_name!r} ({summary.program}), version {summary.version}",
        highlight=False,
    )


@rules_app.command("schema")
def schema(
    program: Annotated[bool, typer.Option("--program", help="The programme file's schema")] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
) -> None:
    """Print the JSON Schema of rule files (or of the programme file) for editors."""
    text = json.dumps(service.json_schema(program), indent=2) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        common.console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def _read_events(path: Path) -> list[Event]:
    """One event (a JSON object, on one line or many) or events (JSON Lines)."""
    text = path.read_text(encoding="utf-8").strip()
    try:
        if text.startswith("{") and "\n{" not in text:
            docs = [("event", json.loads(text))]
        else:
            docs = [(f"line {n}", json.loads(line)) for n, line in read_json_lines(path)]
    except json.JSONDecodeError as exc:
        common.fail(f"{path}: not JSON ({exc})")
    events = []
    for where, doc in docs:
        try:
            events.append(Event.model_validate(doc))
        except ValidationError as exc:
            common.fail(f"{path}: {where}: {describe_errors(exc)}")
    return events


_RESULT = {
    "fired": "[green]✓ fired[/]",
    "not_listening": "[dim]not listening[/]",
    "condition_false": "✗ condition false",
    "not_fired": "[red]not fired[/]",
}


def _why(r: RuleExplanation) -> str:
    if r.false_condition is not None:
        return "\n".join(r.false_condition.lines())
    return r.reason.removeprefix("fired: ")


@rules_app.command("test")
def test(
    rules_dir: DirArg,
    event_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="An event (JSON) or events (JSONL)")
    ],
    customer: Annotated[
        str | None, typer.Option(help="Start from this stored customer's profile")
    ] = None,
    program: ProgramOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Explain every rule for each event — fired, not listening to the event's type, or the
    first condition that was false with the values it saw — and what the fired ones would
    change; changing nothing."""
    events = _read_events(event_file)
    if not events:
        common.fail(f"{event_file}: no events")
    if customer is None:
        # no stored profile is read: the database is neither opened nor checked
        settings = common.load_settings()
        rt = Runtime(settings, make_engine(settings.db_url))
    else:
        rt = _runtime()
    with _service(as_json):
        run = service.dry_run(
            rt, service.RulesFolder(folder=rules_dir, program=program), events, customer
        )
    if as_json:
        common.emit_json(
            {
                "version": run.version,
                "customer": run.customer,
                "events": [
                    {
                        "event_id": e.event_id,
                        "type": e.type,
                        "fired": [f.model_dump() for f in e.fired],
                        "changes": [
                            {"rule": c.rule, "kind": c.kind, "skipped": c.skipped, **c.detail}
                            for c in e.changes
                        ],
                        "rules": [r.model_dump() for r in e.rules],
                        "facts": e.facts,
                    }
                    for e in run.events
                ],
            }
        )
        return
    console = common.console
    for res in run.events:
        console.print(
            f"[bold]{res.event_id}[/] ({res.type}): {len(res.fired)} of {len(res.rules)} "
            "rule(s) fire",
            highlight=False,
        )
        rules = Table("rule", "priority", "result", "why")
        for r in res.rules:
            rules.add_row(
                f"{r.rule} [dim]({r.file})[/]",
                str(r.priority),
                _RESULT[r.status],
                escape(_why(r)),
            )
        console.print(rules)
        table = Table("rule", "change", "detail")
        for c in res.changes:
            label = c.kind + (f" [dim](skipped: {c.skipped})[/]" if c.skipped else "")
            table.add_row(c.rule, label, json.dumps(c.detail, ensure_ascii=False, default=str))
        if res.changes:
            console.print(table)
    console.print("(nothing was changed: this was a dry run)")


@rules_app.command("deploy")
def deploy(
    rules_dir: DirArg,
    program: ProgramOpt = None,
    journeys: JourneysOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Store this rules version and make it the active one (events use it from now on).
    With --journeys, rules naming a journey that is not in that folder are refused."""
    src = service.RulesFolder(folder=rules_dir, program=program, journeys=journeys)
    with _service(as_json):
        service.validate(src)  # a bad pack is reported before the database is touched
        done = service.deploy(_runtime(write=True), src)
    if as_json:
        common.emit_json(
            {
                "version": done.version,
                "new": done.new,
                "rules": done.rules,
                "warnings": done.warnings,
                "welcomed": done.welcomed,
            }
        )
    else:
        _warn(done.warnings)
        what = "deployed" if done.new else "re-activated"
        common.console.print(
            f"{what} rules version {done.version} ({done.rules} rules); "
            "new events use it from now on",
            highlight=False,
        )
        if done.welcomed:
            common.console.print(
                f"{done.welcomed} member(s) without a tier start in the welcome tier",
                highlight=False,
            )


@rules_app.command("versions")
def versions(as_json: JsonFlag = False) -> None:
    """List deployed rules versions; the active one is marked."""
    with _service(as_json):
        rows = service.list_versions(_runtime())
    if as_json:
        common.emit_json([r.model_dump() for r in rows])
        return
    table = Table("version", "deployed at", "rules", "from", "active")
    for r in rows:
        table.add_row(
            r.version,
            f"{r.deployed_at:%Y-%m-%d %H:%M:%S}",
            str(r.rule_count),
            r.source or "",
            "✓" if r.active else "",
        )
    common.console.print(table)


def process_command(as_json: bool) -> None:
    """`crmflow events process` (wired by the app): run pending events through the rules."""
    with _service(as_json):
        report = service.process(_runtime(write=True))
    if as_json:
        common.emit_json(report.model_dump() | {"at": report.at.isoformat()})
    elif report.version is None and report.processed == 0:
        common.console.print("nothing to do (no pending events, or no rules version deployed)")
    else:
        common.console.print(
            f"processed {report.processed} events with rules {report.version}: "
            f"{report.rules_fired} rules fired, {report.changes} changes",
            highlight=False,
        )


def follow_command(workers: int | None) -> None:
    """`crmflow events process --follow` (wired by the app): process stored events as they
    arrive, until Ctrl-C."""
    from crmflow.services.events import event_processor

    processor = event_processor(_runtime(write=True), workers)

    def report(done: StoredEvents) -> None:
        common.console.print(
            f"processed {done.processed} events with rules {done.rules_version}: "
            f"{done.rules_fired} rules fired",
            highlight=False,
        )

    processor.on_round = report
    common.console.print(
        f"processing stored events as they arrive ({processor.workers} process(es)); Ctrl-C stops",
        highlight=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        processor.run()


@rules_app.command("facts")
def facts(
    program: Annotated[
        Path, typer.Option("--program", exists=True, dir_okay=False, help="Programme file")
    ] = Path("examples/program.yaml"),
    as_json: JsonFlag = False,
) -> None:
    """List the facts conditions can test, with their types and operators."""
    with _service(as_json):
        rows = service.list_facts(service.load_program_file(program))
    if as_json:
        common.emit_json([r.model_dump() for r in rows])
        return
    table = Table("fact", "type", "operators", "meaning")
    for r in rows:
        table.add_row(r.fact, r.type, " ".join(r.operators), r.description)
    common.console.print(table)
