"""Load and check a journey file: every problem at once, each with its file, line and node.

`load_journey(path)` reads the journey YAML (with line numbers) and the programme
(`program.yaml` beside the journey's folder or in its parent, or a given file) and returns
the validated `Journey`, or raises `SourceError` listing every problem found:

- the file format (the pydantic models in `journeys.models`);
- the graph: `start` and every `next` name a node; every node is reachable from `start`;
  every path ends (an `exit` can be reached from every node); every loop waits (contains a
  `delay` or `wait_for`), so no customer spins through messages without pause;
- channels the journey does not allow, or message content a channel cannot send;
- event types outside a given list of known events (any well-formed name by default);
- conditions and update effects, checked like rules against the programme (unknown facts,
  operators that do not fit, undefined tiers, expressions); profile-only conditions
  (branches, segments) and update amounts may not read `event.*` facts;
- templates that do not parse or do not render against a sample context (sandboxed jinja2,
  undefined names are errors): the programme's sample customer and what the journey's entry
  gives. A journey entered on an event sees `event` with the properties the programme
  declares (`event_properties`, sample values of their types), those the automation writing
  that event puts on it, and a rule's `journey_event` data; `event` is refused in a journey
  entered by a rule or a segment. `data` holds the keys the rules that enroll the customer
  (`enroll_journey`) or send the entry event (`journey_event`) pass, when the rules are given
  (`rules=`); without them any `data.<name>` is accepted, its type unknown (a segment's
  `data` is its run key). An unknown `event.properties.x` or `data.y` is refused with its
  line;
- split variants: unique names, positive weights.

Pure apart from reading the two files: no store, no Temporal.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from journeys.models import (
    CHANNELS,
    HOLDOUT,
    WAITS,
    BranchNode,
    Channel,
    Content,
    DelayNode,
    Entry,
    EventEntry,
    ExitNode,
    Goal,
    Journey,
    MessageNode,
    Node,
    SegmentEntry,
    SplitNode,
    UpdateNode,
    WaitForNode,
    edges,
)
from journeys.templates import (
    SAMPLE_UNSUBSCRIBE_URL,
    AnyNames,
    KnownNames,
    check_part,
    sample_event,
    sample_profile,
    sample_properties,
    template_context,
)
from rules.compiler import condition_facts
from rules.models import EnrollJourney, Name, Program, RetentionAction, Rule
from rules.models import JourneyEvent as JourneyEventEffect
from rules.pack import Checker, find_program, load_program
from rules.source import (
    LinePath,
    SourceError,
    SourceProblem,
    YamlDoc,
    errors_from_validation,
    load_yaml,
    parse_yaml,
)

_NODE = TypeAdapter(Node)
_ENTRY: TypeAdapter[Any] = TypeAdapter(Entry)
_GOAL = TypeAdapter(Goal)
_CHANNELS = TypeAdapter(list[Channel])
_NAMES = TypeAdapter(list[Name])

# what each channel can carry: parts it needs, parts it cannot send
NEEDS: dict[str, tuple[str, ...]] = {"email": ("subject",), "sms": ("text",), "wechat": ("text",)}
REFUSES: dict[str, tuple[str, ...]] = {"sms": ("subject", "html"), "wechat": ("subject", "html")}


@dataclass(frozen=True)
class JourneyError(SourceProblem):
    """A problem in a journey file, with the node it concerns (None for the header)."""

    node: str | None = None


@dataclass
class LoadedJourney:
    journey: Journey
    path: str
    program: Program
    program_path: str


@dataclass
class _Parts:
    """What could be read of a journey, even when other parts of it are invalid."""

    start: str | None
    nodes: dict[str, Any]  # node id -> node model, or None when the node itself is invalid
    raw_nodes: dict[str, Any]
    channels: list[str] | None
    entry: Any
    goal: Goal | None
    exit_on: list[str]


def _try(adapter: TypeAdapter[Any], data: Any) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError:
        return None


def _parts(data: dict[str, Any], journey: Journey | None) -> _Parts:
    raw_nodes = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    assert isinstance(raw_nodes, dict)
    raw_nodes = {k: v for k, v in raw_nodes.items() if isinstance(k, str)}
    if journey is not None:
        return _Parts(
            journey.start,
            dict(journey.nodes),
            raw_nodes,
            list(journey.channels),
            journey.entry,
            journey.goal,
            list(journey.exit_on),
        )
    start = data.get("start")
    channels = _try(_CHANNELS, data["channels"]) if "channels" in data else list(CHANNELS)
    return _Parts(
        start if isinstance(start, str) else None,
        {k: _try(_NODE, v) for k, v in raw_nodes.items()},
        raw_nodes,
        channels,
        _try(_ENTRY, data.get("entry")),
        _try(_GOAL, data["goal"]) if data.get("goal") is not None else None,
        _try(_NAMES, data.get("exit_on", [])) or [],
    )


def _raw_edges(raw: Any) -> list[tuple[LinePath, str]]:
    """The targets an invalid node names, read from its raw data where they are text."""
    if not isinstance(raw, dict):
        return []
    out: list[tuple[LinePath, str]] = []
    for key in ("next", "on_event", "on_timeout", "default"):
        if isinstance(raw.get(key), str):
            out.append(((key,), raw[key]))
    for key in ("cases", "variants"):
        items = raw.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict) and isinstance(item.get("next"), str):
                    out.append(((key, i, "next"), item["next"]))
    return out


def _sccs(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), nodes in graph order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            succ = graph[v]
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                order = list(graph)
                out.append(sorted(comp, key=order.index))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def _cycle(graph: dict[str, list[str]], members: set[str], first: str) -> list[str]:
    """A shortest cycle through `first` inside `members`, as a node list ending at `first`."""
    prev: dict[str, str] = {}
    queue = [first]
    seen = {first}
    while queue:
        v = queue.pop(0)
        for w in graph[v]:
            if w == first:
                path = [v]
                while path[-1] != first:
                    path.append(prev[path[-1]])
                return [first, *reversed(path[:-1]), first] if v != first else [first, first]
            if w in members and w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    return [first]


def _reach(graph: dict[str, list[str]], starts: Iterable[str]) -> set[str]:
    seen = set(starts)
    todo = list(seen)
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _near(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def handed_over(rules: Iterable[Rule], journey: str, event: str | None) -> dict[str, Any]:
    """The data the rules hand `journey` (keys and the rule files' values): their
    `enroll_journey` data (event None) or their `journey_event` data for `event`."""
    out: dict[str, Any] = {}
    for rule in rules:
        coupon = _coupon_sample(rule)
        for eff in rule.then:
            if event is None and isinstance(eff, EnrollJourney):
                if eff.enroll_journey.journey == journey:
                    out.update({**coupon, **eff.enroll_journey.data})
            elif event is not None and isinstance(eff, JourneyEventEffect):
                args = eff.journey_event
                if args.journey == journey and args.event == event:
                    out.update({**coupon, **args.data})
    return out


def _coupon_sample(rule: Rule) -> dict[str, Any]:
    """What a rule whose retention action issues a coupon hands its journeys besides their
    data (`rules.effects`): sample values of the coupon's code, value and expiry date."""
    for eff in rule.then:
        if isinstance(eff, RetentionAction) and eff.retention_action.coupon is not None:
            c = eff.retention_action.coupon
            return {
                "coupon_code": f"{c.code_prefix}-1A2B3C4D",
                "coupon_value": c.value,
                "coupon_expires_at": "2026-03-31",
            }
    return {}


class _Check:
    def __init__(
        self,
        doc: YamlDoc,
        program: Program,
        known_events: Collection[str] | None,
        rules: Iterable[Rule] | None = None,
    ) -> None:
        self.doc = doc
        self.program = program
        self.known_events = set(known_events) if known_events is not None else None
        self.rules = list(rules) if rules is not None else None
        self.errors: list[JourneyError] = []

    def entry_context(self, entry: Any, journey: str) -> dict[str, Any]:
        """`event` and `data` as the journey's messages will see them, with sample values;
        `event` left out (refused) where the entry brings no event."""
        if isinstance(entry, EventEntry):
            given = handed_over(self.rules, journey, entry.event) if self.rules is not None else {}
            props = sample_properties(self.program, entry.event, given)
            data: dict[str, Any] = (
                KnownNames("data", given) if self.rules is not None else AnyNames()
            )
            return {"event": sample_event(entry.event, props), "data": data}
        if isinstance(entry, SegmentEntry):
            return {"data": KnownNames("data", {"segment_run": "2026-03-01T09:00"})}
        if entry == "rule" and self.rules is not None:
            return {"data": KnownNames("data", handed_over(self.rules, journey, None))}
        return {"data": AnyNames()}

    def err(self, path: LinePath, message: str, node: str | None = None) -> None:
        text = f"node {node!r}: {message}" if node is not None else message
        self.errors.append(JourneyError(self.doc.path, self.doc.line_of(path), text, node))

    # ------------------------------------------------------------------ graph

    def graph(self, parts: _Parts) -> None:
        nodes = parts.nodes
        ids = list(nodes)
        succ: dict[str, list[str]] = {}
        ends: set[str] = set()
        for nid, node in nodes.items():
            if node is None:
                found = _raw_edges(parts.raw_nodes.get(nid))
                ends.add(nid)  # invalid: already reported; do not pile loop errors on it
            else:
                found = edges(node)
                if isinstance(node, ExitNode) or (
                    isinstance(node, SplitNode) and node.holdout is not None
                ):
                    ends.add(nid)
            succ[nid] = []
            for path, target in found:
                if target in nodes:
                    succ[nid].append(target)
                else:
                    ends.add(nid)  # reported here; counts as an end so nothing else piles up
                    if node is not None:
                        self.err(
                            ("nodes", nid, *path),
                            f"{'.'.join(str(p) for p in path)}: {target!r} is not a node"
                            + _near(target, ids),
                            nid,
                        )
        if parts.start is not None and parts.start not in nodes:
            self.err(
                ("start",),
                f"start: {parts.start!r} is not a node" + _near(parts.start, ids),
            )
        scope = set(ids)
        if parts.start in nodes:
            reachable = _reach(succ, [parts.start])
            for nid in ids:
                if nid not in reachable:
                    self.err(
                        ("nodes", nid),
                        f"unreachable: no path from start {parts.start!r} leads here",
                        nid,
                    )
            scope = reachable
        # paths that never end: nodes from which no end can be reached
        back: dict[str, list[str]] = {n: [] for n in ids}
        for v, ws in succ.items():
            for w in ws:
                back[w].append(v)
        can_end = _reach(back, ends)
        doomed = {n for n in scope if n not in can_end}
        sub = {n: [w for w in succ[n] if w in doomed] for n in ids if n in doomed}
        comps = _sccs(sub)
        where = {n: i for i, comp in enumerate(comps) for n in comp}
        for i, comp in enumerate(comps):
            if any(where[w] != i for n in comp for w in sub[n]):
                continue  # not a bottom component: it leads into one reported below
            loop = _cycle(sub, set(comp), comp[0])
            self.err(
                ("nodes", comp[0]),
                f"this path never ends: {' → '.join(loop)} loops with no way to an exit",
                comp[0],
            )
        # loops with no wait: cycles among nodes that are neither delay nor wait_for
        busy = {
            n
            for n in scope
            if nodes[n] is not None and getattr(nodes[n], "type", None) not in WAITS
        }
        quick = {n: [w for w in succ[n] if w in busy] for n in ids if n in busy}
        for comp in _sccs(quick):
            if len(comp) == 1 and comp[0] not in quick[comp[0]]:
                continue
            loop = _cycle(quick, set(comp), comp[0])
            self.err(
                ("nodes", comp[0]),
                f"the loop {' → '.join(loop)} has no delay or wait_for: "
                "it would run again and again without pause",
                comp[0],
            )

    # ------------------------------------------------------------------ conditions

    def condition(
        self, cond: Any, path: LinePath, node: str | None, *, event: bool, what: str = ""
    ) -> None:
        """Check a condition like a rule's; `event`: whether an event is there to test
        (else `what`, the kind of condition, is named in the error for event.* facts)."""
        checker = Checker(self.program, self.doc)
        checker.condition(cond, path)
        for e in checker.errors:
            text = f"node {node!r}: {e.message}" if node is not None else e.message
            self.errors.append(JourneyError(e.file, e.line, text, node))
        if not event:
            for fact in dict.fromkeys(condition_facts(cond)):
                if fact.startswith("event."):
                    self.err(
                        path,
                        f"{what} test the customer's profile; {fact!r} is only set in "
                        "entry, goal and wait_for conditions",
                        node,
                    )

    def event_name(self, name: str, path: LinePath, node: str | None = None) -> None:
        if self.known_events is not None and name not in self.known_events:
            self.err(
                path,
                f"unknown event type {name!r}{_near(name, self.known_events)}; known: "
                + ", ".join(sorted(self.known_events)),
                node,
            )

    def header(self, parts: _Parts) -> None:
        entry = parts.entry
        if isinstance(entry, EventEntry):
            self.event_name(entry.event, ("entry", "event"))
            if entry.when is not None:
                self.condition(entry.when, ("entry", "when"), None, event=True)
        elif isinstance(entry, SegmentEntry):
            self.condition(entry.segment, ("entry", "segment"), None, event=False, what="segments")
        if parts.goal is not None:
            self.event_name(parts.goal.event, ("goal", "event"))
            if parts.goal.when is not None:
                self.condition(parts.goal.when, ("goal", "when"), None, event=True)
        for i, name in enumerate(parts.exit_on):
            self.event_name(name, ("exit_on", i))

    # ------------------------------------------------------------------ nodes

    def nodes(self, parts: _Parts, journey: str) -> None:
        context = template_context(
            sample_profile(self.program), unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL, journey="sample"
        )
        del context["event"]  # only an event entry brings one
        context.update(self.entry_context(parts.entry, journey))
        for nid, node in parts.nodes.items():
            base: LinePath = ("nodes", nid)
            if isinstance(node, MessageNode):
                self.message(nid, node, parts.channels, context)
            elif isinstance(node, WaitForNode):
                self.event_name(node.event, (*base, "event"), nid)
                if node.when is not None:
                    self.condition(node.when, (*base, "when"), nid, event=True)
            elif isinstance(node, BranchNode):
                for i, case in enumerate(node.cases):
                    self.condition(
                        case.when, (*base, "cases", i, "when"), nid, event=False, what="branches"
                    )
            elif isinstance(node, SplitNode):
                seen: dict[str, int] = {}
                for i, variant in enumerate(node.variants):
                    path = (*base, "variants", i, "name")
                    if variant.name == HOLDOUT:
                        self.err(path, f"{HOLDOUT!r} names the holdout group; rename it", nid)
                    elif variant.name in seen:
                        self.err(
                            path, f"variant name {variant.name!r} is used twice in this split", nid
                        )
                    seen.setdefault(variant.name, i)
            elif isinstance(node, UpdateNode):
                self.effects(nid, node)
            elif isinstance(node, DelayNode) and node.until_attribute is not None:
                declared = self.program.attributes.get(node.until_attribute)
                if declared is not None and declared != "string":
                    self.err(
                        (*base, "until_attribute"),
                        f"attribute {node.until_attribute!r} is declared as a {declared} in "
                        "the programme; it must hold a date (YYYY-MM-DD)",
                        nid,
                    )

    def effects(self, nid: str, node: UpdateNode) -> None:
        checker = Checker(self.program, self.doc)
        checker.effects(node.effects, ("nodes", nid, "effects"), event_facts=False)
        for e in checker.errors:
            self.errors.append(JourneyError(e.file, e.line, f"node {nid!r}: {e.message}", nid))

    def message(
        self,
        nid: str,
        node: MessageNode,
        channels: list[str] | None,
        context: dict[str, Any],
    ) -> None:
        base: LinePath = ("nodes", nid)
        if channels is not None and node.channel not in channels:
            self.err(
                (*base, "channel"),
                f"channel {node.channel!r} is not one of this journey's channels "
                f"({', '.join(channels)})",
                nid,
            )
        contents: list[tuple[LinePath, str, Content]] = [
            ((*base, "template"), "the template", node.template)
        ]
        contents += [
            ((*base, "template", "variants", loc), f"the {loc} variant", c)
            for loc, c in node.template.variants.items()
        ]
        for path, label, content in contents:
            parts = content.parts()
            if "text" not in parts and "html" not in parts:
                self.err(path, f"{label} has neither text nor html", nid)
            for part in NEEDS.get(node.channel, ()):
                if part not in parts:
                    self.err(path, f"{label} needs a {part} for {node.channel}", nid)
            for part in REFUSES.get(node.channel, ()):
                if part in parts:
                    self.err((*path, part), f"{label}: {node.channel} messages have no {part}", nid)
            for part, source in parts.items():
                problem = check_part(part, source, context)
                if problem is None:
                    continue
                line = self._template_line((*path, part), problem.line)
                self.errors.append(
                    JourneyError(
                        self.doc.path,
                        line,
                        f"node {nid!r}: {label}'s {part} {problem.message}",
                        nid,
                    )
                )

    def _template_line(self, path: LinePath, inner: int | None) -> int | None:
        """The file line of a template problem: the part's key line, plus the line within
        the template when the part is a block scalar (`|` or `>`) starting below it."""
        line = self.doc.line_of(path)
        if line is None or inner is None:
            return line
        key = str(path[-1])
        text_lines = self.doc.text.splitlines()
        here = text_lines[line - 1] if 0 < line <= len(text_lines) else ""
        block = re.search(rf"\b{re.escape(key)}\s*:\s*[|>]", here) is not None
        return line + inner if block else line + inner - 1


def check_journey(
    doc: YamlDoc,
    program: Program,
    known_events: Collection[str] | None = None,
    rules: Iterable[Rule] | None = None,
) -> Journey:
    """Validate a parsed journey document; raise SourceError listing every problem. With
    `rules` (the rules pack's), the `data` its messages may show is what those rules pass."""
    data = doc.data
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SourceError(
            [
                JourneyError(
                    doc.path, 1, f"a journey file is a mapping (journey:, entry:, …), not {found}"
                )
            ]
        )
    check = _Check(doc, program, known_events, rules)
    journey: Journey | None = None
    try:
        journey = Journey.model_validate(data)
    except ValidationError as exc:
        raw_nodes = data.get("nodes")
        ids = (
            sorted((k for k in raw_nodes if isinstance(k, str)), key=len, reverse=True)
            if (isinstance(raw_nodes, dict))
            else []
        )
        for e in errors_from_validation(doc, exc):
            node, message = None, e.message
            for nid in ids:
                for sep in (".", ": "):
                    if message.startswith(f"nodes.{nid}{sep}"):
                        node = nid
                        rest = message[len(f"nodes.{nid}{sep}") :]
                        message = f"node {nid!r}: {rest}"
                        break
                if node is not None:
                    break
            check.errors.append(JourneyError(e.file, e.line, message, node))
    parts = _parts(data, journey)
    check.graph(parts)
    check.header(parts)
    name = data.get("journey")
    check.nodes(parts, name if isinstance(name, str) else "")
    if check.errors:
        unique = list(dict.fromkeys(check.errors))
        raise SourceError(sorted(unique, key=lambda e: (e.line or 0, e.message)))
    assert journey is not None
    return journey


def _as_journey_errors(exc: SourceError) -> SourceError:
    return SourceError(
        [
            e if isinstance(e, JourneyError) else JourneyError(e.file, e.line, e.message)
            for e in exc.errors
        ]
    )


def validate_text(
    text: str,
    path: str,
    program: Program,
    known_events: Collection[str] | None = None,
    rules: Iterable[Rule] | None = None,
) -> Journey:
    """Validate a journey's text (as stored with a deployed version, say)."""
    try:
        doc = parse_yaml(text, path)
    except SourceError as exc:
        raise _as_journey_errors(exc) from exc
    return check_journey(doc, program, known_events, rules)


def load_journey(
    path: Path,
    program_path: Path | None = None,
    known_events: Collection[str] | None = None,
    rules: Iterable[Rule] | None = None,
) -> LoadedJourney:
    """Read and validate a journey file and its programme (found beside the journey's
    folder or in its parent unless given)."""
    try:
        program_file = find_program(path.parent, program_path)
        program = load_program(load_yaml(program_file))
        journey = check_journey(load_yaml(path), program, known_events, rules)
    except SourceError as exc:
        raise _as_journey_errors(exc) from exc
    return LoadedJourney(journey, str(path), program, str(program_file))
