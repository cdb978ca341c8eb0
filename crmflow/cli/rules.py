"""`crmflow rules …`: validate, publish the schema, dry-run, deploy and list rules versions."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from crmflow.cli import common
from crmflow.formats import Event, describe_errors
from crmflow.processing import evaluate_event, process_pending
from rules.compiler import CompiledPack
from rules.engine import shared_engine
from rules.facts import EventFacts, ProfileState
from rules.models import Program, RuleFile
from rules.pack import load_pack
from rules.source import RuleFileError

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
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _load(rules_dir: Path, program: Path | None, as_json: bool) -> tuple[CompiledPack, Any]:
    try:
        return load_pack(rules_dir, program)
    except RuleFileError as exc:
        if as_json:
            common.emit_json({"ok": False, "errors": [e.__dict__ for e in exc.errors]})
        else:
            for e in exc.errors:
                common.err.print(f"[red]{e}[/]", highlight=False, soft_wrap=True)
            common.err.print(f"{len(exc.errors)} problem(s) found")
        raise typer.Exit(1) from exc


@rules_app.command("validate")
def validate(rules_dir: DirArg, program: ProgramOpt = None, as_json: JsonFlag = False) -> None:
    """Check the programme and rule files; every problem with its file and line."""
    pack, source = _load(rules_dir, program, as_json)
    if as_json:
        common.emit_json(
            {
                "ok": True,
                "version": pack.version,
                "program": source.program_path,
                "files": [name for name, _ in source.files],
                "rules": [
                    {"name": r.rule.name, "file": r.file, "priority": r.rule.priority}
                    for r in pack.ordered({r.index for r in pack.rules})
                ],
            }
        )
        return
    common.console.print(
        f"ok: {len(pack.rules)} rules in {len(source.files)} files, programme "
        f"{pack.program.program!r} ({source.program_path}), version {pack.version}",
        highlight=False,
    )


@rules_app.command("schema")
def schema(
    program: Annotated[bool, typer.Option("--program", help="The programme file's schema")] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file")] = None,
) -> None:
    """Print the JSON Schema of rule files (or of the programme file) for editors."""
    model = Program if program else RuleFile
    doc = model.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crmflow programme file" if program else "crmflow rule file"
    text = json.dumps(doc, indent=2) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        common.console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


def _read_events(path: Path) -> list[Event]:
    text = path.read_text(encoding="utf-8").strip()
    try:
        docs = (
            [json.loads(text)]
            if text.startswith("{") and "\n{" not in text
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        common.fail(f"{path}: not JSON ({exc})")
    events = []
    for n, doc in enumerate(docs, start=1):
        try:
            events.append(Event.model_validate(doc))
        except ValidationError as exc:
            common.fail(f"{path}: event {n}: {describe_errors(exc)}")
    return events


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
    """Show which rules would fire, why, and what they would change — changing nothing."""
    pack, _ = _load(rules_dir, program, as_json)
    events = _read_events(event_file)
    if not events:
        common.fail(f"{event_file}: no events")
    state = _start_state(pack, customer, events[0])
    results: list[dict[str, Any]] = []
    engine = shared_engine()
    for ev in events:
        facts, outcome = evaluate_event(
            pack,
            engine,
            state,
            EventFacts(ev.event_id, ev.type, ev.occurred_at, ev.properties),
            explain=True,
        )
        fired = [r for r in pack.rules if r.rule.name in outcome.fired]
        results.append(
            {
                "event_id": ev.event_id,
                "type": ev.type,
                "fired": [
                    {
                        "rule": r.rule.name,
                        "file": r.file,
                        "priority": r.rule.priority,
                        "because": {f: _plain(facts.get(f)) for f in dict.fromkeys(r.facts)},
                    }
                    for r in sorted(fired, key=lambda r: outcome.fired.index(r.rule.name))
                ],
                "changes": [
                    {
                        "rule": c.rule,
                        "kind": c.kind,
                        "skipped": c.skipped,
                        **{k: _plain(v) for k, v in c.detail.items()},
                    }
                    for c in outcome.changes
                ],
            }
        )
    if as_json:
        common.emit_json(
            {"version": pack.version, "customer": state.customer_id, "events": results}
        )
        return
    console = common.console
    for res in results:
        console.print(
            f"[bold]{res['event_id']}[/] ({res['type']}): {len(res['fired'])} rule(s) fire",
            highlight=False,
        )
        for f in res["fired"]:
            why = ", ".join(f"{k}={v}" for k, v in f["because"].items()) or "always"
            console.print(
                f"  ✓ {f['rule']} (priority {f['priority']}, {f['file']}) because {why}",
                highlight=False,
            )
        table = Table("rule", "change", "detail")
        for c in res["changes"]:
            detail = {k: v for k, v in c.items() if k not in ("rule", "kind", "skipped")}
            label = c["kind"] + (f" [dim](skipped: {c['skipped']})[/]" if c["skipped"] else "")
            table.add_row(c["rule"], label, json.dumps(detail, ensure_ascii=False, default=str))
        if res["changes"]:
            console.print(table)
    console.print("(nothing was changed: this was a dry run)")


def _plain(v: Any) -> Any:
    if isinstance(v, set):
        return sorted(v)
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _start_state(pack: CompiledPack, customer: str | None, first: Event) -> ProfileState:
    if customer is None:
        return ProfileState(customer_id=first.customer_id, created_at=first.occurred_at)
    from datetime import timedelta

    from crmflow.processing import HISTORY_DAYS
    from store.rule_state import load_states

    engine = common.existing_engine(common.load_settings())
    with engine.connect() as conn:
        states = load_states(
            conn,
            [customer],
            first.occurred_at - timedelta(days=HISTORY_DAYS),
            purchase_event=pack.program.purchase_event,
            spend_property=pack.program.spend_property,
            follow_up_event=pack.program.follow_up_event,
        )
    if customer not in states:
        common.fail(f"no customer with id {customer!r}")
    return states[customer]


@rules_app.command("deploy")
def deploy(rules_dir: DirArg, program: ProgramOpt = None, as_json: JsonFlag = False) -> None:
    """Store this rules version and make it the active one (events use it from now on)."""
    from store.rule_versions import deploy as store_deploy

    pack, source = _load(rules_dir, program, as_json)
    engine = common.migrated_engine(common.load_settings())
    with engine.begin() as conn:
        new = store_deploy(conn, pack.version, source, len(pack.rules), str(rules_dir))
    result = {"version": pack.version, "new": new, "rules": len(pack.rules)}
    if as_json:
        common.emit_json(result)
    else:
        what = "deployed" if new else "re-activated"
        common.console.print(
            f"{what} rules version {pack.version} ({len(pack.rules)} rules); "
            "new events use it from now on",
            highlight=False,
        )


@rules_app.command("versions")
def versions(as_json: JsonFlag = False) -> None:
    """List deployed rules versions; the active one is marked."""
    from store.rule_versions import list_versions

    engine = common.existing_engine(common.load_settings())
    with engine.connect() as conn:
        rows = list_versions(conn)
    if as_json:
        common.emit_json([r.__dict__ for r in rows])
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
    engine = common.migrated_engine(common.load_settings())
    report = process_pending(engine)
    data = {
        "processed": report.events,
        "rules_fired": report.rules_fired,
        "changes": report.changes,
        "version": report.version,
        "at": datetime.now(UTC).isoformat(),
    }
    if as_json:
        common.emit_json(data)
    elif report.version is None and report.events == 0:
        common.console.print("nothing to do (no pending events, or no rules version deployed)")
    else:
        common.console.print(
            f"processed {report.events} events with rules {report.version}: "
            f"{report.rules_fired} rules fired, {report.changes} changes",
            highlight=False,
        )


@rules_app.command("facts")
def facts(
    program: Annotated[
        Path, typer.Option("--program", exists=True, dir_okay=False, help="Programme file")
    ] = Path("examples/program.yaml"),
    as_json: JsonFlag = False,
) -> None:
    """List the facts conditions can test, with their types and operators."""
    from rules.facts import FIXED_FACTS
    from rules.pack import OPS_FOR, load_program
    from rules.source import load_yaml

    prog = load_program(load_yaml(program))
    rows = [(name, kind, text) for name, (kind, text) in FIXED_FACTS.items()]
    rows += [
        (f"event.{p}", k, "declared in event_properties") for p, k in prog.event_properties.items()
    ]
    rows += [("consent.<channel>", "boolean", "marketing consent for a channel")]
    rows += [(f"attributes.{a}", k, "declared in attributes") for a, k in prog.attributes.items()]
    rows += [("attributes.<name>", "any", "any other customer attribute")]
    if as_json:
        common.emit_json(
            [
                {"fact": n, "type": k, "operators": sorted(OPS_FOR[k]), "description": t}
                for n, k, t in rows
            ]
        )
        return
    table = Table("fact", "type", "operators", "meaning")
    for n, k, t in rows:
        table.add_row(n, k, " ".join(sorted(OPS_FOR[k])), t)
    common.console.print(table)
