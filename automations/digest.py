"""The scheduled KPI digest: the programme's figures for a window, and the HTML report of them.

Pure: `KpiDigest` holds what `store.kpi_digest.digest_figures` counted (no database, no I/O
here), and `render_digest_html` draws it as one self-contained page — inline CSS, charts as
inline SVG, no scripts, no external assets — so it can be written to a file or mailed as is.

The window is `(as_of - window_days, as_of]`. Every figure is defined once, in `store.kpi`
(its docstring is the reference); in short:

- `members_total`: customers whose lifecycle stage is `member` now.
- `active_members`: members with a customer-made event in the window (the automations' own
  events — `churn_scan`, `lead_sla_check`, `points_expiring`, birthdays, … — are not
  activity).
- `new_members`: members whose join date (the `member_since` attribute, else the day the
  profile was created; not the time a row was imported) falls in the window.
- `buyers`, `repeat_buyers`: customers (any stage) with one / two or more purchase events in
  the window; `repurchase_rate` = repeat buyers / buyers (0 when nobody bought); `revenue`:
  the purchases' amounts less the refunds' amounts in the window.
- `points_issued`, `points_redeemed`, `points_expired`, `points_clawed_back`: the ledger's
  `earn` and `pending`, `redeem` net of `redeem_reversal`, `expire` and `clawback` entries in
  the window, as positive numbers (operator adjustments are none of them);
  `points_liability`: what live lots hold at `as_of`.
- `tier_distribution`: customers per tier now (customers without a tier are left out).
- `tier_movement`: `tier_history` rows changed in the window, per (from, to); `from_tier` is
  None for a first tier.
- `journey_conversions`: per journey, the enrollments that entered in the window and, of
  those, the ones that converted by the journey stats' definition: the version's goal event
  within the goal window after entry (up to `as_of`), whatever the enrollment's state.
  Holdout enrollments are counted apart (`held_out`) and left out of `enrolled`.
- `previous`: the same counts for the window before, `(as_of - 2 * window_days, as_of -
  window_days]`, under the keys of `COMPARED` (members now, the liability and tiers now
  have no previous).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from pydantic import AwareDatetime, BaseModel, Field

# The figures compared against the previous window, in the report's order.
COMPARED: tuple[str, ...] = (
    "active_members",
    "new_members",
    "buyers",
    "repeat_buyers",
    "repurchase_rate",
    "revenue",
    "points_issued",
    "points_redeemed",
    "points_expired",
    "points_clawed_back",
    "journey_enrolled",
    "journey_converted",
)

LABELS: dict[str, str] = {
    "members_total": "Members",
    "active_members": "Active members",
    "new_members": "New members",
    "buyers": "Buyers",
    "repeat_buyers": "Repeat buyers",
    "repurchase_rate": "Repurchase rate",
    "revenue": "Revenue",
    "points_issued": "Points issued",
    "points_redeemed": "Points redeemed",
    "points_expired": "Points expired",
    "points_clawed_back": "Points clawed back",
    "points_liability": "Points owed (now)",
    "journey_enrolled": "Journey enrollments",
    "journey_converted": "Journey conversions",
}

# A rise of these is bad news (drawn red, a fall green).
LOWER_IS_BETTER = frozenset({"points_expired"})


class TierMove(BaseModel):
    """Customers moved from one tier to another in the window."""

    from_tier: str | None = Field(description="None: the customer's first tier")
    to_tier: str
    count: int = Field(ge=0)


class JourneyConversion(BaseModel):
    """A journey's enrollments that entered in the window, and how many reached the goal."""

    journey: str
    enrolled: int = Field(ge=0, description="enrollments entered in the window, holdout excluded")
    converted: int = Field(ge=0, description="of those, ended by the workflow on the goal event")
    conversion_rate: float = Field(ge=0, description="converted / enrolled; 0 when none enrolled")
    held_out: int = Field(0, ge=0, description="holdout enrollments entered in the window")


