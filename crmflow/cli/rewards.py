"""`crmflow rewards …`: validate, publish the schema of, apply and list the rewards
catalogue (`rewards.yaml`). A thin face over `crmflow.services.rewards`."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table

from crmflow.cli import common
from crmflow.services import rewards as service
from crmflow.services.runtime import Runtime
from rules.pack import PROGRAM_FILE
from store.db import make_engine
from store.migrate import current_revision, head_revision

rewards_app = typer.Typer(
    help="The rewards catalogue: validate, schema, apply, list.", no_args_is_help=True
)

FileArg = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="A rewards file (rewards.yaml)")
]


def _service(as_json: bool = False) -> AbstractContextManager[None]:
    """A catalogue's problems one per line (or as JSON), anything else as `error: …`."""
    return common.file_problems(service.RewardsInvalid, as_json)


def _database_if_ready() -> Runtime | None:
    """The configured database when its schema is at head (for the active programme);
    None otherwise: validating a file never creates or migrates one."""
    settings = common.load_settings()
    engine = make_engine(settings.db_url)
    try:
        ready = current_revision(engine) == head_revision()
    except Exception:  # no database there yet, or it does not answer
        ready = False
    if not ready:
        engine.dispose()
        return None
    return Runtime(settings, engine)


@rewards_app.command("validate")
def validate(
    path: FileArg,
    program: Annotated[
        Path | None,
        typer.Option(
            "--program",
            exists=True,
            dir_okay=False,
            help=f"Programme file whose tiers `min_tier` names (default: {PROGRAM_FILE} beside "
            "the rewards file, else the active rules version)",
        ),
    ] = None,
    as_json: common.JsonFlag = False,
) -> None:
    """Check a rewards file; every problem with its file and line. Stores nothing."""
    rt = None
    if program is None and not (path.parent / PROGRAM_FILE).is_file():
        rt = _database_if_ready()
    try:
        with _service(as_json):
            summary = service.validate(rt, path, program)
    finally:
        if rt is not None:
            rt.close()
    if as_json:
        common.emit_json(summary.model_dump(mode="json"))
        return
    checked = f", tiers checked against {summary.program}" if summary.program else ""
    common.console.print(f"ok: {len(summary.rewards)} rewards{checked}", highlight=False)


@rewards_app.command("schema")
def schema(out: Annotated[Path | None, typer.Option(help="Write to this file")] = None) -> None:
    """Print the JSON Schema of rewards files for editors."""
    text = json.dumps(service.json_schema(), indent=2) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
        common.console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@rewards_app.command("apply")
def apply(
    path: FileArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; change nothing")
    ] = False,
    as_json: common.JsonFlag = False,
) -> None:
    """Make the file the catalogue: create or update its rewards, withdraw the ones it leaves
    out (their redemptions and issued counts stay). Tiers are checked against the active
    rules version."""
    with common.runtime(write=True) as rt, _service(as_json):
        done = service.apply(rt, path, dry_run=dry_run)
    if as_json:
        common.emit_json(done.model_dump(mode="json"))
        return
    verb = "would apply" if done.dry_run else "applied"
    common.console.print(
        f"{verb} {path}: {len(done.created)} created, {len(done.updated)} updated, "
        f"{len(done.unchanged)} unchanged, {len(done.withdrawn)} withdrawn",
        highlight=False,
        soft_wrap=True,
    )
    for label, ids in (
        ("created", done.created),
        ("updated", done.updated),
        ("withdrawn", done.withdrawn),
    ):
        if ids:
            common.console.print(f"  {label}: {', '.join(ids)}", highlight=False)


@rewards_app.command("list")
def list_(
    withdrawn: Annotated[
        bool, typer.Option("--withdrawn", help="Also list withdrawn rewards")
    ] = False,
    as_json: common.JsonFlag = False,
) -> None:
    """The catalogue: each reward's cost, stock left and status as of now."""
    with common.runtime(write=True) as rt, _service(as_json):
        rows = service.list_rewards(rt, withdrawn=withdrawn)
    if as_json:
        common.emit_json([r.model_dump(mode="json") for r in rows])
        return
    table = Table("name", "kind", "cost", "stock left", "limit", "valid", "tier", "status")
    table.columns.insert(0, Column("id", no_wrap=True))
    for r in rows:
        start, end = common.minute(r.valid_from, ""), common.minute(r.valid_to, "")
        table.add_row(
            r.id,
            r.name,
            r.kind,
            f"{r.cost:,.2f}".removesuffix(".00"),
            "∞" if r.stock_left is None else f"{r.stock_left:,}",
            "" if r.per_member_limit is None else str(r.per_member_limit),
            f"{start} to {end}" if start or end else "",
            r.min_tier or "",
            r.status,
        )
    common.console.print(table)
