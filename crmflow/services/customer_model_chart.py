"""The customer model's calibration chart as one self-contained SVG document: pure string
building (no scripts, no external assets), for `crmflow model show --chart FILE.svg`.

It is the check of the BG/NBD paper's Figure 2: for each number of repeat purchases in the
calibration period (0, 1, … and "7 or more"), how many customers made that many (actual)
beside how many the fitted model expects. Bars of about the same height mean the model
describes the customers well; the figures are written on the bars. Every text is escaped.
"""

from __future__ import annotations

from html import escape

from crmflow.services.customer_model import ModelVersion

ACTUAL, EXPECTED = "#2b6cb0", "#f6ad55"
W, H = 820, 470
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 118, 70


def _nice_max(value: float) -> float:
    """A round top for the axis, at or above `value`."""
    if value <= 0:
        return 1.0
    step = 10 ** max(len(str(int(value))) - 1, 0)
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= value:
            return float(m * step)
    return float(10 * step)


def _expected_text(value: float) -> str:
    # whole customers where the bars are tall (the labels must fit over a bar)
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def calibration_svg(model: ModelVersion) -> str:
    rows = model.calibration
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    top = _nice_max(max([r.actual for r in rows] + [r.expected for r in rows] + [1]))
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" '
        'role="img" aria-labelledby="title desc">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
    ]
    title = f"Does the model fit? Repeat purchases per customer, model {model.id}"
    sub = (
        f"{model.customers:,} customers, their purchases up to {model.calibration_end} "
        f"(time unit: {model.unit})"
    )
    hint = (
        "Customers per number of repeat purchases, and what the model expects: "
        "similar heights, good fit."
    )
    parts.append(f'<title id="title">{escape(title)}</title><desc id="desc">{escape(sub)}</desc>')
    parts.append(
        f'<text x="{LEFT}" y="28" font-size="18" font-weight="600" fill="#1a202c">'
        f"{escape(title)}</text>"
    )
    parts.append(f'<text x="{LEFT}" y="50" font-size="12" fill="#4a5568">{escape(sub)}</text>')
    parts.append(f'<text x="{LEFT}" y="68" font-size="12" fill="#4a5568">{escape(hint)}</text>')
    # legend
    parts.append(f'<rect x="{LEFT}" y="80" width="14" height="14" fill="{ACTUAL}"/>')
    parts.append(
        f'<text x="{LEFT + 20}" y="92" font-size="12" fill="#1a202c">actual customers</text>'
    )
    parts.append(f'<rect x="{LEFT + 150}" y="80" width="14" height="14" fill="{EXPECTED}"/>')
    parts.append(
        f'<text x="{LEFT + 170}" y="92" font-size="12" fill="#1a202c">expected by the model</text>'
    )
    if not rows:
        parts.append(
            f'<text x="{LEFT}" y="{TOP + 40}" font-size="14" fill="#c53030">'
            "No calibration table: the fit did not succeed.</text></svg>"
        )
        return "\n".join(parts)
    # axis and grid
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" '
            f'stroke="#e2e8f0" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" font-size="11" fill="#4a5568" '
            f'text-anchor="end">{value:,.0f}</text>'
        )
    parts.append(
        f'<text x="18" y="{TOP + plot_h / 2:.0f}" font-size="12" fill="#4a5568" '
        f'transform="rotate(-90 18 {TOP + plot_h / 2:.0f})" text-anchor="middle">'
        "customers</text>"
    )
    group = plot_w / len(rows)
    bar = group * 0.36
    for i, r in enumerate(rows):
        x0 = LEFT + group * i + group * 0.12
        for j, (value, color, label) in enumerate(
            (
                (r.actual, ACTUAL, f"{r.actual:,}"),
                (r.expected, EXPECTED, _expected_text(r.expected)),
            )
        ):
            h = plot_h * value / top
            x = x0 + j * bar
            y = TOP + plot_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{escape(label)}</title></rect>'
            )
            parts.append(
                f'<text x="{x + bar / 2 - 1:.1f}" y="{y - 4:.1f}" font-size="10" '
                f'fill="#1a202c" text-anchor="middle">{escape(label)}</text>'
            )
        parts.append(
            f'<text x="{x0 + bar:.1f}" y="{TOP + plot_h + 18}" font-size="12" '
            f'fill="#1a202c" text-anchor="middle">{escape(r.repeat_purchases)}</text>'
        )
    parts.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{W - RIGHT}" y2="{TOP + plot_h}" '
        'stroke="#4a5568" stroke-width="1"/>'
    )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{H - 22}" font-size="12" fill="#4a5568" '
        'text-anchor="middle">repeat purchases in the calibration period '
        "(purchase days after the first)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
