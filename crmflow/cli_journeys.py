"""`crmflow journeys …`: validate a journey file and publish the journey file's JSON Schema."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from journeys.models import EventEntry, Journey, MessageNode, SegmentEntry
from journeys.validate import LoadedJourney, load_journey
from rules.source import RuleFileError

journeys_app = typer.Typer(help="Customer journeys: validate, schema.", no_args_is_help=True)

FileArg = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="A journey file (.yaml)"),
]
ProgramOpt = Annotated[
    Path | None,
    typer.Option(
        "--program",
        exists=True,
        dir_okay=False,
        help="Programme file (default: program.yaml beside the journey's folder or its parent)",
    ),
]
EventsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        help="A known event type (repeat the option); when given, other event types are errors",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _cli() -> Any:
    from crmflow import cli

    return cli


def _entry(journey: Journey) -> dict[str, Any]:
    entry = journey.entry
    if isinstance(entry, EventEntry):
        return {"kind": "event", "event": entry.event, "when": entry.when is not None}
    if isinstance(entry, SegmentEntry):
        return {"kind": "segment", "schedule": entry.schedule, "once": entry.once}
    return {"kind": "rule"}


def _entry_text(entry: dict[str, Any]) -> str:
    if entry["kind"] == "event":
        return f"on event {entry['event']}" + (" (with a condition)" if entry["when"] else "")
    if entry["kind"] == "segment":
        return f"segment on schedule {entry['schedule']!r}" if entry["schedule"] else "segment once"
    return "by a rule's enroll_journey"


def summary(loaded: LoadedJourney) -> dict[str, Any]:
    """What `validate` reports about a valid journey."""
    j = loaded.journey
    used = sorted({n.channel for n in j.nodes.values() if isinstance(n, MessageNode)})
    return {
        "ok": True,
        "file": loaded.path,
        "program": loaded.program_path,
        "journey": j.journey,
        "entry": _entry(j),
        "start": j.start,
        "nodes": {nid: node.type for nid, node in j.nodes.items()},
        "node_types": dict(Counter(node.type for node in j.nodes.values())),
        "channels": used,
        "goal": j.goal.model_dump(mode="json", exclude_none=True) if j.goal else None,
    }


@journeys_app.command("validate")
def validate(
    file: FileArg,
    program: ProgramOpt = None,
    events: EventsOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Check a journey file; every problem with its line and node."""
    try:
        loaded = load_journey(file, program, events or None)
    except RuleFileError as exc:
        if as_json:
            _cli().emit_json({"ok": False, "errors": [e.__dict__ for e in exc.errors]})
        else:
            for e in exc.errors:
                _cli().err.print(f"[red]{e}[/]", highlight=False)
            _cli().err.print(f"{len(exc.errors)} problem(s) found")
        raise typer.Exit(1) from exc
    data = summary(loaded)
    if as_json:
        _cli().emit_json(data)
        return
    kinds = ", ".join(f"{n} {t}" for t, n in data["node_types"].items())
    _cli().console.print(
        f"ok: journey {data['journey']!r}, entered {_entry_text(data['entry'])}; "
        f"{len(data['nodes'])} nodes ({kinds}); channels: {', '.join(data['channels']) or 'none'}"
        f"; programme {data['program']}",
        highlight=False,
    )


@journeys_app.command("schema")
def schema(out: Annotated[Path | None, typer.Option(help="Write to this file")] = None) -> None:
    """Print the JSON Schema of journey files for editors."""
    doc = Journey.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crmflow journey file"
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        _cli().console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)
