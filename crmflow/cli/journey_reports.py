"""Journey reports for people: `crmflow journeys stats` (tables, JSON, an SVG funnel chart)
and `crmflow journeys enrollments` (who is where).

The figures come from `store.journey_stats`, whose pydantic models are also the JSON output.
The funnel chart is a hand-built SVG: one bar per node in graph order from `start`, as long
as the enrollments that entered it, with what was sent, suppressed, failed and ended there.
PNG is written only when a PNG renderer (cairosvg) happens to be installed.
"""

from __future__ import annotations

import importlib
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from crmflow.cli import common
from store.journey_stats import (
    DEFAULT_LIMIT,
    ENROLLMENT_STATUSES,
    EnrollmentInfo,
    GoalInfo,
    JourneyStats,
    NodeStats,
    UnknownJourney,
    VariantConversion,
    VersionStats,
    count_enrollments,
    enrollments,
    journey_stats,
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
    "enrollments_command",
    "enrollments_table",
    "funnel_svg",
    "stats_command",
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


def _when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else NONE


def _variant_name(v: str | None) -> str:
    return v if v is not None else "(no split)"


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


# --------------------------------------------------------------------------- rich tables


def _version_title(vs: VersionStats) -> str:
    parts = [f"version {vs.version}" + (" (active)" if vs.active else "")]
    if vs.deployed_at is not None:
        parts.append(f"deployed {_when(vs.deployed_at)}")
    parts.append(f"{vs.enrollments} enrollments")
    if vs.goal is not None:
        cond = " with a condition" if vs.goal.when else ""
        parts.append(f"goal {vs.goal.event}{cond} within {vs.goal.within_days} d")
    return " · ".join(parts)


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


def conversions_table(rows: list[VariantConversion], title: str) -> Table | None:
    if not rows:
        return None
    table = Table(title=title, title_justify="left")
    table.add_column("variant")
    for col in ("enrollments", "conversions", "rate", "uplift", "uplift (rel.)"):
        table.add_column(col, justify="right")
    table.add_column("counted by")
    for r in rows:
        table.add_row(
            _variant_name(r.variant),
            str(r.enrollments),
            str(r.conversions),
            pct(r.rate),
            signed_pp(r.uplift_absolute),
            signed_pct(r.uplift_relative),
            "goal events after entry" if r.counted_by == "goal_events" else "converted status",
        )
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
    if any(n.entered is None for vs in stats.versions for n in vs.nodes):
        out.append(Text("n/a: the workflow does not log entries at this kind of node", style="dim"))
    return out


def enrollments_table(rows: list[EnrollmentInfo], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("customer", "node", "since", "status", "variant", "version", "entered"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.customer_id,
            r.node or NONE,
            _when(r.since),
            r.status,
            r.variant or NONE,
            r.version,
            _when(r.entered_at),
        )
    return table


# --------------------------------------------------------------------------- SVG funnel

COLORS = {
    "entered": "#c6dbef",
    "sent": "#31a354",
    "suppressed": "#fdae6b",
    "failed": "#de2d26",
    "exited": "#969696",
}
LABEL_W, BAR_W, TEXT_W, ROW_H, PAD = 190, 380, 330, 34, 16


def _node_segments(n: NodeStats) -> list[tuple[str, int]]:
    return [
        ("sent", n.sent),
        ("suppressed", n.suppressed),
        ("failed", n.failed),
        ("exited", n.exited),
    ]


def funnel_svg(stats: JourneyStats) -> str:
    """The funnel of every version as one SVG document."""
    width = PAD * 2 + LABEL_W + BAR_W + TEXT_W
    parts: list[str] = []
    y = PAD + 18
    parts.append(
        f'<text x="{PAD}" y="{y}" class="title">journey {escape(stats.journey)} · '
        f"{stats.enrollments} enrollments</text>"
    )
    y += 12
    x = PAD
    for key, color in COLORS.items():
        parts.append(
            f'<rect x="{x}" y="{y}" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="{y + 10}" class="small">{key}</text>'
        )
        x += 100
    y += 24
    for vs in stats.versions:
        parts.append(
            f'<text x="{PAD}" y="{y + 14}" class="head">{escape(_version_title(vs))}</text>'
        )
        y += 26
        scale_max = max(
            [max(n.entered or 0, sum(c for _, c in _node_segments(n))) for n in vs.nodes] + [1]
        )
        for n in vs.nodes:
            parts.append(_node_row(n, y, scale_max))
            y += ROW_H
        y += 12
    height = y + PAD
    style = (
        "<style>text{font-family:sans-serif;font-size:12px;fill:#222}"
        ".title{font-size:16px;font-weight:bold}.head{font-size:13px;font-weight:bold}"
        ".small{font-size:11px}.muted{fill:#777}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img">'
        f"<title>{escape(stats.journey)} funnel</title>{style}"
        f'<rect width="{width}" height="{height}" fill="#fff"/>' + "".join(parts) + "</svg>\n"
    )


def _node_row(n: NodeStats, y: int, scale_max: int) -> str:
    x0 = PAD + LABEL_W

    def w(count: int) -> float:
        return round(BAR_W * count / scale_max, 2)

    label = n.node if len(n.node) <= 20 else n.node[:19] + "…"
    out = [
        f'<g class="node" data-node="{escape(n.node)}">',
        f'<text x="{PAD}" y="{y + 17}"><title>{escape(n.node)}</title>{escape(label)}'
        f' <tspan class="muted">({escape(n.type or "?")})</tspan></text>',
    ]
    if n.entered is None:
        out.append(
            f'<rect x="{x0}" y="{y + 2}" width="{BAR_W}" height="22" fill="none" '
            f'stroke="#bbb" stroke-dasharray="4 3"/>'
        )
    else:
        out.append(
            f'<rect x="{x0}" y="{y + 2}" width="{w(n.entered)}" height="22" '
            f'fill="{COLORS["entered"]}"><title>entered {n.entered}</title></rect>'
        )
    x = float(x0)
    for key, count in _node_segments(n):
        if count:
            out.append(
                f'<rect x="{round(x, 2)}" y="{y + 16}" width="{w(count)}" height="8" '
                f'fill="{COLORS[key]}"><title>{key} {count}</title></rect>'
            )
            x += w(count)
    figures = [f"entered {_n(n.entered)}"]
    figures += [f"{k} {c}" for k, c in _node_segments(n) if c]
    figures += [
        f"{k.replace('_', ' ')} {c}"
        for k, c in (
            ("converted", n.converted),
            ("completed", n.completed),
            ("held_out", n.held_out),
            ("waiting", n.waiting),
        )
        if c
    ]
    out.append(
        f'<text x="{x0 + BAR_W + 10}" y="{y + 17}" class="small">'
        f"{escape(' · '.join(figures))}</text></g>"
    )
    return "".join(out)


def _png_renderer() -> Any | None:
    try:
        return importlib.import_module("cairosvg")
    except ImportError:
        return None


def chart_problem(path: Path) -> str | None:
    """Why a chart cannot be written to `path` (None: it can)."""
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return None
    if suffix == ".png":
        if _png_renderer() is None:
            return (
                f"{path}: only SVG charts are supported here (no PNG renderer such as "
                "cairosvg is installed); use --chart FILE.svg"
            )
        return None
    return f"{path}: the chart file must end with .svg"


def write_chart(stats: JourneyStats, path: Path) -> None:
    problem = chart_problem(path)
    if problem is not None:
        raise ChartError(problem)
    svg = funnel_svg(stats)
    if path.suffix.lower() == ".png":
        renderer = _png_renderer()
        assert renderer is not None
        renderer.svg2png(bytestring=svg.encode("utf-8"), write_to=str(path))
    else:
        path.write_text(svg, encoding="utf-8")


# --------------------------------------------------------------------------- commands


def stats_command(name: str, *, as_json: bool = False, chart: Path | None = None) -> None:
    """`crmflow journeys stats NAME [--json] [--chart FILE.svg]`."""
    cli = common
    if chart is not None and (problem := chart_problem(chart)) is not None:
        cli.fail(problem)
    engine = cli.existing_engine(cli.load_settings())
    try:
        with engine.connect() as conn:
            data = journey_stats(conn, name)
    except UnknownJourney as exc:
        cli.fail(str(exc))
    finally:
        engine.dispose()
    if chart is not None:
        try:
            write_chart(data, chart)
        except (ChartError, OSError) as exc:
            cli.fail(f"cannot write the chart: {exc}")
        # with --json, stdout holds the JSON alone
        (cli.err if as_json else cli.console).print(f"wrote {chart}", highlight=False)
    if as_json:
        cli.emit_json(data.model_dump(mode="json"))
        return
    for part in stats_renderables(data):
        cli.console.print(part)


def enrollments_command(
    name: str,
    *,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    as_json: bool = False,
) -> None:
    """`crmflow journeys enrollments NAME [--status S] [--limit N] [--json]`."""
    cli = common
    if status is not None and status not in ENROLLMENT_STATUSES:
        cli.fail(f"--status must be one of {', '.join(ENROLLMENT_STATUSES)}, not {status!r}")
    if limit < 1:
        cli.fail("--limit must be at least 1")
    engine = cli.existing_engine(cli.load_settings())
    try:
        with engine.connect() as conn:
            rows = enrollments(conn, name, status=status, limit=limit)
            total = count_enrollments(conn, name, status)
    except UnknownJourney as exc:
        cli.fail(str(exc))
    finally:
        engine.dispose()
    if as_json:
        cli.emit_json(
            {
                "journey": name,
                "status": status,
                "total": total,
                "enrollments": [r.model_dump(mode="json") for r in rows],
            }
        )
        return
    which = f"{status} " if status else ""
    title = f"journey {name}: {len(rows)} of {total} {which}enrollments, latest move first"
    cli.console.print(enrollments_table(rows, title))
