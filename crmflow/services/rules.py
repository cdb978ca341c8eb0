"""Loyalty rules as a service: validate, dry-run, deploy, list and activate rules versions,
list the facts conditions can test, and run pending events through the active version.

A rules pack comes in one of two shapes: a folder on disk with its programme file (the CLI)
or the YAML texts themselves (the API). Both go through the same loader (`rules.pack`), so
a problem is reported the same way: `RulesInvalid`, each problem with its file and line.
YAML from outside is bounded before it is parsed (size, nesting, alias expansion), since
PyYAML would otherwise follow a "billion laughs" document all the way down.

Either shape may bring the journeys too (a folder, or texts by file name): they are
validated against the pack's programme, and a rule naming a journey that is not among them
is a problem. Without them, a pack that names journeys validates with a warning that their
names were not checked. A dry run explains every rule for every event (`rules.explain`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from crmflow.domain import Event
from crmflow.processing import HISTORY_DAYS, ConcurrentProcessing, evaluate_event, process_pending
from crmflow.services.errors import FieldProblem, Invalid, NotFound, Refused, TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from journeys.validate import check_journey
from rules.compiler import CompiledPack
from rules.explain import RuleExplanation, explain_event
from rules.facts import FIXED_FACTS, EventFacts, ProfileState
from rules.models import Program, RuleFile
from rules.pack import (
    OPS_FOR,
    PROGRAM_FILE,
    PackSource,
    build_pack,
    load_program,
    named_journeys,
    read_source,
)
from rules.source import (
    FILE_LIMITS,
    SourceError,
    SourceProblem,
    parse_yaml,
    yaml_limit_problem,
)
from store import rule_versions as store
from store.db import utcnow
from store.rule_state import load_orders, load_states
from store.tiers import welcome_members

MAX_FILES = 100  # rule files in one pack
MAX_FILE_CHARS = 200_000  # characters in one file (the programme or a rule file)
MAX_TOTAL_CHARS = 1_000_000  # characters in all files of one pack
MAX_YAML_NODES = FILE_LIMITS.nodes  # values of one file (or JSON body) with aliases expanded
MAX_YAML_DEPTH = FILE_LIMITS.depth  # nesting of one file

FileName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.ya?ml$", max_length=104),
]
YamlText = Annotated[str, Field(max_length=MAX_FILE_CHARS)]


# --------------------------------------------------------------------------- inputs


class RulesFolder(BaseModel):
    """A folder of rule files on disk, and its programme file (default: program.yaml in the
    folder or its parent); optionally the folder of journey files the rules may name."""

    folder: Path
    program: Path | None = None
    journeys: Path | None = None


class RulesTexts(BaseModel):
    """A rules pack sent as texts: the programme file and rule files by name."""

    program: YamlText = Field(description=f"the programme file ({PROGRAM_FILE}) as YAML text")
    files: dict[FileName, YamlText] = Field(
        max_length=MAX_FILES,
        description="rule files by file name (`10-points.yaml`), each as YAML text",
    )
    journeys: dict[FileName, YamlText] | None = Field(
        None,
        max_length=MAX_FILES,
        description="journey files by file name (`welcome.yaml`), each as YAML text: rules "
        "may name only these journeys. Left out: journey names are not checked (a warning)",
    )


RulesSource = RulesFolder | RulesTexts


class RulesTestInput(RulesTexts):
    """A pack as texts and the events to run through it (nothing is stored)."""

    events: list[Event] = Field(min_length=1, max_length=1000)
    customer: str | None = Field(
        None, max_length=200, description="start from this stored customer's profile"
    )


# --------------------------------------------------------------------------- outputs


class RulesInvalid(Invalid):
    """The pack does not validate; `errors` has every problem with its file and line."""

    def __init__(self, errors: list[SourceProblem]) -> None:
        self.errors = errors
        super().__init__([FieldProblem(_where(e), e.message) for e in errors])


def _where(e: SourceProblem) -> str:
    return f"{e.file}:{e.line}" if e.line else e.file


class RuleSummary(BaseModel):
    name: str
    file: str
    priority: int


class RulesSummary(BaseModel):
    """A valid pack: its content version, programme and rules in the order they apply."""

    ok: bool = True
    version: str = Field(description="content hash of the programme and rule files")
    program: str = Field(description="the programme file's path (or name)")
    program_name: str = Field(description="the programme's own name (`program:` in the file)")
    files: list[str]
    rules: list[RuleSummary] = Field(description="enabled rules, highest priority first")
    warnings: list[str] = Field(
        default_factory=list, description="what was not checked (journey names without journeys)"
    )


class FiredRule(BaseModel):
    rule: str
    file: str
    priority: int
    because: dict[str, Any] = Field(description="the facts the rule's condition read")


class RuleChange(BaseModel):
    rule: str
    kind: str = Field(description="add_tag, remove_tag, earn, debit, tier, stage, owner, …")
    skipped: str | None = Field(None, description="why the effect changed nothing")
    detail: dict[str, Any] = Field(default_factory=dict)


class EventOutcome(BaseModel):
    event_id: str
    type: str
    fired: list[FiredRule]
    changes: list[RuleChange]
    rules: list[RuleExplanation] = Field(
        description="every rule, in the order effects apply: fired, not listening to this "
        "event type, or the first condition that was false with the values it saw"
    )
    facts: dict[str, Any] = Field(description="the facts the rules saw (missing ones left out)")


class DryRun(BaseModel):
    """What a pack would do to these events; nothing was stored."""

    version: str
    customer: str
    events: list[EventOutcome]


class Deployed(BaseModel):
    version: str
    new: bool = Field(description="the version was stored now (not deployed before)")
    rules: int
    status: Literal["deployed", "reactivated", "unchanged"] = Field(
        description="deployed: new; reactivated: stored before, active again; unchanged: "
        "this version was the active one already"
    )
    warnings: list[str] = Field(
        default_factory=list, description="what was not checked (journey names without journeys)"
    )
    welcomed: int = Field(0, description="members without a tier given the welcome tier")


class RuleVersion(BaseModel):
    version: str
    deployed_at: datetime
    active: bool
    rule_count: int
    source: str | None = Field(None, description="where it was deployed from")


class FactInfo(BaseModel):
    fact: str
    type: str
    operators: list[str]
    description: str


class ProcessResult(BaseModel):
    processed: int
    rules_fired: int
    changes: int
    version: str | None
    at: datetime


# --------------------------------------------------------------------------- bounds


def yaml_bounds(text: str, path: str) -> SourceProblem | None:
    """The limit a YAML text breaks (size, nesting, aliases, a key given twice), or None;
    checked before anything else so a request's files are refused together."""
    return yaml_limit_problem(text, path, FILE_LIMITS)


