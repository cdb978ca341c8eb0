"""`crmflow segments …`: preview how many customers a condition matches, and which.

A thin face over `crmflow.services.segments`; service errors become `error: …`, exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crmflow.cli import common
from crmflow.services import segments as service
from crmflow.services.errors import ServiceError
from crmflow.services.rules import load_program_file
from crmflow.services.runtime import Runtime

segments_app = typer.Typer(
    help="Segments: preview the customers a condition matches.", no_args_is_help=True
)


@segments_app.command("preview")
def preview(
    when: Annotated[
        str,
        typer.Option(
            "--when",
            help="A condition in the rules' language, as YAML or JSON: "
            "'tags contains vip' or '{all: [tier == gold, consent.email == true]}'",
        ),
    ],
    program: Annotated[
        Path | None,
        typer.Option(
            "--program",
            exists=True,
            dir_okay=False,
            help="Programme file typing the facts (default: the active rules version's)",
        ),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(min=0, max=service.MAX_SAMPLE, help="Matching customer ids to show"),
    ] = 20,
    as_json: common.JsonFlag = False,
) -> None:
    """Count the customers a condition matches now and show some of them (changes nothing)."""
    settings = common.load_settings()
    rt = Runtime(settings, common.existing_engine(settings))
    try:
        prog = load_program_file(program) if program is not None else None
        found = service.preview(rt, service.SegmentQuery(condition=when, sample=sample), prog)
    except ServiceError as exc:
        common.fail(str(exc))
    finally:
        rt.close()
    if as_json:
        common.emit_json(found.model_dump(mode="json"))
        return
    rules = f"rules version {found.rules_version}" if found.rules_version else "the given programme"
    common.console.print(
        f"{found.matched} of {found.customers} customers match "
        f"(facts at {found.at:%Y-%m-%d %H:%M:%S} UTC, typed by {rules})",
        highlight=False,
    )
    if found.sample:
        more = found.matched - len(found.sample)
        common.console.print(
            "  " + ", ".join(found.sample) + (f" … and {more} more" if more > 0 else ""),
            highlight=False,
        )
