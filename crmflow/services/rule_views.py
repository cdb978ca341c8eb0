"""Read models of the console's Rules pages, over the rules service (`crmflow.services.rules`).

- `version_page`: deployed versions newest first, with who deployed each and its programme's
  name (read from the programme text stored with the version);
- `diff_versions`: what changed between two stored versions — rules added, removed and
  changed (each rule's YAML as written, and a line diff of it), and programme changes
  (tiers, points, tier policy, other settings) compared as validated models, so a comment or
  a default written out is not a change;
- `recent_events`, `events_from_json` and `test_events`: the tester — a customer's recent
  events to pick from, a pasted event parsed with every problem naming its field, and the
  same dry run as `crmflow rules test` / `POST /api/v1/rules/test`, on the texts of a stored
  version (the active one by default). Nothing is written.
"""

from __future__ import annotations

import difflib
import json
import re
import textwrap
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from crmflow.domain import Event
from crmflow.services import rules as rules_service
from crmflow.services.errors import FieldProblem, Invalid, NotFound, Refused, TooLarge
from crmflow.services.runtime import Runtime
from rules.pack import PROGRAM_FILE, PackSource, load_program
from rules.source import SourceError, parse_yaml
from store import rule_versions
from store import rule_views as store

PER_PAGE = 50
MAX_EVENT_TEXT = 100_000  # characters of pasted JSON
MAX_TEST_EVENTS = 20  # events in one console test run
RECENT_EVENTS = 10
MAX_ID = 200  # characters of a customer id (as the Event model allows)
MAX_VERSION = 64


# --------------------------------------------------------------------------- versions


class VersionView(BaseModel):
    version: str
    deployed_at: datetime
    active: bool
    rule_count: int
    program_name: str | None = Field(description="`program:` of its programme; None if unread")
    by: str = Field(description="who deployed it: a user's or key's name, or `CLI`")
    source: str | None = Field(description="where it was deployed from, as recorded")


class VersionPage(BaseModel):
    versions: list[VersionView]
    total: int
    page: int
    pages: int


@lru_cache(maxsize=1024)
def _program_name(version: str, text: str) -> str | None:
    """The programme's name; a version's texts never change (it is their content hash), so
    one parse per version is enough."""
    try:
        data = parse_yaml(text, PROGRAM_FILE).data
    except SourceError:
        return None
    name = data.get("program") if isinstance(data, dict) else None
    return str(name) if name is not None else None


_ACTOR = re.compile(r"^api (key|user):(.+)$")


