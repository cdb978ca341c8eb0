"""`crmflow users …`: console users (create with a password typed at a prompt or read from
stdin; list; disable)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from crmflow.cli.common import JsonFlag, console, emit_json, fail, runtime
from crmflow.domain import describe_errors
from crmflow.services import users as service
from crmflow.services.permissions import Role

users_app = typer.Typer(
    help="Console users: create (password at a prompt or from stdin), list, disable.",
    no_args_is_help=True,
)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline(service.MAX_PASSWORD + 2)
        return line.rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@users_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The sign-in name, e.g. li.wei")],
    role: Annotated[Role, typer.Option(help="What the user may do (see `crmflow keys roles`)")],
    person: Annotated[
        str | None,
        typer.Option(help="The project team member the user acts as (sign-offs are theirs)"),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a console user; the password is hashed (argon2id) and never shown again."""
    password = _password(password_stdin)
    try:
        new = service.NewUser(name=name, role=role, person=person, password=password)
    except ValidationError as exc:
        fail(describe_errors(exc))
    with runtime(write=True) as rt:
        made = service.create_user(rt, new, created_by="cli")
    if as_json:
        emit_json(made.model_dump(mode="json"))
        return
    console.print(
        f"user {made.name!r}, role {made.role.value}"
        + (f", acting as {made.person}" if made.person else "")
        + ": sign in at /console",
        highlight=False,
    )


@users_app.command("list")
def list_users(as_json: JsonFlag = False) -> None:
    """List the console users (never their passwords)."""
    with runtime(write=True) as rt:
        found = service.list_users(rt)
    if as_json:
        emit_json([u.model_dump(mode="json") for u in found])
        return
    table = Table("name", "role", "person", "created", "last sign-in", "state")
    for u in found:
        table.add_row(
            u.name,
            u.role.value,
            u.person or "-",
            f"{u.created_at:%Y-%m-%d}",
            f"{u.last_sign_in_at:%Y-%m-%d %H:%M}" if u.last_sign_in_at else "-",
            "active" if u.active else f"disabled {u.disabled_at:%Y-%m-%d}",
        )
    console.print(table)


@users_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="The user's name")],
    as_json: JsonFlag = False,
) -> None:
    """Disable a user: they cannot sign in, and their open sessions end at once."""
    with runtime(write=True) as rt:
        done = service.disable_user(rt, name)
    if as_json:
        emit_json(done.model_dump(mode="json"))
        return
    console.print(f"user {done.name!r} disabled; their sessions have ended", highlight=False)
