"""`crmflow model …`: fit the customer-base model (BG/NBD + Gamma-Gamma) from the store, show
it with its calibration chart, and score every customer.

A thin face over `crmflow.services.customer_model`; service errors become `error: …`, exit 1.
"""

from __future__ import annotations

import getpass
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from crmflow.cli.common import JsonFlag, console, emit_json, fail, runtime
from crmflow.services import customer_model as service
from crmflow.services.customer_model_chart import calibration_svg

model_app = typer.Typer(
    help="The customer model: who is likely to buy again, and what each customer is worth.",
    no_args_is_help=True,
)


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--until: expected a date as YYYY-MM-DD, got {value!r}")


def _print_version(m: service.ModelVersion) -> None:
    state = "active" if m.active else m.status
    console.print(
        f"model {m.id} ({state}): fitted {m.fitted_at:%Y-%m-%d %H:%M} UTC"
        + (f" by {m.fitted_by}" if m.fitted_by else "")
        + f" on purchases up to {m.calibration_end}, unit {m.unit}",
        highlight=False,
    )
    console.print(
        f"  {m.customers:,} customers, {m.repeat_buyers:,} repeat buyers, "
        f"{m.transactions:,} purchase days",
        highlight=False,
    )
    if m.purchase_model is not None:
        pm = m.purchase_model
        console.print(
            f"  purchases (BG/NBD): r={pm.r:.4f} alpha={pm.alpha:.4f} a={pm.a:.4f} "
            f"b={pm.b:.4f}  log-likelihood {pm.log_likelihood:,.2f}"
            + ("" if pm.converged else "  NOT CONVERGED"),
            highlight=False,
        )
    if m.spend_model is not None:
        sm = m.spend_model
        mean = f", mean spend {sm.mean_spend:,.2f}" if sm.mean_spend is not None else ""
        console.print(
            f"  spend (Gamma-Gamma, {sm.customers:,} repeat buyers): p={sm.p:.4f} "
            f"q={sm.q:.4f} gamma={sm.gamma:.4f}  log-likelihood {sm.log_likelihood:,.2f}"
            + mean
            + ("" if sm.converged else "  NOT CONVERGED"),
            highlight=False,
        )
    if m.message:
        console.print(f"  note: {m.message}", highlight=False)
    if m.scored_at is not None:
        console.print(
            f"  scored {m.scored_customers:,} customers at {m.scored_at:%Y-%m-%d %H:%M} UTC",
            highlight=False,
        )


def _print_calibration(m: service.ModelVersion) -> None:
    if not m.calibration:
        return
    table = Table(title="Repeat purchases in the calibration period: actual vs the model")
    table.add_column("repeat purchases", justify="right")
    table.add_column("customers", justify="right")
    table.add_column("model expects", justify="right")
    for r in m.calibration:
        table.add_row(r.repeat_purchases, f"{r.actual:,}", f"{r.expected:,.1f}")
    console.print(table)


@model_app.command("fit")
def fit(
    until: Annotated[
        str | None,
        typer.Option(
            "--until", help="Last day of the calibration period, YYYY-MM-DD (UTC; default today)"
        ),
    ] = None,
    unit: Annotated[
        service.Unit, typer.Option("--unit", help="Time unit of the parameters")
    ] = "weeks",
    score: Annotated[
        bool, typer.Option("--score/--no-score", help="Score every customer with the new model")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Fit the purchase and spend models on every customer's purchases up to --until."""
    inp = service.ModelFitInput(
        until=_day(until), unit=unit, score=score, by=f"cli:{getpass.getuser()}"
    )
    with runtime(write=True) as rt:
        outcome = service.fit_model(rt.engine, inp)
    if as_json:
        emit_json(outcome.model_dump(mode="json"))
    else:
        _print_version(outcome.model)
        _print_calibration(outcome.model)
        if outcome.scoring is not None:
            s = outcome.scoring
            console.print(
                f"scored {s.customers:,} customers as of {s.as_of:%Y-%m-%d %H:%M} UTC "
                f"(CLV discounted at {s.discount_rate:.0%} a year) in {s.seconds:.2f}s",
                highlight=False,
            )
    if outcome.model.status != "ok":
        raise typer.Exit(1)


@model_app.command("show")
def show(
    chart: Annotated[
        Path | None,
        typer.Option(
            "--chart",
            dir_okay=False,
            help="Write the calibration chart (actual vs expected repeat purchases) as SVG",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """The active model: parameters, fit diagnostics, the calibration table and chart."""
    with runtime(write=False) as rt:
        report = service.show_model(rt.engine)
    if chart is not None and report.active is not None:
        chart.write_text(calibration_svg(report.active), encoding="utf-8")
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    if report.active is None:
        console.print("No customer model yet: run `crmflow model fit`.")
    else:
        _print_version(report.active)
        _print_calibration(report.active)
        if chart is not None:
            console.print(f"calibration chart written to {chart}", highlight=False)
    others = [m for m in report.recent if not m.active]
    for m in others:
        console.print(
            f"  earlier: model {m.id} ({m.status}) fitted {m.fitted_at:%Y-%m-%d %H:%M} on "
            f"purchases up to {m.calibration_end}" + (f": {m.message}" if m.message else ""),
            highlight=False,
        )


@model_app.command("score")
def score(as_json: JsonFlag = False) -> None:
    """Score every customer with the active model, as of now (the facts rules read)."""
    with runtime(write=True) as rt:
        outcome = service.score_customers(rt.engine)
    if as_json:
        emit_json(outcome.model_dump(mode="json"))
        return
    console.print(
        f"scored {outcome.customers:,} customers with model {outcome.model_id} as of "
        f"{outcome.as_of:%Y-%m-%d %H:%M} UTC in {outcome.seconds:.2f}s",
        highlight=False,
    )
