"""`crmflow points …`: a member's points statement (totals, lots and ledger, as of now);
redeem a reward, reverse a redemption, adjust points by hand. A thin face over
`crmflow.services.points`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Column, Table

from crmflow.cli.common import JsonFlag, console, emit_json, minute, runtime
from crmflow.services import points as service

points_app = typer.Typer(
    help="Members' points: statement, redeem, reverse, adjust.", no_args_is_help=True
)


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
    with runtime(write=True) as rt:
        found = service.statement(rt, customer_id, ledger=ledger)
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    t = found.totals
    console.print(
        f"[bold]{found.customer_id}[/bold] as of {_when(found.as_of)} UTC: balance "
        f"{_pts(t.balance)}; active {_pts(t.active)}, pending {_pts(t.pending)}, debt "
        f"{_pts(t.debt)}",
        highlight=False,
    )
    console.print(
        f"  earned {_pts(t.earned)}, credited {_pts(t.credited)}, spent {_pts(t.spent)}, "
        f"expired {_pts(t.expired)}, clawed back {_pts(t.clawed_back)}, debited "
        f"{_pts(t.debited)}",
        highlight=False,
    )
    lots = Table(
        "lot", "earned at", "earned", "remaining", "expires", "status", "source", title="lots"
    )
    for lot in found.lots:
        status: str = lot.status
        if lot.status == "pending" and lot.available_at is not None:
            status = f"pending until {_when(lot.available_at)}"
        lots.add_row(
            str(lot.id),
            _when(lot.earned_at),
            _pts(lot.earned),
            _pts(lot.remaining),
            _when(lot.expires_at),
            status,
            lot.source or "",
        )
    console.print(lots)
    entries = Table(
        "at",
        Column("kind", no_wrap=True),
        "amount",
        "event / ref",
        "by",
        "reason",
        title="ledger (newest first)",
    )
    for e in found.ledger:
        entries.add_row(
            _when(e.at),
            e.kind,
            f"{e.amount:+,.2f}".removesuffix(".00"),
            e.event_id or e.ref or "",
            e.actor or "",
            e.reason or "",
        )
    console.print(entries)


def _pts(value: float) -> str:
    """Points as the CLI prints them: 1,250 or 12.50 (never -0)."""
    value = value + 0.0
    text = f"{value:,.2f}".removesuffix(".00")
    return "0" if text == "-0" else text


KeyOpt = Annotated[
    str,
    typer.Option(
        "--key",
        min=1,
        help="Your idempotency key (e.g. the till's receipt number): the same key again gives "
        "the stored result",
    ),
]


def _print_redemption(found: service.Redemption, as_json: bool) -> None:
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    verb = "reversed" if found.status == "reversed" else "redeemed"
    code = f", coupon {found.code}" if found.code else ""
    console.print(
        f"{verb} {found.reward_id} for {found.customer_id} (key {found.key}): "
        f"{_pts(found.cost)} points{code}; balance {_pts(found.balance)}",
        highlight=False,
        soft_wrap=True,
    )


@points_app.command("redeem")
def redeem(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    reward_id: Annotated[str, typer.Argument(help="The reward's id (crmflow rewards list)")],
    key: KeyOpt,
    by: Annotated[str | None, typer.Option("--by", help="Who redeems (recorded)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Spend a member's points on a reward, first to expire first. Refused with the reason:
    withdrawn, outside its validity, tier too low, limit reached, not enough points, out of
    stock. A coupon reward prints its code."""
    with runtime(write=True) as rt:
        found = service.redeem(rt, customer_id, reward_id, key=key, by=by)
    _print_redemption(found, as_json)


@points_app.command("reverse")
def reverse(
    key: Annotated[str, typer.Argument(help="The redemption's key")],
    by: Annotated[str | None, typer.Option("--by", help="Who reverses (recorded)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Undo a redemption: the points go back to the lots they came from (or to a new lot
    keeping the old one's expiry, if the nightly run has expired it since), the stock is
    given back and a coupon voided."""
    with runtime(write=True) as rt:
        found = service.reverse(rt, key, by=by)
    _print_redemption(found, as_json)


@points_app.command("adjust")
def adjust(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    amount: Annotated[
        str, typer.Option("--amount", help="Points: +N credits, -N debits (two decimals at most)")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded verbatim)")],
    by: Annotated[str, typer.Option("--by", help="Who adjusts (recorded)")],
    qualifying: Annotated[
        bool,
        typer.Option("--qualifying", help="Count a credit as earned for tier qualification"),
    ] = False,
    key: Annotated[
        str | None, typer.Option("--key", help="Idempotency key (default: a new one)")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Credit or debit points by hand. A credit is never capped nor pending and pays the
    member's debt first; a debit larger than the balance is refused unless the programme
    allows a negative balance (then the rest becomes a debt)."""
    with runtime(write=True) as rt:
        found = service.adjust(
            rt, customer_id, amount, reason=reason, by=by, qualifying=qualifying, key=key
        )
    if as_json:
        emit_json(found.model_dump(mode="json"))
        return
    verb = "credited" if found.amount > 0 else "debited"
    debt = f", debt {_pts(found.debt)}" if found.debt else ""
    console.print(
        f"{verb} {_pts(abs(found.amount))} points to {found.customer_id} (key {found.key}); "
        f"balance {_pts(found.balance)}{debt}",
        highlight=False,
        soft_wrap=True,
    )