def _check_size(source: PackSource, journeys: list[tuple[str, str]]) -> None:
    if len(source.files) > MAX_FILES:
        raise TooLarge(f"{len(source.files)} rule files; at most {MAX_FILES}")
    if len(journeys) > MAX_FILES:
        raise TooLarge(f"{len(journeys)} journey files; at most {MAX_FILES}")
    total = len(source.program_text) + sum(len(text) for _, text in [*source.files, *journeys])
    if total > MAX_TOTAL_CHARS:
        raise TooLarge(f"{total} characters of YAML; at most {MAX_TOTAL_CHARS}")


# --------------------------------------------------------------------------- loading


def _read(src: RulesSource) -> tuple[PackSource, str, str | None]:
    """The texts of `src`, the folder its error messages name, and where it came from."""
    if isinstance(src, RulesFolder):
        try:
            source = read_source(src.folder, src.program)
        except SourceError as exc:
            raise RulesInvalid(exc.errors) from exc
        return source, str(src.folder), str(src.folder)
    bad = [name for name in src.files if Path(name).name == PROGRAM_FILE]
    if bad:
        raise RulesInvalid(
            [SourceProblem(bad[0], None, f"{PROGRAM_FILE} is the programme: send it as `program`")]
        )
    return PackSource(PROGRAM_FILE, src.program, sorted(src.files.items())), "", None


