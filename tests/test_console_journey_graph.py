"""The journey graph's layout and drawing, as plain functions: boxes and labelled links from
the journey model, back links of loops, layers, waypoints for long links, no overlapping
boxes, the holdout's box, counts on each box and every text escaped."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from crmflow.console.journey_graph import (
    NODE_H,
    NODE_W,
    Link,
    _pool,
    assign_layers,
    back_links,
    graph_of,
    holdout_id,
    journey_svg,
    layout,
    node_figures,
    shorten,
    text_width,
)
from journeys.models import Journey
from store.journey_stats import NodeStats

REPO = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
LOOP = """
journey: loop
entry: rule
channels: [email]
start: ping
nodes:
  ping:
    type: message
    channel: email
    template: {subject: "<b>Hi</b> & \\"bye\\"", text: t}
    next: wait
  wait: {type: wait_for, event: purchase, timeout: 7d, on_event: done, on_timeout: again}
  again:
    type: branch
    cases: [{when: "points_balance > 100", next: ping}]
    default: done
  done: {type: exit}
"""


def example(name: str) -> Journey:
    return Journey.model_validate(
        yaml.safe_load((REPO / f"examples/journeys/{name}.yaml").read_text())
    )


def loop() -> Journey:
    return Journey.model_validate(yaml.safe_load(LOOP))


def test_boxes_and_links_say_what_each_edge_means() -> None:
    boxes, links = graph_of(example("winback"))
    assert [b.id for b in boxes] == [
        "offer_test", "discount_email", "points_email", "wait_purchase", "done",
        "reminder_time", "reminder", holdout_id("offer_test"),
    ]  # fmt: skip
    assert boxes[-1].virtual and boxes[-1].type == "holdout"
    by_label = {(link.source, link.target): (link.kind, link.label) for link in links}
    assert by_label[("offer_test", "discount_email")] == ("variant", "discount 45%")
    assert by_label[("offer_test", holdout_id("offer_test"))] == ("holdout", "holdout 10%")
    assert by_label[("wait_purchase", "done")] == ("matched", "purchase ✓")
    assert by_label[("wait_purchase", "reminder_time")] == ("timeout", "timeout 14d")
    assert by_label[("reminder", "done")] == ("next", "")
    details = {b.id: b.detail for b in boxes}
    assert details["reminder_time"] == "until 10:00 mon-fri (local)"
    assert details["wait_purchase"] == "purchase if event.amount > 0, up to 14d"
    assert details["offer_test"] == "2 variants + holdout"

    boxes, links = graph_of(example("welcome"))
    cases = [(link.kind, link.label) for link in links if link.source == "bought"]
    assert cases == [("case", "1: purchases_30d >= 1"), ("default", "default")]
    boxes, _ = graph_of(example("birthday"))
    details = {b.id: b.detail for b in boxes}
    assert details["on_the_day"] == "until birthday 09:00 (local)"
    assert details["record_gift"] == "add_tag birthday-gift-sent"


def test_layers_run_top_to_bottom() -> None:
    boxes, links = graph_of(example("winback"))
    ids = [b.id for b in boxes]
    assert back_links("offer_test", ids, links) == set()
    layers = assign_layers(ids, links, set())
    assert layers == {
        "offer_test": 0, "discount_email": 1, "points_email": 1, holdout_id("offer_test"): 1,
        "wait_purchase": 2, "reminder_time": 3, "reminder": 4, "done": 5,
    }  # fmt: skip
    lay = layout(boxes, links, "offer_test")
    for link in links:  # every link points down
        assert lay.positions[link.target][1] > lay.positions[link.source][1]
    # wait_purchase -> done spans three layers: it passes two waypoints, beside the boxes
    (route,) = [r for r in lay.routes if r.link.kind == "matched"]
    assert len(route.points) == 2 + 2 * 2
    for x, _ in route.points[1:-1]:
        for bid, (bx, _) in lay.positions.items():
            if lay.layers[bid] in (3, 4):
                assert not bx <= x <= bx + NODE_W
    # the split sits over its variants and holdout, which are spread in file order
    split_x = lay.positions["offer_test"][0]
    row = sorted(
        ["discount_email", "points_email", holdout_id("offer_test")],
        key=lambda b: lay.positions[b][0],
    )
    assert row == ["discount_email", "points_email", holdout_id("offer_test")]
    assert lay.positions["points_email"][0] == split_x


def test_boxes_never_overlap_and_fit_the_drawing() -> None:
    for name in ("winback", "welcome", "birthday", "points-expiring"):
        j = example(name)
        boxes, links = graph_of(j)
        lay = layout(boxes, links, j.start)
        for a, b in itertools.combinations(lay.positions.values(), 2):
            apart_x = abs(a[0] - b[0]) >= NODE_W
            apart_y = abs(a[1] - b[1]) >= NODE_H
            assert apart_x or apart_y
        for x, y in lay.positions.values():
            assert x >= 0 and y >= 0
            assert x + NODE_W <= lay.width and y + NODE_H <= lay.height


def test_a_loop_is_drawn_back_up_the_right_side() -> None:
    j = loop()
    boxes, links = graph_of(j)
    ids = [b.id for b in boxes]
    back = back_links(j.start, ids, links)
    assert [(links[k].source, links[k].target) for k in back] == [("again", "ping")]
    lay = layout(boxes, links, j.start)
    assert lay.layers == {"ping": 0, "wait": 1, "again": 2, "done": 3}
    (up,) = [r for r in lay.routes if r.back]
    right = max(x + NODE_W for x, _ in lay.positions.values())
    assert up.points[1][0] > right and up.points[1][0] < lay.width
    assert up.label_at is not None and up.label_at[0] == up.points[1][0]
    # a self-loop too, and a cycle not reached from start does not hang
    links2 = [Link("a", "a", "next", ""), Link("b", "c", "next", ""), Link("c", "b", "next", "")]
    assert back_links("a", ["a", "b", "c"], links2) == {0, 2}


def test_pooling_keeps_order_and_centres() -> None:
    # three boxes all wishing to sit at 0: spread evenly around it
    assert _pool([0.0, 0.0, 0.0], [10.0, 10.0, 10.0], 2.0) == [-12.0, 0.0, 12.0]
    assert _pool([0.0, 100.0], [10.0, 10.0], 2.0) == [0.0, 100.0]


def test_the_svg_with_counts_links_and_escaped_text() -> None:
    j = loop()
    counts = {
        "ping": NodeStats(
            node="ping", type="message", entered=1200, sent=1100, suppressed=100,
            suppressed_reasons={"quiet <hours>": 100},
        ),
        "wait": NodeStats(node="wait", type="wait_for", waiting=7),
        "again": NodeStats(node="again", type="branch"),  # a branch logs no entry
    }  # fmt: skip
    svg = journey_svg(j, counts, href=lambda node, status: f"/x?node={node}&s={status}")
    root = ET.fromstring(svg)  # well-formed: every text escaped
    assert root.get("class") == "journey-graph"
    texts = {
        str(g.get("data-node")): " ".join("".join(g.itertext()).split())
        for g in root.iter(f"{SVG}g")
        if g.get("data-node")
    }
    assert "entered 1,200 · sent 1,100" in texts["ping"] and "suppressed 100" in texts["ping"]
    assert "quiet <hours>" in texts["ping"]  # in the box's tooltip
    assert '<b>Hi</b> & "bye"' in texts["ping"]
    assert "waiting 7" in texts["wait"]
    assert "no enrollments here" in texts["done"]
    assert "decides at once (not counted)" in texts["again"]
    anchors = [a.get("href") for a in root.iter(f"{SVG}a")]
    assert "/x?node=ping&s=None" in anchors and len(anchors) == 4
    labels = [a.get("aria-label") for a in root.iter(f"{SVG}a")]
    assert "ping: entered 1,200, sent 1,100, suppressed 100" in labels

    # the holdout's box counts its split's held-out enrollments and links to them
    w = example("winback")
    split = NodeStats(node="offer_test", type="split", entered=50, held_out=5)
    root = ET.fromstring(journey_svg(w, {"offer_test": split}, href=lambda n, s: f"{n}/{s}"))
    holdout = next(
        g for g in root.iter(f"{SVG}g") if g.get("data-node") == holdout_id("offer_test")
    )
    assert "held out 5" in " ".join("".join(holdout.itertext()).split())
    assert "offer_test/held_out" in [a.get("href") for a in root.iter(f"{SVG}a")]
    # without links, no anchors
    assert not list(ET.fromstring(journey_svg(w)).iter(f"{SVG}a"))


def test_figures_and_text_helpers() -> None:
    boxes, _ = graph_of(example("winback"))
    by_id = {b.id: b for b in boxes}
    delay = NodeStats(node="reminder_time", type="delay", waiting=0)
    assert node_figures(by_id["reminder_time"], delay) == [("waiting", 0)]
    ended = NodeStats(node="done", type="exit", completed=3, exited=1)
    assert node_figures(by_id["done"], ended) == [("completed", 3), ("exited", 1)]
    assert node_figures(by_id["done"], None) == []
    assert shorten("abcdef", 4) == "abc…" and shorten("abc", 4) == "abc"
    assert shorten("生日快乐生日快乐", 6) == "生日…"
    assert text_width("生日") == text_width("abcd")
