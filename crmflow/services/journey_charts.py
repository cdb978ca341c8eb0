"""The chart of a journey's stats as an SVG document, or as an HTML page around it: pure
string building, shared by the CLI (`crmflow journeys stats --chart FILE.svg|FILE.html`) and
the HTTP faces (`…/funnel.svg`).

Per version: one bar per node in graph order (from `start` along the edges, as the stats
list them — not alphabetical), as long as the enrollments that entered it, with what was
sent, suppressed, failed and ended there; then each variant against the holdout — its
conversion rate with the 95% interval as a whisker, the uplift with its interval and
p-value, and the verdict, or "small sample" where there is none. The HTML page adds the
same figures as tables. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape

from store.journey_stats import JourneyStats, NodeStats, VariantConversion, VersionStats

COLORS = {
    "entered": "#c6dbef",
    "sent": "#31a354",
    "suppressed": "#fdae6b",
    "failed": "#de2d26",
    "exited": "#969696",
}
ARM_COLORS = {"variant": "#3182bd", "holdout": "#969696", "small": "#b07d2b"}
LABEL_W, BAR_W, TEXT_W, ROW_H, PAD = 190, 380, 330, 34, 16
ARM_H = 30


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
        if vs.conversions and vs.goal is not None:
            parts.append(
                f'<text x="{PAD}" y="{y + 14}" class="head">'
                f"{escape(arms_title(vs.conversions))}</text>"
            )
            y += 22
            top = max([c.high or 0.0 for c in vs.conversions] + [0.05])
            for c in vs.conversions:
                parts.append(_arm_row(c, y, top))
                y += ARM_H
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


# --------------------------------------------------------------------------- arms


def pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def pp(diff: float | None) -> str:
    return "-" if diff is None else f"{diff * 100:+.1f} pp"


def p_text(p: float | None, test: str | None) -> str:
    """`p = 0.041 (z-test)`, `p < 0.001 (Fisher)`."""
    if p is None:
        return "p -"
    name = {"z": "z-test", "fisher": "Fisher"}.get(test or "", test or "")
    value = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    return f"{value} ({name})" if name else value


def arm_name(c: VariantConversion) -> str:
    if c.variant == "holdout":
        return "holdout"
    return f"variant {c.variant}" if c.variant is not None else "everyone"


def arms_title(rows: list[VariantConversion]) -> str:
    held = any(c.variant == "holdout" for c in rows)
    return "conversions, variants against the holdout" if held else "conversions"


def rate_text(c: VariantConversion) -> str:
    """`54/180 · 30.0% (23.8-37.1%)`, with `small sample` when it is one."""
    text = f"{c.conversions}/{c.enrollments} · {pct(c.rate)}"
    if c.low is not None and c.high is not None:
        text += f" ({pct(c.low)}-{pct(c.high)})"
    return text + (" · small sample" if c.small_sample else "")


def uplift_text(c: VariantConversion) -> str:
    """A variant's uplift over the holdout: figures, interval, p-value, verdict."""
    if c.variant == "holdout":
        return "the baseline"
    if c.uplift_absolute is None:
        return ""
    text = f"uplift {pp(c.uplift_absolute)}"
    if c.uplift_low is not None and c.uplift_high is not None:
        text += f" ({pp(c.uplift_low)} to {pp(c.uplift_high)})"
    text += f" · {p_text(c.p_value, c.test)}"
    return text + (f" · {c.verdict}" if c.verdict else " · small sample: no verdict")