def version_page(rt: Runtime, page: int = 1, per_page: int = PER_PAGE) -> VersionPage:
    """Deployed versions, newest first, `per_page` at a time; the active one is marked."""
    page = max(page, 1)
    with rt.engine.connect() as conn:
        rows, total = store.version_page(conn, per_page, (page - 1) * per_page)
        actors = [m.groups() for r in rows if (m := _ACTOR.match(r.source or ""))]
        names = store.deployers(
            conn,
            {who for kind, who in actors if kind == "key"},
            {who for kind, who in actors if kind == "user"},
        )

    def by(source: str | None) -> str:
        found = _ACTOR.match(source or "")
        if found is None:
            return "CLI"  # deployed from a folder: the command line records no person
        kind, who = found.groups()
        return names.get(f"{kind}:{who}", f"{kind} {who}")

    return VersionPage(
        versions=[
            VersionView(
                version=r.version,
                deployed_at=r.deployed_at,
                active=r.active,
                rule_count=r.rule_count,
                program_name=_program_name(r.version, r.program_text),
                by=by(r.source),
                source=r.source,
            )
            for r in rows
        ],
        total=total,
        page=page,
        pages=max((total + per_page - 1) // per_page, 1),
    )


def version_choices(rt: Runtime) -> list[rules_service.RuleVersion]:
    """Every deployed version, newest first (for pickers)."""
    return list(reversed(rules_service.list_versions(rt)))


def _source(rt: Runtime, version: str) -> PackSource:
    if not version or len(version) > MAX_VERSION:
        raise NotFound(f"no rules version {version[:MAX_VERSION]!r} was deployed")
    with rt.engine.connect() as conn:
        source = rule_versions.stored_source(conn, version)
    if source is None:
        raise NotFound(f"no rules version {version!r} was deployed")
    return source


def version_texts(rt: Runtime, version: str) -> rules_service.RulesTexts:
    """The programme and rule files of a stored version, as the rules service takes them."""
    source = _source(rt, version)
    return rules_service.RulesTexts(program=source.program_text, files=dict(source.files))


# --------------------------------------------------------------------------- diff


class DiffLine(BaseModel):
    kind: Literal["add", "del", "same"]
    text: str


class RuleText(BaseModel):
    name: str
    file: str
    yaml: str = Field(description="the rule as written in its file (or re-written, if unclear)")


class ChangedRule(BaseModel):
    name: str
    file_a: str
    file_b: str
    fields: list[str] = Field(description="the rule's keys whose values differ")
    lines: list[DiffLine] = Field(description="the rule's YAML, line by line, a to b")


class ProgrammeChange(BaseModel):
    section: str = Field(description="tiers, points, tier policy or settings")
    setting: str
    before: str | None = Field(description="in version a; None: not there")
    after: str | None = Field(description="in version b; None: not there")


class VersionDiff(BaseModel):
    a: str
    b: str
    program_a: str
    program_b: str
    added: list[RuleText]
    removed: list[RuleText]
    changed: list[ChangedRule]
    unchanged: int
    programme: list[ProgrammeChange]
    programme_lines: list[DiffLine] = Field(description="the programme file's text, a to b")


class _Dumper(yaml.SafeDumper):
    """Writes YAML 1.2 as crmflow reads it: `on`, `yes`, `no` stay unquoted words."""


_Dumper.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()
}
_Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|false)$"), list("tf"))


def _dump(rule: dict[str, Any]) -> str:
    return yaml.dump(
        rule, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=None
    ).rstrip("\n")


_ITEM = re.compile(r"^(\s*)- ")


def _snippet(lines: list[str], start: int | None, end: int, rule: dict[str, Any]) -> str:
    """The rule's own lines (1-based `start` up to `end`), without the comments and blank
    lines that belong to the next rule, dedented as a mapping; its YAML re-written when the
    lines do not read back as the same rule (a rule in flow style, say)."""
    if start is None or end <= start:
        return _dump(rule)
    chunk = lines[start - 1 : end - 1]
    while chunk and (not chunk[-1].strip() or chunk[-1].lstrip().startswith("#")):
        chunk.pop()
    if chunk:
        chunk[0] = _ITEM.sub(lambda m: m.group(1) + "  ", chunk[0], count=1)
    text = textwrap.dedent("\n".join(chunk))
    try:
        same = parse_yaml(text, "rule").data == rule
    except SourceError:
        same = False
    return text if same else _dump(rule)


def _rules_of(source: PackSource) -> dict[str, tuple[str, dict[str, Any], str]]:
    """Every rule of a version by name: (file, the rule as data, its YAML)."""
    found: dict[str, tuple[str, dict[str, Any], str]] = {}
    for file, text in sorted(source.files):
        try:
            doc = parse_yaml(text, file)
        except SourceError:
            continue  # a stored version was valid when deployed; nothing to show otherwise
        rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        if not isinstance(rules, list):
            continue
        lines = text.splitlines()
        starts = [doc.lines.get(("rules", i)) for i in range(len(rules))]
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or not isinstance(rule.get("name"), str):
                continue
            nxt = next((s for s in starts[i + 1 :] if s is not None), len(lines) + 1)
            found.setdefault(rule["name"], (file, rule, _snippet(lines, starts[i], nxt, rule)))
    return found


def _line_diff(a: str, b: str) -> list[DiffLine]:
    """`a` to `b` line by line, with every line kept (rules are short: whole is clearest)."""
    old, new = a.splitlines(), b.splitlines()
    out: list[DiffLine] = []
    for line in difflib.unified_diff(old, new, lineterm="", n=max(len(old), len(new))):
        if line.startswith(("---", "+++", "@@")):
            continue
        mark, text = line[:1], line[1:]
        kind: Literal["add", "del", "same"] = (
            "add" if mark == "+" else "del" if mark == "-" else "same"
        )
        out.append(DiffLine(kind=kind, text=text))
    return out or [DiffLine(kind="same", text=t) for t in new]


