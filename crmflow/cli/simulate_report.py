"""`crmflow journeys simulate`'s report as rich tables (presentation of the CLI only)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crmflow.cli.common import minute
from crmflow.simulate import SimulationReport


def _day(value: float) -> str:
    whole = int(value)
    rest = timedelta(days=value - whole)
    hours, minutes = divmod(round(rest.total_seconds() / 60), 60)
    return f"+{whole}d {hours:02d}:{minutes:02d}"


def print_report(report: SimulationReport, console: Any) -> None:
    """The report as rich tables: path, messages, events, outcome."""
    from rich.table import Table

    console.print(
        f"journey {report.journey!r} for customer {report.customer_id} ({report.timezone}), "
        f"from {minute(report.start)} UTC; quiet hours {report.quiet_hours or 'off'}, "
        f"frequency cap {report.frequency_cap or 'off'}, rules "
        f"{report.rules_version or 'none'}",
        highlight=False,
    )
    path = Table(
        "day",
        "node",
        "type",
        "entered (UTC)",
        f"local ({report.timezone})",
        "note",
        title="path taken",
    )
    for p in report.path:
        path.add_row(
            _day(p.day), p.node, p.type, minute(p.entered_at), minute(p.local), p.note or ""
        )
    console.print(path)
    msgs = Table(
        "day", "node", "channel", "subject", "sent (UTC)", "local", "status", title="messages"
    )
    for m in report.messages:
        status = m.status + (f": {m.reason}" if m.reason else "")
        if m.held_seconds >= 60:
            status += f" (held {timedelta(seconds=round(m.held_seconds))})"
        msgs.add_row(
            _day(m.day), m.node, m.channel, m.subject or "", minute(m.at), minute(m.local), status
        )
    console.print(msgs if report.messages else "no messages")
    if report.events:
        evs = Table("event", "type", "occurred (UTC)", "handled", title="events")
        for e in report.events:
            evs.add_row(e.event_id, e.type, minute(e.occurred_at), e.handled)
        console.print(evs)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if report.shifted_days:
        console.print(
            f"(the start is in the past: run {report.shifted_days} days later on the test "
            "server's clock, reported in its own time)",
            highlight=False,
        )
    colour = "red" if report.outcome == "failed" else "bold"
    console.print(
        f"[{colour}]{report.outcome}[/]"
        + (f" ({report.reason})" if report.reason else "")
        + f" after {report.simulated_days:g} simulated days at {minute(report.end)} UTC: "
        f"{report.sent} sent, {report.suppressed} suppressed, {report.failed} failed "
        f"— {report.wall_seconds:.1f} s of real time",
        highlight=False,
    )
