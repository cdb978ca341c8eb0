"""Journey reports for people: the rich tables of `crmflow journeys stats` and `crmflow
journeys enrollments`, and writing the chart to a file.

The figures come from the journeys service (`crmflow.services.journeys`), whose pydantic
models are also the JSON output: per arm (variant, holdout) entered, converted, the rate
with its 95% interval; per variant the uplift over the holdout with its interval, p-value
and verdict, or "small sample" where no verdict is given. The chart (nodes in graph order,
variants against the holdout) is built by `crmflow.services.journey_charts` (shared with
the HTTP faces) and written as SVG or as an HTML page (`--chart FILE.svg|FILE.html`); PNG
only when a PNG renderer (cairosvg) happens to be installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from crmflow.services.journey_charts import count_text as _n
from crmflow.services.journey_charts import funnel_html, funnel_svg
from crmflow.services.journey_charts import version_title as _version_title
from crmflow.services.journey_charts import when as _when
from store.journey_stats import (
    EnrollmentInfo,
    GoalInfo,
    JourneyStats,
    NodeStats,
    VariantConversion,
    VersionStats,
)

__all__ = [
    "ChartError",
    "EnrollmentInfo",
    "GoalInfo",
    "JourneyStats",
    "NodeStats",
    "VariantConversion",
    "VersionStats",
    "chart_problem",
    "enrollments_table",
    "funnel_html",
    "funnel_svg",
    "stats_renderables",
    "write_chart",
]


class ChartError(ValueError):
    """The chart cannot be written in the asked format."""


# --------------------------------------------------------------------------- text helpers

NONE = "-"


def pct(rate: float | None) -> str:
    return NONE if rate is None else f"{rate * 100:.1f}%"


def signed_pp(diff: float | None) -> str:
    return NONE if diff is None else f"{diff * 100:+.1f} pp"


def signed_pct(rel: float | None) -> str:
    return NONE if rel is None else f"{rel * 100:+.1f}%"


def _variant_name(v: str | None) -> str:
    return v if v is not None else "(no split)"


# --------------------------------------------------------------------------- rich tables


def nodes_table(vs: VersionStats) -> Table:
    table = Table(title=_version_title(vs), title_justify="left")
    table.add_column("node")
    table.add_column("type")
    for col in (
        "entered",
        "waiting",
        "sent",
        "suppressed",
        "failed",
        "exited",
        "converted",
        "completed",
        "held out",
    ):
        table.add_column(col, justify="right")
    for n in vs.nodes:
        table.add_row(
            n.node,
            n.type or "?",
            _n(n.entered),
            str(n.waiting),
            str(n.sent),
            str(n.suppressed),
            str(n.failed),
            str(n.exited),
            str(n.converted),
            str(n.completed),
            str(n.held_out),
        )
    return table


def reasons_table(vs: VersionStats) -> Table | None:
    rows = [
        (n.node, kind, reason, count)
        for n in vs.nodes
        for kind, reasons in (("suppressed", n.suppressed_reasons), ("failed", n.failed_reasons))
        for reason, count in reasons.items()
    ]
    if not rows:
        return None
    table = Table("node", "status", "reason", "count", title="why not sent", title_justify="left")
    for node, kind, reason, count in rows:
        table.add_row(node, kind, Text(reason), str(count))
    return table


def bracket(low: float | None, high: float | None, fmt: Any) -> str:
    """` [30.1, 95.4]`: an interval in the units of `fmt`, without the unit."""
    if low is None or high is None:
        return ""
    return f" [{fmt(low)}, {fmt(high)}]"


def _num(value: float) -> str:
    return f"{value * 100:.1f}"


def _signed(value: float) -> str:
    return f"{value * 100:+.1f}"


TEST_MARK = {"z": "z", "fisher": "F"}


def p_cell(r: VariantConversion) -> str:
    """`0.041 z` (z-test), `1.000 F` (Fisher's exact test), `<0.001 z`."""
    if r.p_value is None:
        return NONE
    value = "<0.001" if r.p_value < 0.001 else f"{r.p_value:.3f}"
    return f"{value} {TEST_MARK.get(r.test or '', '')}".rstrip()


def verdict_text(r: VariantConversion) -> str:
    if r.variant == "holdout":
        return "baseline" + (" (small sample)" if r.small_sample else "")
    if r.uplift_absolute is None:
        return "small sample" if r.small_sample else NONE
    return r.verdict or "small sample"


def conversions_table(rows: list[VariantConversion], title: str) -> Table | None:
    if not rows:
        return None
    table = Table(title=title, title_justify="left")
    table.add_column("variant")
    table.add_column("entered", justify="right")
    table.add_column("conv.", justify="right")
    table.add_column("rate % [95%]", justify="right")
    held = any(r.variant == "holdout" for r in rows)
    if held:
        table.add_column("uplift pp [95%]", justify="right")
        table.add_column("rel.", justify="right")
        table.add_column("p", justify="right")
    table.add_column("verdict" if held else "sample")
    for r in rows:
        cells = [
            _variant_name(r.variant),
            str(r.enrollments),
            str(r.conversions),
            (NONE if r.rate is None else _num(r.rate)) + bracket(r.low, r.high, _num),
        ]
        if held:
            uplift = NONE if r.uplift_absolute is None else _signed(r.uplift_absolute)
            cells += [
                uplift + bracket(r.uplift_low, r.uplift_high, _signed),
                signed_pct(r.uplift_relative),
                p_cell(r),
            ]
        cells.append(verdict_text(r) if held else ("small" if r.small_sample else NONE))
        table.add_row(*cells)
    return table


def stats_renderables(stats: JourneyStats) -> list[RenderableType]:
    """What `crmflow journeys stats NAME` prints."""
    outcomes = ", ".join(f"{k} {v}" for k, v in stats.outcomes.items()) or "none"
    head = Text.assemble(
        ("journey ", "bold"),
        (stats.journey, "bold cyan"),
        f" · {stats.status or 'not deployed'}",
        f" · active version {stats.active_version or '-'}",
        f" · {stats.enrollments} enrollments ({outcomes})",
    )
    out: list[RenderableType] = [head]
    for vs in stats.versions:
        parts: list[RenderableType] = [nodes_table(vs)]
        for extra in (
            reasons_table(vs),
            conversions_table(vs.conversions, "conversions by variant"),
        ):
            if extra is not None:
                parts.append(extra)
        out.append(Group(*parts))
    if len(stats.versions) > 1:
        total = conversions_table(stats.conversions, "conversions, all versions")
        if total is not None:
            out.append(total)
    if any(vs.conversions for vs in stats.versions):
        out.append(
            Text(
                "conv.: the goal event within the goal window after entering, for every arm "
                "and state; [95% interval] (rate: Wilson; uplift: Newcombe); p two-sided "
                "(z: z-test, F: Fisher's exact test); small sample: fewer than 30 entered "
                "or 5 converted in an arm, no verdict",
                style="dim",
            )
        )
    if any(n.entered is None for vs in stats.versions for n in vs.nodes):
        out.append(Text("n/a: the workflow does not log entries at this kind of node", style="dim"))
    return out


def enrollments_table(rows: list[EnrollmentInfo], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("customer", "node", "since", "status", "waits for", "until", "variant", "version")
    for col in (*columns, "entered"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.customer_id,
            r.node or NONE,
            _when(r.since),
            r.status,
            waits_for(r.waiting_for, r.wait_detail),
            _when(r.wait_until) if r.wait_until else NONE,
            r.variant or NONE,
            r.version,
            _when(r.entered_at),
        )
    return table


WAIT_WORDS = {
    "delay": "a delay",
    "event": "event",
    "quiet_hours": "quiet hours",
    "rate_limit": "the rate limit",
    "frequency_cap": "the frequency cap",
}


def waits_for(kind: str | None, detail: str | None) -> str:
    """What an enrollment waits for, in words: `event purchase`, `quiet hours end …`."""
    if kind is None:
        return NONE
    if kind == "event":
        return f"event {detail}" if detail else "an event"
    if kind in ("quiet_hours", "rate_limit", "frequency_cap") and detail:
        return detail
    return WAIT_WORDS.get(kind, kind)


# --------------------------------------------------------------------------- chart files


def _png_renderer() -> Any | None:
    try:
        return importlib.import_module("cairosvg")
    except ImportError:
        return None


CHART_SUFFIXES = (".svg", ".html", ".htm")


def chart_problem(path: Path) -> str | None:
    """Why a chart cannot be written to `path` (None: it can)."""
    suffix = path.suffix.lower()
    if suffix in CHART_SUFFIXES:
        return None
    if suffix == ".png":
        if _png_renderer() is None:
            return (
                f"{path}: only SVG and HTML charts are supported here (no PNG renderer such "
                "as cairosvg is installed); use --chart FILE.svg or --chart FILE.html"
            )
        return None
    return f"{path}: the chart file must end with .svg or .html"


def write_chart(stats: JourneyStats, path: Path) -> None:
    problem = chart_problem(path)
    if problem is not None:
        raise ChartError(problem)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        path.write_text(funnel_html(stats), encoding="utf-8")
        return
    svg = funnel_svg(stats)
    if suffix == ".png":
        renderer = _png_renderer()
        assert renderer is not None
        renderer.svg2png(bytestring=svg.encode("utf-8"), write_to=str(path))
    else:
        path.write_text(svg, encoding="utf-8")
