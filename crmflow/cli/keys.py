"""`crmflow keys …`: API keys (create shows the token once; list; revoke) and the roles."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from crmflow.cli.common import JsonFlag, console, emit_json, fail, runtime
from crmflow.domain import describe_errors
from crmflow.services import keys as service
from crmflow.services.permissions import Role, permission_table_markdown

keys_app = typer.Typer(
    help="API keys: create (the token is shown once), list, revoke; roles.",
    no_args_is_help=True,
)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="A unique name for the key, e.g. pos-shanghai")],
    role: Annotated[Role, typer.Option(help="What the key may do (see `crmflow keys roles`)")],
    person: Annotated[
        str | None,
        typer.Option(help="The project team member the key acts as (sign-offs are theirs)"),
    ] = None,
    expires: Annotated[
        int | None, typer.Option(min=1, max=3650, help="Days until the key expires")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print its token once (only a hash of it is stored)."""
    try:
        new = service.NewKey(name=name, role=role, person=person, expires_days=expires)
    except ValidationError as exc:
        fail(describe_errors(exc))
    with runtime(write=True) as rt:
        made = service.create_key(rt, new, created_by="cli")
    if as_json:
        emit_json({"token": made.token, **made.model_dump(mode="json", exclude={"token"})})
        return
    console.print(
        f"key {made.name!r} ({made.key_id}), role {made.role.value}"
        + (f", acting as {made.person}" if made.person else "")
        + (f", expires {made.expires_at:%Y-%m-%d}" if made.expires_at else ""),
        highlight=False,
    )
    console.print("token (shown this once; send it as `Authorization: Bearer <token>`):")
    console.print(made.token, highlight=False, soft_wrap=True)


@keys_app.command("list")
def list_keys(as_json: JsonFlag = False) -> None:
    """List the keys (never their tokens)."""
    with runtime(write=True) as rt:
        found = service.list_keys(rt)
    if as_json:
        emit_json([k.model_dump(mode="json") for k in found])
        return
    table = Table("name", "key id", "role", "person", "created", "expires", "last used", "state")
    for k in found:
        state = "revoked" if k.revoked_at else ("active" if k.active else "expired")
        table.add_row(
            k.name,
            k.key_id,
            k.role.value,
            k.person or "-",
            f"{k.created_at:%Y-%m-%d}",
            f"{k.expires_at:%Y-%m-%d}" if k.expires_at else "-",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "-",
            state,
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name or key id")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: it stops working at once."""
    with runtime(write=True) as rt:
        done = service.revoke_key(rt, name)
    if as_json:
        emit_json(done.model_dump(mode="json"))
        return
    console.print(f"key {done.name!r} ({done.key_id}) revoked", highlight=False)


@keys_app.command("roles")
def roles() -> None:
    """Print the permission table: which role may take which action."""
    console.print(permission_table_markdown(), highlight=False, markup=False)
