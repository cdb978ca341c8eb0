"""SVG charts drawn by crmflow for the console: a column chart by day and a horizontal bar
chart.

Pure functions, data in and markup out (no browser script, nothing fetched). Each chart is
readable without colour and without a mouse: it has a `<title>` and `<desc>` (what a screen
reader says), every bar has its own `<title>` with its label and value, and the values and
labels are drawn as text. The markup is well-formed XML (tests parse it with
`xml.etree`), so it can be inlined in a page or saved as an .svg file.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import date

from markupsafe import Markup, escape

_ids = itertools.count(1)


def _fmt(value: float) -> str:
    """A value as a label: thousands separators, no decimals for whole numbers."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _nice_max(top: float) -> float:
    """A round number at or above `top` for the axis (1, 1.2, 1.5, 2, … 8 times a power of 10)."""
    if top <= 0:
        return 1.0
    power = 1.0
    while power * 10 <= top:
        power *= 10
    while power > top:
        power /= 10
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * power >= top:
            return step * power
    return 10 * power  # pragma: no cover  (the loop always returns)


def _head(width: int, height: int, title: str, desc: str, kind: str) -> tuple[str, str]:
    uid = f"chart{next(_ids)}"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{uid}-t {uid}-d">'
        f'<title id="{uid}-t">{escape(title)}</title>'
        f'<desc id="{uid}-d">{escape(desc)}</desc>'
    )
    return uid, head


def column_chart(
    days: Sequence[tuple[date, float]],
    *,
    title: str,
    unit: str = "",
    height: int = 200,
    bar_width: int = 22,
    label_every: int = 7,
) -> Markup:
    """Columns, one per day, oldest on the left; a date label under the last column and
    every `label_every`-th before it; the total and the highest day in the description; the
    axis's zero, middle and top values as text."""
    unit_s = f" {unit}" if unit else ""
    values = [float(v) for _, v in days]
    top = _nice_max(max(values, default=0.0))
    left, right, above, below = 48, 8, 14, 34
    gap = max(2, bar_width // 5)
    width = left + right + max(1, len(days)) * (bar_width + gap)
    plot = height - above - below
    if days:
        peak_i = max(range(len(days)), key=lambda i: values[i])
        desc = (
            f"{len(days)} days from {days[0][0]:%Y-%m-%d} to {days[-1][0]:%Y-%m-%d}: "
            f"{_fmt(sum(values))}{unit_s} in all, the most on {days[peak_i][0]:%Y-%m-%d} "
            f"({_fmt(values[peak_i])}{unit_s})."
        )
    else:
        desc = "No days to show."
    _, out = _head(width, height, title, desc, "columns")
    parts = [out]
    base_y = above + plot
    # the axis: zero and the top value as text, a light line at each
    for tick, ty in ((0.0, base_y), (top / 2, above + plot / 2), (top, above)):
        parts.append(
            f'<line class="axis" x1="{left - 4}" y1="{ty}" x2="{width - right}" y2="{ty}"/>'
            f'<text x="{left - 8}" y="{ty + 4}" text-anchor="end">{_fmt(tick)}</text>'
        )
    for i, (day, value) in enumerate(days):
        x = left + i * (bar_width + gap) + gap // 2
        h = round(plot * float(value) / top, 1)
        y = round(base_y - h, 1)
        label = f"{day:%Y-%m-%d}: {_fmt(value)}{unit_s}"
        parts.append(
            f'<g class="bar"><title>{escape(label)}</title>'
            f'<rect class="bar" x="{x}" y="{y}" width="{bar_width}" height="{max(h, 0)}" '
            f'fill="#1f5fbf"/></g>'
        )
        # every `label_every`-th day counted back from the last, so the newest is labelled
        # and no two labels crowd each other
        if (len(days) - 1 - i) % label_every == 0:
            parts.append(
                f'<text x="{x + bar_width / 2}" y="{base_y + 16}" text-anchor="middle">'
                f"{day:%m-%d}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    unit: str = "",
    width: int = 340,
    bar_height: int = 22,
    label_width: int = 110,
    colours: Sequence[str] | None = None,
) -> Markup:
    """Horizontal bars, one per item in the order given: the label as text on the left, the
    value as text at the end of the bar (so the figures read without the bars' colours)."""
    unit_s = f" {unit}" if unit else ""
    gap = 8
    top = max((float(v) for _, v in items), default=0.0) or 1.0
    value_room = 60
    plot = max(40, width - label_width - value_room)
    height = max(1, len(items)) * (bar_height + gap) + gap
    desc = (
        "; ".join(f"{label}: {_fmt(v)}{unit_s}" for label, v in items) + "."
        if items
        else "Nothing to show."
    )
    _, head = _head(width, height, title, desc, "bars")
    parts = [head]
    for i, (label, value) in enumerate(items):
        y = gap + i * (bar_height + gap)
        w = round(plot * float(value) / top, 1)
        colour = colours[i % len(colours)] if colours else "#1f5fbf"
        text = f"{label}: {_fmt(value)}{unit_s}"
        short = label if len(label) <= 18 else label[:17] + "…"
        parts.append(
            f'<g class="bar"><title>{escape(text)}</title>'
            f'<text x="{label_width - 8}" y="{y + bar_height * 0.7}" '
            f'text-anchor="end">{escape(short)}</text>'
            f'<rect class="bar" x="{label_width}" y="{y}" width="{max(w, 0)}" '
            f'height="{bar_height}" fill="{escape(colour)}"/>'
            f'<text x="{label_width + max(w, 0) + 6}" y="{y + bar_height * 0.7}">'
            f"{_fmt(value)}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
