"""A Gantt chart of a project as SVG (and an HTML page around it), pure.

One row per stage: the planned bar (critical stages in red), the actual progress over it
(actual start to actual finish, or to today while in progress) and the latest baseline as a
thin grey bar beneath; milestones are diamonds on their stage's row (filled once done); a
dashed line marks today. The SVG is built by hand; every text is escaped.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from html import escape

from projects.plan import Actual, Plan
from projects.state import ProjectState

ROW = 30
LABEL = 230
HEAD = 46
PLANNED = "#9ec5fe"
CRITICAL = "#f1a7a7"
CRITICAL_EDGE = "#c62828"
ACTUAL = "#2e7d32"
BASELINE = "#9e9e9e"
MILESTONE = "#6a1b9a"


def _x(d: date, first: date, scale: float) -> float:
    return LABEL + (d - first).days * scale


def gantt_svg(
    plan: Plan,
    today: date,
    actuals: dict[str, Actual] | None = None,
    baseline: Plan | None = None,
    done_milestones: set[str] | None = None,
    title: str = "",
) -> str:
    """The chart as an SVG document."""
    actuals = actuals or {}
    done = done_milestones or set()
    dates = [plan.start, plan.finish, today]
    if baseline is not None:
        dates += [baseline.start, baseline.finish]
    dates += [d for a in actuals.values() for d in (a.start, a.finish) if d is not None]
    first = min(dates) - timedelta(days=3)
    last = max(dates) + timedelta(days=7)
    days = (last - first).days
    scale = max(3.0, min(24.0, 1100 / days))
    width = LABEL + days * scale + 20
    height = HEAD + ROW * len(plan.stages) + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'viewBox="0 0 {width:.0f} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title or 'Project plan')}</title>",
        f'<rect x="0" y="0" width="{width:.0f}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    # month labels and Monday grid lines
    d = first
    while d <= last:
        x = _x(d, first, scale)
        if d.day == 1 or d == first:
            out.append(f'<text x="{x + 2:.1f}" y="{HEAD - 20}" fill="#444">{d:%b %Y}</text>')
        if d.weekday() == 0:
            out.append(
                f'<line x1="{x:.1f}" y1="{HEAD - 12}" x2="{x:.1f}" y2="{height - 30}" '
                'stroke="#eee"/>'
            )
            if scale >= 5:
                out.append(
                    f'<text x="{x + 1:.1f}" y="{HEAD - 4}" font-size="9" fill="#888">{d.day}</text>'
                )
        d += timedelta(days=1)
    base = {s.id: s for s in baseline.stages} if baseline is not None else {}
    stage_row = {s.id: i for i, s in enumerate(plan.stages)}
    for i, s in enumerate(plan.stages):
        y = HEAD + i * ROW
        label = escape(s.name) + (" ★" if s.critical else "")
        out.append(f'<text x="8" y="{y + 17}">{label}</text>')
        b = base.get(s.id)
        if b is not None:
            bx = _x(b.start, first, scale)
            bw = (b.finish - b.start).days * scale + scale
            out.append(
                f'<rect class="baseline" x="{bx:.1f}" y="{y + 22}" width="{bw:.1f}" height="4" '
                f'fill="{BASELINE}"><title>baseline {b.start} to {b.finish}</title></rect>'
            )
        px = _x(s.start, first, scale)
        pw = (s.finish - s.start).days * scale + scale
        fill, edge = (CRITICAL, CRITICAL_EDGE) if s.critical else (PLANNED, "#5b8fd6")
        out.append(
            f'<rect class="planned{" critical" if s.critical else ""}" x="{px:.1f}" y="{y + 5}" '
            f'width="{pw:.1f}" height="14" rx="2" fill="{fill}" stroke="{edge}">'
            f"<title>{escape(s.name)}: {s.start} to {s.finish} ({s.duration} working days, "
            f"float {s.total_float})</title></rect>"
        )
        a = actuals.get(s.id)
        if a is not None and a.start is not None:
            end = a.finish or max(today, a.start)
            ax = _x(a.start, first, scale)
            aw = (end - a.start).days * scale + scale
            out.append(
                f'<rect class="actual" x="{ax:.1f}" y="{y + 9}" width="{aw:.1f}" height="6" '
                f'fill="{ACTUAL}"><title>actual {a.start} to {a.finish or "in progress"}'
                "</title></rect>"
            )
    for m in plan.milestones:
        row = stage_row.get(m.stage)
        if row is None:
            continue
        cx = _x(m.due, first, scale) + scale / 2
        cy = HEAD + row * ROW + 12
        fill = MILESTONE if m.id in done else "white"
        out.append(
            f'<polygon class="milestone" points="{cx:.1f},{cy - 7} {cx + 7:.1f},{cy} '
            f'{cx:.1f},{cy + 7} {cx - 7:.1f},{cy}" fill="{fill}" stroke="{MILESTONE}" '
            f'stroke-width="1.5"><title>{escape(m.name)}: due {m.due}'
            f"{' (done)' if m.id in done else ''}</title></polygon>"
        )
    tx = _x(today, first, scale) + scale / 2
    out.append(
        f'<line class="today" x1="{tx:.1f}" y1="{HEAD - 12}" x2="{tx:.1f}" y2="{height - 30}" '
        'stroke="#d32f2f" stroke-dasharray="4,3"/>'
    )
    out.append(f'<text x="{tx + 3:.1f}" y="{height - 18}" fill="#d32f2f">today {today}</text>')
    legend_y = height - 6
    out.append(
        f'<text x="8" y="{legend_y}" font-size="10" fill="#555">planned (red: critical ★), '
        "green: actual, grey: baseline, ◇ milestone</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def project_svg(state: ProjectState, now: datetime) -> str:
    """The project's current plan, actual dates and latest baseline at `now`."""
    base = state.baseline()
    number = f", baseline {base.number}" if base else ""
    return gantt_svg(
        state.plan,
        state.today(now),
        state.actuals(),
        base.plan if base else None,
        {mid for mid, m in state.milestones.items() if m.done},
        title=f"{state.name} ({state.project_id}{number})",
    )


def project_html(state: ProjectState, now: datetime) -> str:
    """An HTML page embedding the chart."""
    title = escape(f"{state.name}: plan")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title></head>\n<body style="font-family: sans-serif">\n'
        f"<h1>{title}</h1>\n{project_svg(state, now)}</body></html>\n"
    )
