"""A journey drawn as a graph, for the console: boxes for nodes, arrows for edges, laid out
top to bottom by layers computed from the journey model, each box with its counts. Plain
functions, no I/O: `graph_of` (the boxes and labelled links of a `Journey`), `layout`
(positions and routes), `journey_svg` (the SVG element, every text escaped).

The layout is a small layered ("Sugiyama") drawing, enough for journeys of a few dozen
nodes:

1. Edges that close a loop (found by a depth-first walk from `start`) are set aside and
   drawn as arcs on the right, pointing up, so the rest is acyclic.
2. Each node's layer is its longest path from a source (so every forward edge points down);
   an edge spanning several layers gets an invisible waypoint on each layer between, so it
   is routed around the boxes rather than through them.
3. Within a layer, nodes and waypoints are ordered by the mean position of their neighbours
   (sweeps down and up), which removes most crossings.
4. Each box is placed under the mean of its parents, and boxes that would overlap are
   pooled and centred together (children of a split spread evenly under it).

A split's holdout has no node in the journey (held-out customers get nothing and end): it is
drawn as a dashed box of its own so the holdout edge and its count show.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from journeys.models import (
    BranchNode,
    DelayNode,
    ExitNode,
    Journey,
    MessageNode,
    SplitNode,
    UpdateNode,
    WaitForNode,
    edges,
)
from rules.explain import condition_text
from store.journey_stats import NodeStats

NODE_W, NODE_H = 236, 98
WAYPOINT_W = 20
H_GAP, V_GAP = 34, 74
PAD = 18
LANE_GAP = 30
LABEL_H = 16
SWEEPS = 4
HOLDOUT_PREFIX = "~holdout~"  # '~' cannot appear in a node id: no clash with a real node

# type -> (line colour, light fill)
COLOURS = {
    "message": ("#1f5fbf", "#e4edfb"),
    "delay": ("#8a5a00", "#fdf1d6"),
    "wait_for": ("#8a5a00", "#fdf1d6"),
    "branch": ("#6b3fa0", "#efe7f8"),
    "split": ("#6b3fa0", "#efe7f8"),
    "update": ("#0f766e", "#dff3f1"),
    "exit": ("#4a5263", "#eceff3"),
    "holdout": ("#4a5263", "#f4f6f9"),
}
TYPE_NAMES = {"wait_for": "wait for", "holdout": "holdout"}


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Box:
    """A box to draw: a node of the journey, or a split's holdout (`virtual`)."""

    id: str
    type: str
    detail: str
    virtual: bool = False


@dataclass(frozen=True)
class Link:
    """An edge with what it means: `kind` is next, case, default, variant, holdout,
    matched or timeout; `label` is what the arrow says (empty for a plain next)."""

    source: str
    target: str
    kind: str
    label: str


def holdout_id(split: str) -> str:
    return HOLDOUT_PREFIX + split


def _percent(weight: float, total: float) -> str:
    share = 100 * weight / total if total else 0.0
    return f"{share:.0f}%" if share >= 1 else f"{share:.1f}%"


def _days(weekdays: Sequence[str] | None) -> str:
    if not weekdays:
        return ""
    if list(weekdays) == ["mon", "tue", "wed", "thu", "fri"]:
        return " mon-fri"
    return " " + ",".join(weekdays)


def node_detail(node: Any) -> str:
    """One line saying what a node does: its channel and subject, its wait, its cases."""
    if isinstance(node, MessageNode):
        first = node.template.subject or node.template.text or ""
        return f"{node.channel}: {' '.join(first.split())}"
    if isinstance(node, DelayNode):
        kind = node.kind()
        if kind == "duration":
            return f"wait {node.duration}"
        if kind == "until_local_time":
            return f"until {node.until_local_time}{_days(node.weekdays)} (local)"
        offset = f" {node.offset_days:+d}d" if node.offset_days else ""
        return f"until {node.until_attribute}{offset} {node.at_local_time or '00:00'} (local)"
    if isinstance(node, WaitForNode):
        cond = f" if {condition_text(node.when)}" if node.when is not None else ""
        return f"{node.event}{cond}, up to {node.timeout}"
    if isinstance(node, BranchNode):
        n = len(node.cases)
        return f"{n} case{'s' if n != 1 else ''}, else default"
    if isinstance(node, SplitNode):
        n = len(node.variants)
        held = " + holdout" if node.holdout is not None else ""
        return f"{n} variant{'s' if n != 1 else ''}{held}"
    if isinstance(node, UpdateNode):
        parts = []
        for effect in node.effects:
            (key, args), *_ = effect.__dict__.items()
            tag = getattr(args, "tag", None)
            parts.append(f"{key} {tag}" if tag else key)
        return ", ".join(parts)
    if isinstance(node, ExitNode):
        return "end of the journey"
    return ""


