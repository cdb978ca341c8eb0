"""A Gantt chart of a project as SVG (and an HTML page around it), pure.

One row per stage, three bars on it:
- the current plan (critical stages in red), with the actual progress over it (actual start
  to actual finish, or to today while in progress) in green;
- the forecast (actual dates, nothing outstanding placed before today), hatched amber, for a
  stage not finished whose forecast differs from the plan — a late project shows where its
  stages are going, not only where they were meant to be;
- the latest baseline as a thin grey bar beneath.
Dependencies are arrows from the end of a stage's plan bar to the start of its successor's
(the lag in its tooltip). Gates are flags at their stage's start or end (filled once
passed), milestones diamonds (filled once done); a dashed line marks today. Month labels
are written only where they do not overlap the one before (the year on January and on the
first label). The SVG is built by hand; every text is escaped.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from html import escape

from projects.plan import Actual, GatePlan, Plan
from projects.state import ProjectState, forecast

ROW = 40
LABEL = 230
HEAD = 60
PLANNED = "#9ec5fe"
CRITICAL = "#f1a7a7"
CRITICAL_EDGE = "#c62828"
ACTUAL = "#2e7d32"
BASELINE = "#9e9e9e"
FORECAST = "#ef6c00"
MILESTONE = "#6a1b9a"
GATE = "#1565c0"
ARROW = "#607d8b"
CHAR = 6.6  # width of a 12px sans-serif character, near enough to keep labels apart


def _x(d: date, first: date, scale: float) -> float:
    return LABEL + (d - first).days * scale


def _months(first: date, last: date, scale: float) -> list[tuple[float, str]]:
    """(x, text) of the month labels that fit: each month's 1st, and the first day shown
    when the month it is in has room before the next 1st; a label is kept only when it
    starts after the previous one ends. The first label and each January carry the year."""
    starts: list[date] = []
    d = date(first.year, first.month, 1)
    while d <= last:
        starts.append(max(d, first))
        d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
    out: list[tuple[float, str]] = []
    end = -1.0
    for i, d in enumerate(starts):
        text = f"{d:%b %Y}" if (not out or d.month == 1) else f"{d:%b}"
        x = _x(d, first, scale) + 2
        room = _x(starts[i + 1], first, scale) if i + 1 < len(starts) else float("inf")
        if d.day != 1 and x + len(text) * CHAR + 8 > room:
            continue  # a sliver of a month: its 1st-of-next-month label reads better
        if x >= end + 8:
            out.append((x, text))
            end = x + len(text) * CHAR
    return out


def gantt_svg(
    plan: Plan,
    today: date,
    actuals: dict[str, Actual] | None = None,
    baseline: Plan | None = None,
    done_milestones: set[str] | None = None,
    title: str = "",
    ahead: Plan | None = None,
    passed_gates: set[str] | None = None,
) -> str:
    """The chart as an SVG document (`ahead`: the forecast; `passed_gates`: gate ids)."""
    actuals = actuals or {}
    done = done_milestones or set()
    passed = passed_gates or set()
    dates = [plan.start, plan.finish, today]
    for other in (baseline, ahead):
        if other is not None:
            dates += [other.start, other.finish]
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
        "<defs>"
        f'<marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="{ARROW}"/></marker>'
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#ffe0b2"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{FORECAST}" stroke-width="2"/></pattern>'
        "</defs>",
        f'<rect x="0" y="0" width="{width:.0f}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for x, text in _months(first, last, scale):
        out.append(f'<text class="month" x="{x:.1f}" y="{HEAD - 20}" fill="#444">{text}</text>')
    # Monday grid lines, their day of the month where there is room
    d = first
    while d <= last:
        if d.weekday() == 0:
            x = _x(d, first, scale)
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
    fore = {s.id: s for s in ahead.stages} if ahead is not None else {}
    stage_row = {s.id: i for i, s in enumerate(plan.stages)}
    by_id = {s.id: s for s in plan.stages}

    def bar(start: date, finish: date) -> tuple[float, float]:
        return _x(start, first, scale), (finish - start).days * scale + scale

    # dependency arrows first, so the bars sit on top of them
    for s in plan.stages:
        for dep in s.depends_on:
            pred = by_id.get(dep.stage)
            if pred is None:
                continue
            px, pw = bar(pred.start, pred.finish)
            x1, y1 = px + pw, HEAD + stage_row[pred.id] * ROW + 11
            x2, y2 = bar(s.start, s.finish)[0], HEAD + stage_row[s.id] * ROW + 11
            mid = max(x1 + 4, min(x2 - 6, x1 + 10))
            lag = f" after a lag of {dep.lag} working days" if dep.lag else ""
            out.append(
                f'<path class="dependency" d="M{x1:.1f},{y1} H{mid:.1f} V{y2} H{x2 - 1:.1f}" '
                f'fill="none" stroke="{ARROW}" stroke-width="1" marker-end="url(#arrow)">'
                f"<title>{escape(s.name)} waits for {escape(pred.name)}{lag}</title></path>"
            )
    for i, s in enumerate(plan.stages):
        y = HEAD + i * ROW
        label = escape(s.name) + (" ★" if s.critical else "")
        out.append(f'<text x="8" y="{y + 15}">{label}</text>')
        px, pw = bar(s.start, s.finish)
        fill, edge = (CRITICAL, CRITICAL_EDGE) if s.critical else (PLANNED, "#5b8fd6")
        out.append(
            f'<rect class="planned{" critical" if s.critical else ""}" x="{px:.1f}" y="{y + 4}" '
            f'width="{pw:.1f}" height="14" rx="2" fill="{fill}" stroke="{edge}">'
            f"<title>plan: {escape(s.name)}: {s.start} to {s.finish} ({s.duration} working "
            f"days, float {s.total_float})</title></rect>"
        )
        a = actuals.get(s.id)
        if a is not None and a.start is not None:
            end = a.finish or max(today, a.start)
            ax, aw = bar(a.start, end)
            out.append(
                f'<rect class="actual" x="{ax:.1f}" y="{y + 8}" width="{aw:.1f}" height="6" '
                f'fill="{ACTUAL}"><title>actual {a.start} to {a.finish or "in progress"}'
                "</title></rect>"
            )
        f = fore.get(s.id)
        unfinished = a is None or a.finish is None
        if f is not None and unfinished and (f.start, f.finish) != (s.start, s.finish):
            fx, fw = bar(f.start, f.finish)
            slip = (f.finish - s.finish).days
            out.append(
                f'<rect class="forecast" x="{fx:.1f}" y="{y + 21}" width="{fw:.1f}" height="7" '
                f'fill="url(#hatch)" stroke="{FORECAST}" stroke-width="0.8">'
                f"<title>forecast: {escape(s.name)}: {f.start} to {f.finish} "
                f"({slip:+d} days against the plan)</title></rect>"
            )
        b = base.get(s.id)
        if b is not None:
            bx, bw = bar(b.start, b.finish)
            out.append(
                f'<rect class="baseline" x="{bx:.1f}" y="{y + 31}" width="{bw:.1f}" height="4" '
                f'fill="{BASELINE}"><title>baseline {b.start} to {b.finish}</title></rect>'
            )
    for g in plan.gates:
        out.append(_gate(g, stage_row, first, scale, g.id in passed))
    for m in plan.milestones:
        row = stage_row.get(m.stage)
        if row is None:
            continue
        cx = _x(m.due, first, scale) + scale / 2
        cy = HEAD + row * ROW + 11
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
    legend_y = height - 4
    out.append(
        f'<text x="8" y="{legend_y}" font-size="10" fill="#555">plan (red: critical ★), '
        "green: actual, hatched amber: forecast, grey: baseline, → dependency, "
        "⚑ gate (filled: passed), ◇ milestone (filled: done)</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _gate(g: GatePlan, rows: dict[str, int], first: date, scale: float, passed: bool) -> str:
    """A flag on the stage's row at its start (left edge) or end (right edge)."""
    row = rows[g.stage]
    x = _x(g.due, first, scale) + (scale if g.at == "end" else 0)
    top = HEAD + row * ROW + 1
    fill = GATE if passed else "white"
    state = "passed" if passed else f"waiting for {', '.join(g.roles)}"
    return (
        f'<g class="gate"><title>gate {escape(g.name)} ({g.at} of stage, due {g.due}): '
        f"{escape(state)}</title>"
        f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + 20}" stroke="{GATE}" '
        'stroke-width="1.5"/>'
        f'<polygon points="{x:.1f},{top} {x + 9:.1f},{top + 3.5} {x:.1f},{top + 7}" '
        f'fill="{fill}" stroke="{GATE}" stroke-width="1.2"/></g>'
    )


def project_svg(state: ProjectState, now: datetime) -> str:
    """The project's current plan, forecast, actual dates and latest baseline at `now`."""
    base = state.baseline()
    number = f", baseline {base.number}" if base else ""
    today = state.today(now)
    return gantt_svg(
        state.plan,
        today,
        state.actuals(),
        base.plan if base else None,
        {mid for mid, m in state.milestones.items() if m.done},
        title=f"{state.name} ({state.project_id}{number})",
        ahead=forecast(state, today),
        passed_gates={gid for gid, g in state.gates.items() if g.passed_at is not None},
    )


def project_html(state: ProjectState, now: datetime) -> str:
    """An HTML page embedding the chart."""
    title = escape(f"{state.name}: plan")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title></head>\n<body style="font-family: sans-serif">\n'
        f"<h1>{title}</h1>\n{project_svg(state, now)}</body></html>\n"
    )