def _shown(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a threshold of 2000 reads as written, not as 2000.0
    return json.dumps(value, ensure_ascii=False, default=str)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as `a.b.c` keys; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _changes(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[ProgrammeChange]:
    fa, fb = _flat(a), _flat(b)
    return [
        ProgrammeChange(
            section=section,
            setting=key,
            before=_shown(fa[key]) if key in fa else None,
            after=_shown(fb[key]) if key in fb else None,
        )
        for key in dict.fromkeys([*fa, *fb])
        if fa.get(key, ...) != fb.get(key, ...)
    ]


def _programme_changes(a: PackSource, b: PackSource) -> list[ProgrammeChange]:
    try:
        pa = load_program(parse_yaml(a.program_text, a.program_path)).model_dump(mode="json")
        pb = load_program(parse_yaml(b.program_text, b.program_path)).model_dump(mode="json")
    except SourceError as exc:
        raise Refused(f"a programme of these versions no longer loads: {exc}") from exc
    tiers_a = {t["name"]: t for t in pa.pop("tiers")}
    tiers_b = {t["name"]: t for t in pb.pop("tiers")}
    out: list[ProgrammeChange] = []
    for name in dict.fromkeys([*tiers_a, *tiers_b]):
        ta, tb = tiers_a.get(name), tiers_b.get(name)
        if ta is None or tb is None:
            out.append(
                ProgrammeChange(
                    section="tiers",
                    setting=name,
                    before=_shown(ta) if ta is not None else None,
                    after=_shown(tb) if tb is not None else None,
                )
            )
        else:
            out += [
                c.model_copy(update={"setting": f"{name}.{c.setting}"})
                for c in _changes("tiers", ta, tb)
            ]
    out += _changes("points", {"points": pa.pop("points")}, {"points": pb.pop("points")})
    out += _changes(
        "tier policy",
        {"tier_policy": pa.pop("tier_policy")},
        {"tier_policy": pb.pop("tier_policy")},
    )
    out += _changes("settings", pa, pb)
    return out


# diffs already worked out: a version is the hash of its texts, so the diff of two versions
# never changes (reading the YAML again with its lines costs about 100 ms)
_DIFFS: dict[tuple[str, str], VersionDiff] = {}
_MAX_DIFFS = 64


def diff_versions(rt: Runtime, a: str, b: str) -> VersionDiff:
    """What changed from version `a` to version `b` (either may be the older)."""
    sa, sb = _source(rt, a), _source(rt, b)  # both still deployed: `NotFound` otherwise
    found = _DIFFS.get((a, b))
    if found is None:
        found = _diff(a, b, sa, sb)
        if len(_DIFFS) >= _MAX_DIFFS:
            _DIFFS.pop(next(iter(_DIFFS)), None)
        _DIFFS[(a, b)] = found
    return found


def _diff(a: str, b: str, sa: PackSource, sb: PackSource) -> VersionDiff:
    ra, rb = _rules_of(sa), _rules_of(sb)
    changed: list[ChangedRule] = []
    unchanged = 0
    for name in rb:
        if name not in ra:
            continue
        (fa, da, ya), (fb, db, yb) = ra[name], rb[name]
        if da == db and fa == fb:
            unchanged += 1
            continue
        fields = [k for k in dict.fromkeys([*da, *db]) if da.get(k) != db.get(k)]
        changed.append(
            ChangedRule(name=name, file_a=fa, file_b=fb, fields=fields, lines=_line_diff(ya, yb))
        )
    return VersionDiff(
        a=a,
        b=b,
        program_a=_program_name(a, sa.program_text) or "",
        program_b=_program_name(b, sb.program_text) or "",
        added=[RuleText(name=n, file=f, yaml=y) for n, (f, _, y) in rb.items() if n not in ra],
        removed=[RuleText(name=n, file=f, yaml=y) for n, (f, _, y) in ra.items() if n not in rb],
        changed=changed,
        unchanged=unchanged,
        programme=_programme_changes(sa, sb),
        programme_lines=_line_diff(sa.program_text, sb.program_text)
        if sa.program_text != sb.program_text
        else [],
    )


# --------------------------------------------------------------------------- tester


class RecentEvent(BaseModel):
    event_id: str
    customer_id: str
    type: str
    occurred_at: datetime
    properties: dict[str, Any]

    def as_json(self) -> str:
        """The event as the tester's text box takes it."""
        return json.dumps(
            {
                "event_id": self.event_id,
                "customer_id": self.customer_id,
                "type": self.type,
                "occurred_at": self.occurred_at.isoformat(),
                "properties": self.properties,
            },
            ensure_ascii=False,
            indent=2,
        )


def check_customer_id(customer: str) -> str | None:
    """A customer id typed into a form: stripped; None when empty; `Invalid` when it cannot
    be an id."""
    customer = customer.strip()
    if not customer:
        return None
    if len(customer) > MAX_ID or "\x00" in customer:
        raise Invalid(f"a customer id has at most {MAX_ID} characters and no NUL", field="customer")
    return customer


def recent_events(rt: Runtime, customer: str, limit: int = RECENT_EVENTS) -> list[RecentEvent]:
    """The customer's latest stored events, newest first; `NotFound` for an unknown id."""
    with rt.engine.connect() as conn:
        rows = store.recent_events(conn, customer, limit)
    if rows is None:
        raise NotFound(f"no customer with id {customer!r}")
    return [RecentEvent.model_validate(r) for r in rows]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _problem(where: str, err: Any) -> FieldProblem:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    loc = ".".join(str(p) for p in err["loc"])
    return FieldProblem(f"{where}.{loc}" if loc else where, msg)


def events_from_json(text: str, customer: str | None = None) -> list[Event]:
    """One event (a JSON object) or a few (a JSON list) as typed into the tester; an event
    without `customer_id` is the `customer`'s. `Invalid` names each field at fault
    (`event.occurred_at`, `event[1].type`)."""
    text = text.strip()
    if not text:
        raise Invalid(
            "paste an event as JSON, or pick one of the customer's recent events", field="event"
        )
    if len(text) > MAX_EVENT_TEXT:
        raise TooLarge(f"{len(text):,} characters of JSON; at most {MAX_EVENT_TEXT:,}")
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise Invalid(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", field="event"
        ) from exc
    except ValueError as exc:
        raise Invalid(f"not valid JSON: {exc}", field="event") from exc
    except RecursionError as exc:
        raise Invalid("not valid JSON: nested too deeply", field="event") from exc
    many = isinstance(doc, list)
    docs = doc if many else [doc]
    if not docs:
        raise Invalid("an empty list: give at least one event", field="event")
    if len(docs) > MAX_TEST_EVENTS:
        raise TooLarge(f"{len(docs)} events; at most {MAX_TEST_EVENTS} in one test")
    events: list[Event] = []
    problems: list[FieldProblem] = []
    for i, item in enumerate(docs):
        where = f"event[{i}]" if many else "event"
        if not isinstance(item, dict):
            problems.append(
                FieldProblem(where, 'an event is a JSON object: {"event_id": …, "type": …}')
            )
            continue
        if customer is not None and "customer_id" not in item:
            item = {**item, "customer_id": customer}
        try:
            events.append(Event.model_validate(item))
        except ValidationError as exc:
            problems += [_problem(where, err) for err in exc.errors(include_url=False)]
    if problems:
        raise Invalid(problems)
    return events


class TesterRun(BaseModel):
    """A dry run of stored version `version` (the active one when `active`)."""

    version: str
    active: bool
    run: rules_service.DryRun


def dry_run_version(
    rt: Runtime, version: str | None, events: list[Event], customer: str | None
) -> TesterRun:
    """The rules service's dry run of `events` with a stored version (None: the active
    one), on the stored profile of `customer` or on a new one. Stores nothing."""
    choices = rules_service.list_versions(rt)
    active = next((v.version for v in choices if v.active), None)
    chosen = version or active
    if chosen is None:
        raise Refused("no rules version is deployed yet: deploy one with `crmflow rules deploy`")
    run = rules_service.dry_run(rt, version_texts(rt, chosen), events, customer)
    return TesterRun(version=chosen, active=chosen == active, run=run)