def _links_of(nid: str, node: Any) -> list[Link]:
    if isinstance(node, BranchNode):
        out = [
            Link(nid, c.next, "case", f"{i + 1}: {condition_text(c.when)}")
            for i, c in enumerate(node.cases)
        ]
        return [*out, Link(nid, node.default, "default", "default")]
    if isinstance(node, SplitNode):
        total = node.total_weight()
        out = [
            Link(nid, v.next, "variant", f"{v.name} {_percent(v.weight, total)}")
            for v in node.variants
        ]
        if node.holdout is not None:
            label = f"holdout {_percent(node.holdout.weight, total)}"
            out.append(Link(nid, holdout_id(nid), "holdout", label))
        return out
    if isinstance(node, WaitForNode):
        return [
            Link(nid, node.on_event, "matched", f"{node.event} ✓"),
            Link(nid, node.on_timeout, "timeout", f"timeout {node.timeout}"),
        ]
    return [Link(nid, target, "next", "") for _, target in edges(node)]


def graph_of(journey: Journey) -> tuple[list[Box], list[Link]]:
    """The boxes (breadth-first from `start`, then any unreachable, then the holdouts) and
    the links of every node, in the file's order."""
    order: list[str] = []
    seen = {journey.start}
    queue = [journey.start]
    while queue:
        nid = queue.pop(0)
        order.append(nid)
        for _, nxt in edges(journey.nodes[nid]):
            if nxt not in seen and nxt in journey.nodes:
                seen.add(nxt)
                queue.append(nxt)
    order.extend(n for n in journey.nodes if n not in seen)

    boxes: list[Box] = []
    holdouts: list[Box] = []  # last, so a holdout is drawn right of its split's variants
    links: list[Link] = []
    for nid in order:
        node = journey.nodes[nid]
        boxes.append(Box(nid, node.type, node_detail(node)))
        if isinstance(node, SplitNode) and node.holdout is not None:
            holdouts.append(Box(holdout_id(nid), "holdout", "gets nothing; ends", virtual=True))
        links.extend(_links_of(nid, node))
    return boxes + holdouts, links


# --------------------------------------------------------------------------- layout


@dataclass
class Route:
    """How a link is drawn: the points it passes (source port first), whether it closes a
    loop (drawn up the right side), where its label sits."""

    link: Link
    points: list[tuple[float, float]]
    back: bool = False
    label_at: tuple[float, float] | None = None


@dataclass
class Layout:
    width: float
    height: float
    layers: dict[str, int]
    positions: dict[str, tuple[float, float]]  # box id -> top-left corner
    routes: list[Route] = field(default_factory=list)


def back_links(start: str, ids: Sequence[str], links: Sequence[Link]) -> set[int]:
    """Indices of the links that close a loop, found by a depth-first walk from `start`
    (then from any box not reached), following links in order."""
    out_of: dict[str, list[int]] = {i: [] for i in ids}
    for k, link in enumerate(links):
        out_of.setdefault(link.source, []).append(k)
    state: dict[str, int] = {}  # 1 on the walk's path, 2 done
    back: set[int] = set()
    for root in [start, *ids]:
        if root in state:
            continue
        state[root] = 1
        stack = [(root, iter(out_of.get(root, [])))]
        while stack:
            nid, pending = stack[-1]
            k = next(pending, -1)
            if k < 0:
                state[nid] = 2
                stack.pop()
                continue
            target = links[k].target
            if state.get(target) == 1:
                back.add(k)
            elif target not in state:
                state[target] = 1
                stack.append((target, iter(out_of.get(target, []))))
    return back


