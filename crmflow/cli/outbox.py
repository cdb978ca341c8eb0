"""`crmflow outbox list`: the messages in the outbox (journey messages without another
channel, staff notices, team-chat posts), newest first. A thin face over
`crmflow.services.outbox`: addresses masked unless `--addresses`, bodies only with
`--bodies`, unsubscribe tokens never printed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from crmflow.cli import common
from crmflow.domain import describe_errors
from crmflow.services import outbox as service
from crmflow.services.operations import MAX_LIMIT

outbox_app = typer.Typer(help="The message outbox: list.", no_args_is_help=True)

AGO = re.compile(r"^(\d+)\s*([mhd])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_time(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a time with its offset (2026-11-20T08:00:00+08:00), or how long ago (90m,
    6h, 2d). `ValueError` saying what was expected otherwise."""
    ago = AGO.match(text.strip())
    if ago:
        return (now or datetime.now(UTC)) - timedelta(**{UNITS[ago[2]]: int(ago[1])})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a time with its offset, such as "
            "2026-11-20T08:00:00+08:00, or how long ago, such as 90m, 6h or 2d"
        ) from None
    if at.tzinfo is None:
        raise ValueError(
            f"--since {text!r} has no time zone; add its offset, e.g. {text}+08:00 or {text}Z"
        )
    return at


@outbox_app.command("list")
def list_outbox(
    customer: Annotated[str | None, typer.Option(help="Only this customer's messages")] = None,
    channel: Annotated[
        str | None,
        typer.Option(
            help="Only this channel's: outbox, email, wecom_robot, dingtalk_robot, slack…"
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only messages since a time (2026-11-20T08:00:00+08:00) or 90m, 6h, 2d"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT)] = 20,
    before: Annotated[int | None, typer.Option(help="Older than this id (the next page)")] = None,
    addresses: Annotated[
        bool, typer.Option("--addresses", help="Show addresses unmasked (personal data)")
    ] = False,
    bodies: Annotated[bool, typer.Option("--bodies", help="Include the bodies (JSON)")] = False,
    as_json: common.JsonFlag = False,
) -> None:
    """Messages in the outbox, newest first."""
    try:
        query = service.OutboxFilter(
            customer_id=customer,
            channel=channel,
            since=since_time(since) if since else None,
            limit=limit,
            before_id=before,
        )
    except ValidationError as exc:
        common.fail(f"bad option: {describe_errors(exc)}")
    except ValueError as exc:
        common.fail(str(exc))
    with common.runtime(write=False) as rt:
        page = service.list_messages(rt, query, mask=not addresses, bodies=bodies)
    if as_json:
        common.emit_json(page.model_dump(mode="json"))
        return
    if not page.messages:
        common.console.print("no messages", highlight=False)
        return
    table = Table("id", "created (UTC)", "channel", "customer", "address", "subject")
    for m in page.messages:
        table.add_row(
            str(m.id),
            f"{m.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            m.channel,
            m.customer_id or "-",
            m.address or "-",
            (m.subject or "-")[:80],
        )
    common.console.print(table)
    if page.next_before_id:
        common.console.print(f"more: --before {page.next_before_id}", highlight=False)