class KpiDigest(BaseModel):
    """The programme's figures for the window `(as_of - window_days, as_of]`."""

    as_of: AwareDatetime
    window_days: int = Field(ge=1)
    run_date: str = Field(description="the run's local date (YYYY-MM-DD)")

    members_total: int = Field(0, ge=0, description="customers at stage member now")
    active_members: int = Field(0, ge=0, description="members with any event in the window")
    new_members: int = Field(
        0, ge=0, description="customers created in the window whose stage is member now"
    )
    buyers: int = Field(0, ge=0, description="customers with a purchase in the window")
    repeat_buyers: int = Field(0, ge=0, description="customers with 2+ purchases in the window")
    repurchase_rate: float = Field(0.0, ge=0, description="repeat buyers / buyers; 0: no buyers")
    revenue: float = Field(0.0, description="sum of the window's purchase amounts")

    points_issued: float = Field(0.0, ge=0, description="ledger `earn` entries, positive")
    points_redeemed: float = Field(
        0.0, ge=0, description="ledger `redeem` net of `redeem_reversal`, positive"
    )
    points_expired: float = Field(0.0, ge=0, description="ledger `expire` entries, positive")
    points_clawed_back: float = Field(
        0.0, ge=0, description="ledger `clawback` entries (refunds), positive"
    )
    points_liability: float = Field(0.0, description="what live lots hold at as_of")

    tier_distribution: dict[str, int] = Field(
        default_factory=dict, description="customers per tier now, largest first"
    )
    tier_movement: list[TierMove] = Field(default_factory=list)
    journey_conversions: list[JourneyConversion] = Field(default_factory=list)

    previous: dict[str, float] = Field(
        default_factory=dict, description="the COMPARED figures of the window before"
    )

    @property
    def since(self) -> datetime:
        """The window's (excluded) start."""
        return self.as_of - timedelta(days=self.window_days)

    def current(self) -> dict[str, float]:
        """This window's figures under the keys of `COMPARED` (as `previous` holds them)."""
        return {
            "active_members": self.active_members,
            "new_members": self.new_members,
            "buyers": self.buyers,
            "repeat_buyers": self.repeat_buyers,
            "repurchase_rate": self.repurchase_rate,
            "revenue": self.revenue,
            "points_issued": self.points_issued,
            "points_redeemed": self.points_redeemed,
            "points_expired": self.points_expired,
            "points_clawed_back": self.points_clawed_back,
            "journey_enrolled": sum(j.enrolled for j in self.journey_conversions),
            "journey_converted": sum(j.converted for j in self.journey_conversions),
        }


# --------------------------------------------------------------------------- formatting


def _number(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}"


def format_figure(key: str, value: float) -> str:
    """A figure as the report shows it: rates in per cent, money with two decimals."""
    if key.endswith("_rate"):
        return f"{value:.1%}"
    if key == "revenue":
        return f"{value:,.2f}"
    return _number(value)


@dataclass(frozen=True)
class Change:
    """A figure against the previous window: `css` is up/down/same plus good/bad."""

    css: str
    text: str


def change(key: str, current: float, previous: float | None) -> Change | None:
    """▲/▼ and by how much, against the previous window (None: no previous figure)."""
    if previous is None:
        return None
    was = format_figure(key, previous)
    delta = current - previous
    if abs(delta) < 1e-9:
        return Change("same", f"= same as previous window ({was})")
    up = delta > 0
    good = up != (key in LOWER_IS_BETTER)
    arrow = "▲" if up else "▼"
    sign = "+" if up else "-"
    if key.endswith("_rate"):
        by = f"{sign}{abs(delta) * 100:.1f} pp"
    else:
        by = f"{sign}{format_figure(key, abs(delta))}"
        if previous:
            ratio = abs(delta) / abs(previous)
            by += f" ({sign}{ratio:.0%})" if ratio >= 0.1 else f" ({sign}{ratio:.1%})"
    return Change(f"{'up' if up else 'down'} {'good' if good else 'bad'}", f"{arrow} {by} vs {was}")