def _arm_row(c: VariantConversion, y: int, top: float) -> str:
    x0 = PAD + LABEL_W

    def x(value: float) -> float:
        return round(x0 + BAR_W * value / top, 2)

    key = "holdout" if c.variant == "holdout" else "small" if c.small_sample else "variant"
    color = ARM_COLORS[key]
    out = [
        f'<g class="arm" data-variant="{escape(c.variant or "")}">',
        f'<text x="{PAD}" y="{y + 12}">{escape(arm_name(c))}</text>',
    ]
    if c.rate is not None:
        out.append(
            f'<rect x="{x0}" y="{y + 2}" width="{round(x(c.rate) - x0, 2)}" height="12" '
            f'fill="{color}" fill-opacity="0.55"><title>{escape(rate_text(c))}</title></rect>'
        )
    if c.low is not None and c.high is not None:
        lo, hi = x(c.low), x(c.high)
        out.append(
            f'<path d="M{lo} {y + 8}H{hi}M{lo} {y + 3}V{y + 13}M{hi} {y + 3}V{y + 13}" '
            f'stroke="{color}" stroke-width="1.5" fill="none" class="interval"/>'
        )
    out.append(
        f'<text x="{x0 + BAR_W + 10}" y="{y + 12}" class="small">{escape(rate_text(c))}</text>'
    )
    detail = uplift_text(c)
    if detail:
        out.append(f'<text x="{x0}" y="{y + 26}" class="small muted">{escape(detail)}</text>')
    out.append("</g>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML


def funnel_html(stats: JourneyStats) -> str:
    """The chart as a standalone HTML page: the SVG inline and, per version, the
    conversions of each arm as a table (the same figures, readable without the picture)."""
    title = f"journey {stats.journey}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{stats.enrollments} enrollments · generated {escape(when(stats.generated_at))} UTC"
        "</p>",
        f"<figure>{funnel_svg(stats)}<figcaption>{escape(stats.journey)} funnel, nodes in "
        "graph order</figcaption></figure>",
    ]
    for vs in stats.versions:
        if not vs.conversions or vs.goal is None:
            continue
        rows = "".join(
            "<tr>"
            f'<th scope="row">{escape(arm_name(c))}</th>'
            f'<td class="num">{c.enrollments}</td><td class="num">{c.conversions}</td>'
            f"<td>{escape(pct(c.rate))}</td>"
            f"<td>{escape(_interval(c.low, c.high, pct))}</td>"
            f"<td>{escape(pp(c.uplift_absolute)) if c.variant != 'holdout' else 'baseline'}</td>"
            f"<td>{escape(_interval(c.uplift_low, c.uplift_high, pp))}</td>"
            f"<td>{escape(p_text(c.p_value, c.test)) if c.p_value is not None else '-'}</td>"
            f"<td>{escape(_verdict(c))}</td>"
            "</tr>"
            for c in vs.conversions
        )
        body.append(
            f"<table><caption>{escape(version_title(vs))}</caption><thead><tr>"
            '<th scope="col">arm</th><th scope="col">entered</th>'
            '<th scope="col">converted</th><th scope="col">rate</th>'
            '<th scope="col">95% interval</th><th scope="col">uplift</th>'
            '<th scope="col">95% interval</th><th scope="col">p-value</th>'
            f'<th scope="col">verdict</th></tr></thead><tbody>{rows}</tbody></table>'
        )
    body.append(
        "<p>A conversion is the goal event within the goal window after entering, for every "
        "arm and whatever the enrollment's state. Rate intervals: Wilson score, 95%. Uplift "
        "intervals: Newcombe's hybrid score, 95%. p-values: two-sided two-proportion z-test, "
        "or Fisher's exact test when an expected count is below 5. An arm with fewer than 30 "
        "entered or 5 converted is a small sample: no verdict.</p>"
    )
    style = (
        "body{font-family:sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;"
        "margin:1rem 0}caption{text-align:left;font-weight:bold;padding:.3rem 0}"
        "th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left}"
        ".num{text-align:right}svg{max-width:100%;height:auto}"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{style}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def _interval(low: float | None, high: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if low is None or high is None else f"{fmt(low)} to {fmt(high)}"


def _verdict(c: VariantConversion) -> str:
    if c.variant == "holdout" or c.uplift_absolute is None:
        return "small sample" if c.small_sample else "-"
    return c.verdict or "small sample: no verdict"
