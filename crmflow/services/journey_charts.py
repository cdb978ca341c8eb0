"""The funnel chart of a journey's stats as an SVG document: pure string building, shared by
the CLI (`crmflow journeys stats --chart`) and the HTTP faces (`…/funnel.svg`).

One bar per node in graph order from `start`, as long as the enrollments that entered it,
with what was sent, suppressed, failed and ended there. Every text is escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from store.journey_stats import JourneyStats, NodeStats, VersionStats

COLORS = {
    "entered": "#c6dbef",
    "sent": "#31a354",
    "suppressed": "#fdae6b",
    "failed": "#de2d26",
    "exited": "#969696",
}
LABEL_W, BAR_W, TEXT_W, ROW_H, PAD = 190, 380, 330, 34, 16


def when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "-"


def count_text(value: int | None) -> str:
    """A count, or `n/a` where the workflow does not record it."""
    return "n/a" if value is None else str(value)


def version_title(vs: VersionStats) -> str:
    """`version v1 (active) · deployed … · 15 enrollments · goal …`: tables and charts."""
    parts = [f"version {vs.version}" + (" (active)" if vs.active else "")]
    if vs.deployed_at is not None:
        parts.append(f"deployed {when(vs.deployed_at)}")
    parts.append(f"{vs.enrollments} enrollments")
    if vs.goal is not None:
        cond = " with a condition" if vs.goal.when else ""
        parts.append(f"goal {vs.goal.event}{cond} within {vs.goal.within_days} d")
    return " · ".join(parts)


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
            f'<text x="{PAD}" y="{y + 14}" class="head">{escape(version_title(vs))}</text>'
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
    figures = [f"entered {count_text(n.entered)}"]
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