# --------------------------------------------------------------------------- SVG charts

WIDTH = 700
LABEL_W = 180
BAR_W = 300
ROW_H = 26
HEAD_H = 30
BAR = "#4f7cc4"
PREVIOUS = "#b0b0b0"
POINT_COLOURS = {"issued": "#2e7d32", "redeemed": "#4f7cc4", "expired": "#c62828"}


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    colour: str = BAR
    previous: float | None = None
    previous_text: str = ""


def _short(label: str, n: int = 24) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def bar_chart_svg(title: str, bars: list[Bar], top: float | None = None) -> str:
    """Horizontal bars, one row each, scaled to `top` (default: the largest value); a thin
    grey bar under a row shows its previous value when it has one."""
    if top is None:
        values = [b.value for b in bars] + [b.previous for b in bars if b.previous is not None]
        top = max(values, default=0.0)
    scale = BAR_W / top if top > 0 else 0.0
    height = HEAD_H + ROW_H * max(len(bars), 1) + 8
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    if not bars:
        out.append(f'<text x="8" y="{HEAD_H + 16}" fill="#777">no data in this window</text>')
    for i, b in enumerate(bars):
        y = HEAD_H + i * ROW_H
        w = max(b.value, 0.0) * scale
        out.append(
            f'<text x="8" y="{y + 15}"><title>{escape(b.label)}</title>'
            f"{escape(_short(b.label))}</text>"
        )
        out.append(
            f'<rect class="bar" x="{LABEL_W}" y="{y + 4}" width="{w:.1f}" height="14" rx="2" '
            f'fill="{b.colour}"><title>{escape(b.label)}: {escape(b.text)}</title></rect>'
        )
        if b.previous is not None:
            pw = max(b.previous, 0.0) * scale
            out.append(
                f'<rect class="previous" x="{LABEL_W}" y="{y + 20}" width="{pw:.1f}" '
                f'height="3" fill="{PREVIOUS}"><title>previous window: '
                f"{escape(b.previous_text)}</title></rect>"
            )
        out.append(f'<text x="{LABEL_W + w + 6:.1f}" y="{y + 15}">{escape(b.text)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def tier_chart_svg(digest: KpiDigest) -> str:
    total = sum(digest.tier_distribution.values())
    bars = [
        Bar(tier, n, f"{n:,} ({n / total:.0%})" if total else f"{n:,}")
        for tier, n in digest.tier_distribution.items()
    ]
    return bar_chart_svg("Customers per tier (now)", bars)


def points_chart_svg(digest: KpiDigest) -> str:
    bars = []
    for kind in ("issued", "redeemed", "expired"):
        key = f"points_{kind}"
        value = float(getattr(digest, key))
        previous = digest.previous.get(key)
        text = format_figure(key, value)
        was = format_figure(key, previous) if previous is not None else ""
        bars.append(
            Bar(
                f"Points {kind}",
                value,
                f"{text} (previous {was})" if was else text,
                colour=POINT_COLOURS[kind],
                previous=previous,
                previous_text=was,
            )
        )
    return bar_chart_svg("Points in the window (grey: previous window)", bars)


def journey_chart_svg(digest: KpiDigest) -> str:
    bars = [
        Bar(
            j.journey,
            j.conversion_rate,
            f"{j.converted:,}/{j.enrolled:,} ({j.conversion_rate:.1%})",
        )
        for j in digest.journey_conversions
    ]
    return bar_chart_svg("Journey goal conversions (entered in the window)", bars, top=1.0)


# --------------------------------------------------------------------------- the page

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 24px auto; max-width: 960px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.card .label { color: #666; font-size: 12px; }
.card .value { font-size: 22px; font-weight: bold; margin: 2px 0; }
.card .change { font-size: 12px; }
.good { color: #2e7d32; } .bad { color: #c62828; } .same { color: #777; }
.charts svg { display: block; margin: 12px 0; max-width: 100%; height: auto; }
table { border-collapse: collapse; margin-top: 8px; }
th, td { border-bottom: 1px solid #eee; padding: 4px 12px 4px 0; text-align: left; }
td.n, th.n { text-align: right; }
.empty { color: #777; }
"""

HEADLINE: tuple[str, ...] = ("members_total", *COMPARED, "points_liability")
NOT_COMPARED = frozenset({"members_total", "points_liability"})


def _card(key: str, value: float, previous: float | None) -> str:
    c = change(key, value, previous)
    delta = f'<div class="change {c.css}">{escape(c.text)}</div>' if c is not None else ""
    return (
        f'<div class="card" data-figure="{escape(key)}">'
        f'<div class="label">{escape(LABELS[key])}</div>'
        f'<div class="value">{escape(format_figure(key, value))}</div>{delta}</div>'
    )


def _tier_table(digest: KpiDigest) -> str:
    if not digest.tier_movement:
        return '<p class="empty">No tier changes in this window.</p>'
    rows = "".join(
        f"<tr><td>{escape(m.from_tier) if m.from_tier is not None else '<em>(none)</em>'}</td>"
        f'<td>→ {escape(m.to_tier)}</td><td class="n">{m.count:,}</td></tr>'
        for m in digest.tier_movement
    )
    return (
        '<table class="tier-movement"><tr><th>From</th><th>To</th><th class="n">Customers</th>'
        f"</tr>{rows}</table>"
    )


def _journey_table(digest: KpiDigest) -> str:
    if not digest.journey_conversions:
        return '<p class="empty">No journey enrollments entered in this window.</p>'
    rows = "".join(
        f'<tr><td>{escape(j.journey)}</td><td class="n">{j.enrolled:,}</td>'
        f'<td class="n">{j.converted:,}</td><td class="n">{j.conversion_rate:.1%}</td>'
        f'<td class="n">{j.held_out:,}</td></tr>'
        for j in digest.journey_conversions
    )
    return (
        '<table class="journeys"><tr><th>Journey</th><th class="n">Enrolled</th>'
        '<th class="n">Converted</th><th class="n">Rate</th><th class="n">Held out</th></tr>'
        f"{rows}</table>"
    )


def render_digest_html(digest: KpiDigest, title: str) -> str:
    """The digest as a self-contained HTML page (inline CSS and SVG; every text escaped)."""
    current = {
        "members_total": float(digest.members_total),
        **digest.current(),
        "points_liability": digest.points_liability,
    }
    cards = "\n".join(
        _card(key, current[key], None if key in NOT_COMPARED else digest.previous.get(key))
        for key in HEADLINE
    )
    window = (
        f"{digest.since:%Y-%m-%d %H:%M} to {digest.as_of:%Y-%m-%d %H:%M} "
        f"{digest.as_of.tzname() or ''}".rstrip()
    )
    days = f"{digest.window_days} day{'s' if digest.window_days != 1 else ''}"
    compared = f"; ▲/▼ against the previous {days}" if digest.previous else "; no previous window"
    t = escape(title)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{t}</title>\n<style>{CSS}</style></head>\n<body>\n"
        f"<h1>{t}</h1>\n"
        f'<p class="meta">Run {escape(digest.run_date)} · window {escape(window)} '
        f"({escape(days)}){escape(compared)}</p>\n"
        f'<h2>Headline figures</h2>\n<div class="cards">\n{cards}\n</div>\n'
        '<h2>Charts</h2>\n<div class="charts">\n'
        f"{tier_chart_svg(digest)}\n{points_chart_svg(digest)}\n{journey_chart_svg(digest)}\n"
        "</div>\n"
        f"<h2>Tier movement</h2>\n{_tier_table(digest)}\n"
        f"<h2>Journey conversions</h2>\n{_journey_table(digest)}\n"
        "</body></html>\n"
    )
