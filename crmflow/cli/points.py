"""`crmflow points …`: a member's points statement (totals, lots and ledger, as of now)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from crmflow.cli.common import (
    JsonFlag,
    console,
    emit_json,
    fail,
    load_settings,
    migrated_engine,
    minute,
)
from crmflow.services import points as service
from crmflow.services.errors import ServiceError
from crmflow.services.runtime import Runtime

points_app = typer.Typer(help="Members' points: totals, lots and ledger.", no_args_is_help=True)


def _when(at: datetime | None) -> str:
    return minute(at, "never")


@points_app.command("show")
def show(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    ledger: Annotated[
        int, typer.Option(min=0, max=service.MAX_LEDGER, help="ledger entries, newest first")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Print a member's points as of now: totals, every lot (active, expired, spent) and the
    newest ledger entries. A lot past its date counts as expired at once, before the nightly
    expiry writes its entry."""
    settings = load_settings()
    rt = Runtime(settings, migrated_engine(settings))
    try:
        found = service.statement(rt, customer_id, ledger=ledger)
    except ServiceError as exc:
        fail(str(exc))
    finally:
        rt.close()
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    t = found.totals
    console.print(
        f"[bold]{found.customer_id}[/bold] as of {_when(found.as_of)} UTC: balance "
        f"{t.balance:,.0f}; earned {t.earned:,.0f}, spent {t.spent:,.0f}, expired "
        f"{t.expired:,.0f}",
        highlight=False,
    )
    lots = Table("earned at", "earned", "remaining", "expires", "status", "source", title="lots")
    for lot in found.lots:
        lots.add_row(
            _when(lot.earned_at),
            f"{lot.earned:,.0f}",
            f"{lot.remaining:,.0f}",
            _when(lot.expires_at),
            lot.status,
            lot.source or "",
        )
    console.print(lots)
    entries = Table("at", "kind", "amount", "event", "reason", title="ledger (newest first)")
    for e in found.ledger:
        entries.add_row(_when(e.at), e.kind, f"{e.amount:+,.0f}", e.event_id or "", e.reason or "")
    console.print(entries)