def _journey_texts(src: RulesSource) -> list[tuple[str, str]] | None:
    """The journey files that came with `src`, as (path or name, text); None: none did."""
    if isinstance(src, RulesTexts):
        if src.journeys is None:
            return None
        return [(f"journeys/{name}", text) for name, text in sorted(src.journeys.items())]
    folder = src.journeys
    if folder is None:
        return None
    if not folder.is_dir():
        raise RulesInvalid([SourceProblem(str(folder), None, "not a folder of journey files")])
    paths = sorted(
        p for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")] if p.name != PROGRAM_FILE
    )
    if len(paths) > MAX_FILES:
        raise TooLarge(f"{len(paths)} journey files; at most {MAX_FILES}")
    texts: list[tuple[str, str]] = []
    errors: list[SourceProblem] = []
    for path in paths:
        try:
            texts.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(SourceProblem(str(path), None, f"cannot read the file: {exc}"))
    if errors:
        raise RulesInvalid(errors)
    return texts


def _journey_names(
    texts: list[tuple[str, str]], program: Program
) -> tuple[list[str], list[SourceProblem]]:
    """The names of the journeys in `texts`, each validated against `program` as
    `crmflow journeys validate` does, and their problems. A journey with problems still
    gives its name when it has one, so rules naming it are not refused as well."""
    names: dict[str, str] = {}
    errors: list[SourceProblem] = []
    for path, text in texts:
        try:
            doc = parse_yaml(text, path)
        except SourceError as exc:
            errors += exc.errors
            continue
        try:
            check_journey(doc, program)
        except SourceError as exc:
            errors += exc.errors
        except RecursionError:  # the YAML composer recurses once per nesting level
            errors.append(SourceProblem(path, None, "the YAML is nested too deeply"))
        name = doc.data.get("journey") if isinstance(doc.data, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            errors.append(
                SourceProblem(
                    path,
                    doc.line_of(("journey",)),
                    f"journey {name!r} is in {names[name]} as well: one file per journey",
                )
            )
        names.setdefault(name, path)
    return list(names), errors


def _program_of(source: PackSource) -> Program | None:
    """The pack's programme, or None when it does not load (`build_pack` says why)."""
    try:
        return load_program(parse_yaml(source.program_text, source.program_path))
    except SourceError:
        return None


@dataclass
class Loaded:
    """A valid pack: compiled, its texts, where it came from, and what was not checked."""

    pack: CompiledPack
    source: PackSource
    origin: str | None
    warnings: list[str] = field(default_factory=list)


def load(src: RulesSource) -> Loaded:
    """Read, bound, validate and compile a pack, with the journeys it came with (if any).

    `RulesInvalid` lists every problem with file and line; `TooLarge` past the limits."""
    source, base_dir, origin = _read(src)
    journeys = _journey_texts(src)
    _check_size(source, journeys or [])
    errors = [
        e
        for e in (
            yaml_bounds(source.program_text, source.program_path),
            *(
                yaml_bounds(text, str(Path(base_dir) / name) if base_dir else name)
                for name, text in source.files
            ),
            *(yaml_bounds(text, path) for path, text in journeys or []),
        )
        if e is not None
    ]
    if errors:
        raise RulesInvalid(errors)
    names: list[str] | None = None
    journey_errors: list[SourceProblem] = []
    program = _program_of(source) if journeys is not None else None
    if journeys is not None and program is not None:
        names, journey_errors = _journey_names(journeys, program)
    try:
        pack = build_pack(source, base_dir, names)
    except SourceError as exc:
        raise RulesInvalid([*exc.errors, *journey_errors]) from exc
    if journey_errors:
        raise RulesInvalid(journey_errors)
    warnings: list[str] = []
    named = named_journeys(pack)
    if journeys is None and named:
        warnings.append(
            "journey names were not checked (no journeys were given): " + ", ".join(named)
        )
    return Loaded(pack, source, origin, warnings)


def load_program_file(path: Path) -> Program:
    """A programme file, bounded and validated like a pack's."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesInvalid(
            [SourceProblem(str(path), None, f"cannot read the file: {exc}")]
        ) from exc
    return program_from_text(text, str(path))


def program_from_text(text: str, path: str = PROGRAM_FILE) -> Program:
    bad = yaml_bounds(text, path)
    if bad is not None:
        raise RulesInvalid([bad])
    try:
        return load_program(parse_yaml(text, path))
    except SourceError as exc:
        raise RulesInvalid(exc.errors) from exc


# --------------------------------------------------------------------------- services


def validate(src: RulesSource) -> RulesSummary:
    """Check the programme and rule files; `RulesInvalid` names every problem's file and line.

    Pure: it reads no database."""
    loaded = load(src)
    pack, source = loaded.pack, loaded.source
    return RulesSummary(
        version=pack.version,
        program=source.program_path,
        program_name=pack.program.program,
        files=[name for name, _ in source.files],
        rules=[
            RuleSummary(name=r.rule.name, file=r.file, priority=r.rule.priority)
            for r in pack.ordered({r.index for r in pack.rules})
        ],
        warnings=loaded.warnings,
    )


def json_schema(program: bool = False) -> dict[str, Any]:
    """The JSON Schema of rule files (or of the programme file), for editors."""
    model = Program if program else RuleFile
    doc = model.model_json_schema(by_alias=True)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "crmflow programme file" if program else "crmflow rule file"
    return doc


def _plain(v: Any) -> Any:
    if isinstance(v, set | frozenset):
        return sorted(v)
    if isinstance(v, datetime):
        return v.isoformat()
    return v


def _start_state(
    rt: Runtime, pack: CompiledPack, customer: str | None, events: list[Event]
) -> ProfileState:
    first = events[0]
    if customer is None:
        return ProfileState(customer_id=first.customer_id, created_at=first.occurred_at)
    program = pack.program
    with rt.engine.connect() as conn:
        states = load_states(
            conn,
            [customer],
            first.occurred_at - timedelta(days=HISTORY_DAYS),
            purchase_event=program.purchase_event,
            spend_property=program.spend_property,
            follow_up_event=program.follow_up_event,
        )
        # the stored orders the events' refunds name, as processing reads them
        as_rows = [{**e.model_dump(), "customer_id": customer} for e in events]
        load_orders(conn, states, as_rows, program)
    if customer not in states:
        raise NotFound(f"no customer with id {customer!r}")
    return states[customer]


def dry_run(
    rt: Runtime, src: RulesSource, events: list[Event], customer: str | None = None
) -> DryRun:
    """Which rules would fire for each event, why, and what they would change — storing
    nothing. The events run in order on one profile: the stored customer's `customer`, or
    a new profile of the first event's customer (then `rt`'s database is not read)."""
    if not events:
        raise Invalid("no events", field="events")
    limit = rt.settings.api_max_batch
    if len(events) > limit:
        raise TooLarge(f"{len(events)} events in one dry run; at most {limit} (api_max_batch)")
    pack = load(src).pack
    state = _start_state(rt, pack, customer, events)
    engine = rt.rules.rule_engine
    out: list[EventOutcome] = []
    for ev in events:
        facts, outcome = evaluate_event(
            pack,
            engine,
            state,
            EventFacts(ev.event_id, ev.type, ev.occurred_at, ev.properties),
            explain=True,
        )
        fired = [r for r in pack.rules if r.rule.name in outcome.fired]
        out.append(
            EventOutcome(
                event_id=ev.event_id,
                type=ev.type,
                fired=[
                    FiredRule(
                        rule=r.rule.name,
                        file=r.file,
                        priority=r.rule.priority,
                        because={f: _plain(facts.get(f)) for f in dict.fromkeys(r.facts)},
                    )
                    for r in sorted(fired, key=lambda r: outcome.fired.index(r.rule.name))
                ],
                changes=[
                    RuleChange(
                        rule=c.rule,
                        kind=c.kind,
                        skipped=c.skipped,
                        detail={k: _plain(v) for k, v in c.detail.items()},
                    )
                    for c in outcome.changes
                ],
                rules=explain_event(pack, facts, outcome.fired),
                facts={k: _plain(v) for k, v in facts.items()},
            )
        )
    return DryRun(version=pack.version, customer=state.customer_id, events=out)


def deploy(rt: Runtime, src: RulesSource, origin: str | None = None) -> Deployed:
    """Store this version (once) and make it the active one: events use it from now on.

    `origin` is recorded as where it came from (default: the folder, if any)."""
    loaded = load(src)
    pack, source, where = loaded.pack, loaded.source, loaded.origin
    with rt.engine.begin() as conn:
        was_active = store.active_version(conn) == pack.version
        new = store.deploy(conn, pack.version, source, len(pack.rules), origin or where)
        # members who became members before any programme was active start in its welcome tier
        welcomed = welcome_members(
            conn,
            pack.program,
            utcnow(),
            reason=f"welcome tier: rules version {pack.version} deployed",
            rules_version=pack.version,
        )
    status: Literal["deployed", "reactivated", "unchanged"] = (
        "deployed" if new else "unchanged" if was_active else "reactivated"
    )
    return Deployed(
        version=pack.version,
        new=new,
        rules=len(pack.rules),
        status=status,
        warnings=loaded.warnings,
        welcomed=welcomed,
    )


def list_versions(rt: Runtime) -> list[RuleVersion]:
    """Deployed versions, oldest first; the active one is marked."""
    with rt.engine.connect() as conn:
        rows = store.list_versions(conn)
    return [RuleVersion.model_validate(r.__dict__) for r in rows]


def activate(rt: Runtime, version: str) -> RuleVersion:
    """Make a stored version the active one again (a rollback). `NotFound` for a version
    never deployed; `Refused` for one this crmflow can no longer load."""
    with rt.engine.begin() as conn:
        source = store.stored_source(conn, version)
        if source is None:
            raise NotFound(f"no rules version {version!r} was deployed")
        try:
            pack = build_pack(source)
        except SourceError as exc:
            raise Refused(f"rules version {version} no longer loads: {exc}") from exc
        store.activate(conn, version)
        welcome_members(
            conn,
            pack.program,
            utcnow(),
            reason=f"welcome tier: rules version {version} activated",
            rules_version=version,
        )
    return next(v for v in list_versions(rt) if v.version == version)


def list_facts(program: Program) -> list[FactInfo]:
    """The facts conditions can test under `program`, with their types and operators."""
    rows: list[tuple[str, str, str]] = [
        (name, kind, text) for name, (kind, text) in FIXED_FACTS.items()
    ]
    rows += [
        (f"event.{p}", k, "declared in event_properties")
        for p, k in program.event_properties.items()
    ]
    rows += [("consent.<channel>", "boolean", "marketing consent for a channel")]
    rows += [
        (f"attributes.{a}", k, "declared in attributes") for a, k in program.attributes.items()
    ]
    rows += [("attributes.<name>", "any", "any other customer attribute")]
    return [
        FactInfo(fact=n, type=k, operators=sorted(OPS_FOR[k]), description=t) for n, k, t in rows
    ]


def process(rt: Runtime) -> ProcessResult:
    """Run stored events that no rules version has processed yet through the active one.

    `Unavailable` when the active version does not load or other writers kept racing."""
    try:
        report = process_pending(rt.engine)
    except SourceError as exc:
        raise Unavailable(f"the active rules version does not load:\n{exc}") from exc
    except ConcurrentProcessing as exc:
        raise Unavailable(f"{exc}; run it again") from exc
    return ProcessResult(
        processed=report.events,
        rules_fired=report.rules_fired,
        changes=report.changes,
        version=report.version,
        at=datetime.now(UTC),
    )