def assign_layers(ids: Sequence[str], links: Sequence[Link], back: set[int]) -> dict[str, int]:
    """Each box's layer: the longest path to it from a box nothing points to (loops
    excluded), so every forward link points at least one layer down."""
    preds: dict[str, list[str]] = {i: [] for i in ids}
    succs: dict[str, list[str]] = {i: [] for i in ids}
    for k, link in enumerate(links):
        if k not in back:
            preds[link.target].append(link.source)
            succs[link.source].append(link.target)
    indegree = {i: len(preds[i]) for i in ids}
    ready = [i for i in ids if indegree[i] == 0]
    layer = dict.fromkeys(ids, 0)
    while ready:
        nid = ready.pop(0)
        for nxt in succs[nid]:
            layer[nxt] = max(layer[nxt], layer[nid] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    return layer


def _pool(desired: Sequence[float], widths: Sequence[float], gap: float) -> list[float]:
    """Left edges as close to `desired` as possible without overlapping, order kept:
    overlapping neighbours are pooled into one block centred on their mean wish."""
    blocks: list[tuple[list[int], float]] = []  # (members, left edge)

    def best_left(members: list[int]) -> float:
        offset, wishes = 0.0, []
        for m in members:
            wishes.append(desired[m] - offset)
            offset += widths[m] + gap
        return sum(wishes) / len(wishes)

    for i in range(len(desired)):
        members, left = [i], desired[i]
        while blocks:
            prev, prev_left = blocks[-1]
            prev_right = prev_left + sum(widths[m] + gap for m in prev)
            if prev_right <= left + 1e-9:
                break
            blocks.pop()
            members = prev + members
            left = best_left(members)
        blocks.append((members, left))
    out = [0.0] * len(desired)
    for members, left in blocks:
        x = left
        for m in members:
            out[m] = x
            x += widths[m] + gap
    return out


def layout(boxes: Sequence[Box], links: Sequence[Link], start: str) -> Layout:
    """Positions of the boxes and routes of the links (see the module's docstring)."""
    ids = [b.id for b in boxes]
    back = back_links(start, ids, links)
    layer = assign_layers(ids, links, back)
    depth = max(layer.values(), default=0) + 1

    # units per layer: boxes, and a waypoint per layer crossed by a long forward link
    rows: list[list[str]] = [[] for _ in range(depth)]
    for bid in ids:
        rows[layer[bid]].append(bid)
    chains: dict[int, list[str]] = {}
    unit_layer = dict(layer)
    for k, link in enumerate(links):
        if k in back:
            continue
        chain = [link.source]
        for lay in range(layer[link.source] + 1, layer[link.target]):
            way = f"~way~{k}~{lay}"
            rows[lay].append(way)
            unit_layer[way] = lay
            chain.append(way)
        chains[k] = [*chain, link.target]
    up: dict[str, list[str]] = {u: [] for u in unit_layer}
    down: dict[str, list[str]] = {u: [] for u in unit_layer}
    for chain in chains.values():
        for a, b in itertools.pairwise(chain):
            down[a].append(b)
            up[b].append(a)

    # order within layers: barycentre sweeps, down then up
    pos = {u: i for row in rows for i, u in enumerate(row)}

    def sweep(row: list[str], neighbours: dict[str, list[str]]) -> list[str]:
        def key(u: str) -> tuple[float, int]:
            near = neighbours[u]
            centre = sum(pos[n] for n in near) / len(near) if near else float(pos[u])
            return (centre, pos[u])

        ordered = sorted(row, key=key)
        for i, u in enumerate(ordered):
            pos[u] = i
        return ordered

    for _ in range(SWEEPS):
        for lay in range(1, depth):
            rows[lay] = sweep(rows[lay], up)
        for lay in range(depth - 2, -1, -1):
            rows[lay] = sweep(rows[lay], down)

    # x: under the parents' mean, pooled where they would overlap
    width_of = {u: (WAYPOINT_W if u.startswith("~way~") else NODE_W) for u in unit_layer}
    centre: dict[str, float] = {}
    for lay, row in enumerate(rows):
        widths = [width_of[u] for u in row]
        if lay == 0 or not any(up[u] for u in row):
            total = sum(widths) + H_GAP * (len(row) - 1)
            desired = [-total / 2 + sum(widths[:i]) + H_GAP * i for i in range(len(row))]
        else:
            desired = []
            for u, w in zip(row, widths, strict=True):
                parents = up[u]
                if parents:
                    desired.append(sum(centre[p] for p in parents) / len(parents) - w / 2)
                else:
                    desired.append(desired[-1] + widths[len(desired) - 1] + H_GAP if desired
                                   else 0.0)  # fmt: skip
        lefts = _pool(desired, widths, H_GAP)
        for u, left, w in zip(row, lefts, widths, strict=True):
            centre[u] = left + w / 2
    min_x = min(centre[u] - width_of[u] / 2 for u in centre)
    shift = PAD - min_x
    for u in centre:
        centre[u] += shift
    right = max(centre[u] + width_of[u] / 2 for u in centre)

    def top(u: str) -> float:
        return PAD + unit_layer[u] * (NODE_H + V_GAP)

    positions = {b: (centre[b] - NODE_W / 2, top(b)) for b in ids}

    # ports: links leave a box's bottom and enter a box's top spread out, in x order
    def spread(n: int) -> list[float]:
        step = min(30.0, (NODE_W - 60) / max(n - 1, 1))
        return [(i - (n - 1) / 2) * step for i in range(n)]

    out_port: dict[int, float] = {}
    in_port: dict[int, float] = {}
    for bid in ids:
        leaving = sorted(
            (k for k in chains if links[k].source == bid), key=lambda k: centre[chains[k][1]]
        )
        for k, dx in zip(leaving, spread(len(leaving)), strict=True):
            out_port[k] = centre[bid] + dx
        arriving = sorted(
            (k for k in chains if links[k].target == bid), key=lambda k: centre[chains[k][-2]]
        )
        for k, dx in zip(arriving, spread(len(arriving)), strict=True):
            in_port[k] = centre[bid] + dx

    routes: list[Route] = []
    for k, chain in chains.items():
        points = [(out_port[k], top(chain[0]) + NODE_H)]
        for way in chain[1:-1]:
            points += [(centre[way], top(way)), (centre[way], top(way) + NODE_H)]
        points.append((in_port[k], top(chain[-1])))
        (x1, y1), (x2, y2) = points[0], points[1]
        routes.append(Route(links[k], points, label_at=((x1 + x2) / 2, (y1 + y2) / 2)))
    lanes = 0
    for k in sorted(back):
        lanes += 1
        link = links[k]
        lane = right + LANE_GAP * lanes
        sx, sy = positions[link.source]
        tx, ty = positions[link.target]
        ay, by = sy + NODE_H / 2, ty + NODE_H / 2 + 12
        loop = [(sx + NODE_W, ay), (lane, ay), (lane, by), (tx + NODE_W, by)]
        routes.append(Route(link, loop, back=True, label_at=(lane, (ay + by) / 2)))
    _spread_labels(routes)
    width = right + LANE_GAP * lanes + PAD + (40 if lanes else 0)
    height = PAD * 2 + depth * NODE_H + (depth - 1) * V_GAP
    return Layout(width, height, dict(layer), positions, routes)


def text_width(text: str, size: float = 11.0) -> float:
    """An estimate of `text`'s width in pixels (wide East Asian characters count twice)."""
    return sum(_units(c) for c in text) * size * 0.58


def _spread_labels(routes: list[Route]) -> None:
    """Move labels that would cover one another down (then up) a little."""
    placed: list[tuple[float, float, float, float]] = []
    for r in sorted(routes, key=lambda r: r.label_at or (0, 0)):
        if not r.link.label or r.label_at is None:
            continue
        x, y = r.label_at
        w = text_width(shorten(r.link.label, 30)) + 10
        for dy in (0, LABEL_H + 2, -(LABEL_H + 2), 2 * (LABEL_H + 2), -2 * (LABEL_H + 2)):
            box = (x - w / 2, y + dy - LABEL_H / 2, x + w / 2, y + dy + LABEL_H / 2)
            if not any(_overlap(box, other) for other in placed):
                break
        placed.append(box)
        r.label_at = (x, box[1] + LABEL_H / 2)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


# --------------------------------------------------------------------------- drawing


def _units(c: str) -> int:
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` character widths (a wide East Asian character is two), cut
    with an ellipsis when longer."""
    if sum(_units(c) for c in text) <= limit:
        return text
    out: list[str] = []
    used = 1  # the ellipsis
    for c in text:
        used += _units(c)
        if used > limit:
            break
        out.append(c)
    return "".join(out).rstrip() + "…"


def node_figures(box: Box, stats: NodeStats | None, held_out: int = 0) -> list[tuple[str, int]]:
    """What a box counts, in order: entered (where recorded), waiting, sent, suppressed,
    failed, and how many ended there."""
    if box.type == "holdout":
        return [("held out", held_out)]
    if stats is None:
        return []
    out: list[tuple[str, int]] = []
    if stats.entered is not None:
        out.append(("entered", stats.entered))
    if stats.waiting or box.type in ("delay", "wait_for"):
        out.append(("waiting", stats.waiting))
    if box.type == "message":
        out += [("sent", stats.sent), ("suppressed", stats.suppressed)]
        if stats.failed:
            out.append(("failed", stats.failed))
    for key, value in (
        ("converted", stats.converted),
        ("completed", stats.completed),
        ("exited", stats.exited),
    ):
        if value:
            out.append((key, value))
    return out


def _lines(figures: list[tuple[str, int]], limit: int = 34) -> list[list[tuple[str, int]]]:
    lines: list[list[tuple[str, int]]] = [[]]
    used = 0
    for label, value in figures:
        size = len(label) + len(f"{value:,}") + 3
        if lines[-1] and used + size > limit:
            lines.append([])
            used = 0
        lines[-1].append((label, value))
        used += size
    return lines


def _tooltip(box: Box, stats: NodeStats | None, figures: list[tuple[str, int]]) -> str:
    parts = [f"{box.id} ({TYPE_NAMES.get(box.type, box.type)})", box.detail]
    parts += [f"{label} {value:,}" for label, value in figures]
    if stats is not None:
        for why, n in stats.suppressed_reasons.items():
            parts.append(f"suppressed {n:,}: {why}")
        for why, n in stats.failed_reasons.items():
            parts.append(f"failed {n:,}: {why}")
    return "\n".join(p for p in parts if p)


def _box_svg(
    box: Box, x: float, y: float, stats: NodeStats | None, held_out: int, href: str | None
) -> str:
    line, fill = COLOURS.get(box.type, COLOURS["exit"])
    figures = node_figures(box, stats, held_out)
    dash = ' stroke-dasharray="5 4"' if box.virtual else ""
    kind = TYPE_NAMES.get(box.type, box.type).upper()
    parts = [
        f'<g class="jg-node jg-{escape(box.type)}" data-node="{escape(box.id)}">',
        f"<title>{escape(_tooltip(box, stats, figures))}</title>",
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="8" '
        f'fill="#fff" stroke="{line}" stroke-width="1.5"{dash}/>',
        f'<path d="M{x + 8:.1f},{y:.1f} h{NODE_W - 16} a8,8 0 0 1 8,8 v12 h-{NODE_W} v-12 '
        f'a8,8 0 0 1 8,-8 z" fill="{fill}"/>'
        if not box.virtual
        else "",
        f'<text x="{x + 10:.1f}" y="{y + 14:.1f}" class="jg-type" fill="{line}">'
        f"{escape(kind)}</text>",
        f'<text x="{x + 10:.1f}" y="{y + 38:.1f}" class="jg-id">'
        f"{escape(shorten('holdout' if box.virtual else box.id, 28))}</text>",
        f'<text x="{x + 10:.1f}" y="{y + 55:.1f}" class="jg-detail">'
        f"{escape(shorten(box.detail, 33))}</text>",
    ]
    lines = _lines(figures)[:2] if any(value for _, value in figures) else []
    if not lines:
        # a branch decides at once and logs no entry: say so rather than "none"
        passing = box.type == "branch" and stats is not None and stats.entered is None
        none = "decides at once (not counted)" if passing else "no enrollments here"
        parts.append(f'<text x="{x + 10:.1f}" y="{y + 76:.1f}" class="jg-none">{none}</text>')
    for i, row in enumerate(lines):
        spans = " · ".join(
            f'{escape(label)} <tspan class="jg-n">{value:,}</tspan>' for label, value in row
        )
        parts.append(
            f'<text x="{x + 10:.1f}" y="{y + 74 + 16 * i:.1f}" class="jg-count">{spans}</text>'
        )
    parts.append("</g>")
    body = "".join(parts)
    if href is None:
        return body
    spoken = ", ".join(f"{label} {value:,}" for label, value in figures) or "no enrollments"
    aria = f"{'holdout of ' + box.id[len(HOLDOUT_PREFIX) :] if box.virtual else box.id}: {spoken}"
    return f'<a href="{escape(href)}" aria-label="{escape(aria)}">{body}</a>'


def _path(route: Route) -> str:
    pts = route.points
    if route.back:
        (ax, ay), (lane, _), (_, by), (bx, _) = pts
        r = 10
        return (
            f"M{ax:.1f},{ay:.1f} H{lane - r:.1f} Q{lane:.1f},{ay:.1f} {lane:.1f},{ay - r:.1f} "
            f"V{by + r:.1f} Q{lane:.1f},{by:.1f} {lane - r:.1f},{by:.1f} H{bx + 2:.1f}"
        )
    d = f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"
    for (x1, y1), (x2, y2) in itertools.pairwise(pts):
        if abs(x1 - x2) < 0.5 or y2 <= y1:  # through a waypoint: straight down
            d += f" L{x2:.1f},{y2:.1f}"
        else:
            mid = (y1 + y2) / 2
            d += f" C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"
    return d


def _edge_svg(route: Route) -> str:
    link = route.link
    cls = f"jg-edge jg-{link.kind}" + (" jg-back" if route.back else "")
    dash = ' stroke-dasharray="5 4"' if link.kind in ("holdout", "timeout") else ""
    out = (
        f'<path class="{cls}" d="{_path(route)}" fill="none" stroke="#7b8494" '
        f'stroke-width="1.4"{dash} marker-end="url(#jg-arrow)"/>'
    )
    if link.label and route.label_at is not None:
        x, y = route.label_at
        text = shorten(link.label, 30)
        w = text_width(text) + 10
        out += (
            f'<g class="jg-label"><title>{escape(link.label)}</title>'
            f'<rect x="{x - w / 2:.1f}" y="{y - LABEL_H / 2:.1f}" width="{w:.1f}" '
            f'height="{LABEL_H}" rx="4" fill="#fff" stroke="#d8dde6"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{escape(text)}</text></g>'
        )
    return out


STYLE = (
    "<style>"
    ".journey-graph text{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Noto Sans',"
    "'PingFang SC','Microsoft YaHei',sans-serif;font-size:11px;fill:#1d2330}"
    ".journey-graph .jg-type{font-size:10px;font-weight:700;letter-spacing:.06em}"
    ".journey-graph .jg-id{font-size:14px;font-weight:650}"
    ".journey-graph .jg-detail{fill:#5b6475}"
    ".journey-graph .jg-count{font-size:11.5px}"
    ".journey-graph .jg-n{font-weight:700}"
    ".journey-graph .jg-none{fill:#5b6475;font-style:italic}"
    ".journey-graph a:focus rect,.journey-graph a:hover rect:first-of-type"
    "{stroke-width:3}"
    ".journey-graph a:focus{outline:none}"
    ".journey-graph a:focus-visible rect:first-of-type{stroke:#f0a000;stroke-width:4}"
    "</style>"
)


def journey_svg(
    journey: Journey,
    counts: Mapping[str, NodeStats] | None = None,
    href: Callable[[str, str | None], str | None] | None = None,
    title: str | None = None,
) -> str:
    """The journey as an inline SVG element: a box per node with its figures from `counts`
    (node id -> stats), each a link to `href(node, status)` when given (the holdout's box:
    its split with status held_out)."""
    counts = counts or {}
    boxes, links = graph_of(journey)
    lay = layout(boxes, links, journey.start)
    w, h = round(lay.width), round(lay.height)
    label = title or f"Journey {journey.journey} as a graph"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="journey-graph" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" role="group" aria-label="{escape(label)}">',
        STYLE,
        '<defs><marker id="jg-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#7b8494"/></marker></defs>',
    ]
    # edges first, labels over them, boxes on top
    out += [_edge_svg(r) for r in lay.routes]
    for box in boxes:
        x, y = lay.positions[box.id]
        if box.virtual:
            split = box.id[len(HOLDOUT_PREFIX) :]
            stats = counts.get(split)
            held = stats.held_out if stats is not None else 0
            link = href(split, "held_out") if href else None
            out.append(_box_svg(box, x, y, None, held, link))
        else:
            out.append(_box_svg(box, x, y, counts.get(box.id), 0, href(box.id, None) if href
                                else None))  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)
