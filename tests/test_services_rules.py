"""The rules and segments services, on SQLite and PostgreSQL: the same answers for a pack
from a folder or from texts, bounded YAML, deploy/activate, dry runs and segment previews."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from crmflow.domain import Event
from crmflow.services import rules as service
from crmflow.services import segments
from crmflow.services.errors import Invalid, NotFound, Refused, TooLarge
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.models import AuditRow, EventRow
from tests.rules_helpers import PROGRAM, REPO, event, import_rows

EXAMPLES = REPO / "examples/rules"
AT = datetime(2026, 11, 20, tzinfo=UTC)


def texts(folder: Path = EXAMPLES) -> service.RulesTexts:
    return service.RulesTexts(
        program=PROGRAM, files={p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}
    )


@pytest.fixture
def rt(engine: Engine, tmp_path: Path) -> Runtime:
    return Runtime(Settings(home=tmp_path / "home"), engine)


def test_a_folder_and_its_texts_are_the_same_pack() -> None:
    from_folder = service.validate(service.RulesFolder(folder=EXAMPLES))
    from_texts = service.validate(texts())
    assert from_folder.version == from_texts.version
    assert from_folder.rules == from_texts.rules and len(from_texts.rules) == 11
    assert from_texts.program == "program.yaml" and from_texts.program_name == "Acme Rewards"


def test_problems_name_file_line_and_field() -> None:
    bad = service.RulesTexts(
        program=PROGRAM,
        files={"r.yaml": "rules:\n  - name: one\n    when: spend_12m > 5\n    then: [{nope: 1}]\n"},
    )
    with pytest.raises(service.RulesInvalid) as caught:
        service.validate(bad)
    exc = caught.value
    assert isinstance(exc, Invalid)  # the API answers it with 422
    assert [(e.file, e.line) for e in exc.errors] == [("r.yaml", 4)]
    assert exc.problems[0].field == "r.yaml:4" and "rules.0.then.0" in exc.problems[0].reason
    with pytest.raises(service.RulesInvalid) as caught:
        service.validate(service.RulesTexts(program="program: [", files={}))
    assert caught.value.errors[0].file == "program.yaml"
    assert "not valid YAML" in caught.value.errors[0].message


def test_yaml_is_bounded_before_it_is_parsed() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    for text, said in [
        (laughs, "r.yaml:5: refused: expands to more than 100,000 values through its aliases"),
        ("a: &a [1, *a]\n", "r.yaml:1: refused: an alias refers to a node that contains it"),
        ("x: " + "[" * 200 + "]" * 200 + "\n", "r.yaml:1: refused: nested more than 50 levels"),
        ("a: 1\nb: 2\na: 3\n", "r.yaml:3: refused: key 'a' is given twice, on line 1 and line 3"),
    ]:
        with pytest.raises(service.RulesInvalid) as caught:
            service.validate(service.RulesTexts(program=PROGRAM, files={"r.yaml": text}))
        assert said in str(caught.value), text[:40]
    many = {f"r{i}.yaml": "rules: []\n" for i in range(service.MAX_FILES + 1)}
    with pytest.raises(TooLarge):
        service.validate(service.RulesTexts.model_construct(program=PROGRAM, files=many))
    with pytest.raises(service.RulesInvalid, match="programme"):
        service.validate(service.RulesTexts(program=PROGRAM, files={"program.yaml": PROGRAM}))


def test_a_dry_run_explains_and_stores_nothing(rt: Runtime, tmp_path: Path) -> None:
    import_rows(rt.engine, tmp_path / "c.jsonl", [{"customer_id": "C1"}], "customers")
    ev = Event.model_validate(event("try", "C1", amount=1500.0))
    run = service.dry_run(rt, texts(), [ev], customer="C1")
    fired = {f.rule: f for f in run.events[0].fired}
    assert {"earn-on-purchase", "big-spender"} <= set(fired)
    assert fired["big-spender"].because["event.amount"] == 1500.0
    earn = next(c for c in run.events[0].changes if c.kind == "earn")
    assert earn.detail["points"] == 1500.0
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditRow)).scalar_one() == 0
    with pytest.raises(NotFound, match="no customer"):
        service.dry_run(rt, texts(), [ev], customer="nobody")
    fresh = service.dry_run(rt, texts(), [ev])  # a new profile of the event's customer
    assert fresh.customer == "C1" and fresh.version == run.version


def test_a_dry_run_of_a_refund_claws_back_the_stored_order(rt: Runtime, tmp_path: Path) -> None:
    from tests.rules_helpers import deploy_dir

    deploy_dir(rt.engine, EXAMPLES)
    buy = event("b1", "C1", at="2026-11-01T10:00:00+00:00", amount=400.0, order_id="SO1")
    import_rows(rt.engine, tmp_path / "e.jsonl", [buy])
    ev = Event.model_validate(
        event("r1", "C1", "refund", at="2026-11-02T10:00:00+00:00", amount=100.0, order_id="SO1")
    )
    run = service.dry_run(rt, texts(), [ev], customer="C1")
    claw = next(c for c in run.events[0].changes if c.kind == "clawback")
    assert (claw.rule, claw.skipped, claw.detail["points"]) == ("refund", None, 100.0)


def test_deploy_again_is_unchanged_and_activate_rolls_back(rt: Runtime, tmp_path: Path) -> None:
    first = service.deploy(rt, texts())
    assert (first.new, first.status, first.rules) == (True, "deployed", 11)
    assert service.deploy(rt, texts()).status == "unchanged"
    other = texts()
    other.files = {k: v for k, v in other.files.items() if k != "50-sales.yaml"}
    second = service.deploy(rt, other, origin="api (test)")
    assert second.status == "deployed" and second.version != first.version
    listed = service.list_versions(rt)
    assert [(v.version, v.active) for v in listed] == [
        (first.version, False),
        (second.version, True),
    ]
    assert listed[1].source == "api (test)"
    back = service.activate(rt, first.version)
    assert back.version == first.version and back.active
    assert [v.active for v in service.list_versions(rt)] == [True, False]
    assert service.deploy(rt, other).status == "reactivated"
    with pytest.raises(NotFound):
        service.activate(rt, "0000000000000000")


def test_process_runs_pending_events_through_the_active_version(
    rt: Runtime, tmp_path: Path
) -> None:
    import_rows(rt.engine, tmp_path / "e.jsonl", [event(1, "C1", amount=10.0)])
    assert service.process(rt).processed == 0  # no version deployed: nothing to do
    version = service.deploy(rt, texts()).version
    done = service.process(rt)
    assert (done.processed, done.version) == (1, version)
    with rt.engine.connect() as conn:
        pending = select(func.count()).select_from(EventRow).where(EventRow.processed_at.is_(None))
        assert conn.execute(pending).scalar_one() == 0


def test_facts_follow_the_programme() -> None:
    program = service.load_program_file(REPO / "examples/program.yaml")
    facts = {f.fact: f for f in service.list_facts(program)}
    assert facts["tags"].operators == ["contains", "exists"]
    assert "event.amount" in facts
    with pytest.raises(service.RulesInvalid):
        service.program_from_text("program: x\n")


def seed(rt: Runtime, tmp_path: Path) -> None:
    service.deploy(rt, texts())
    import_rows(
        rt.engine,
        tmp_path / "c.jsonl",
        [{"customer_id": f"c{i:02}", "consent": {"email": i % 2 == 0}} for i in range(12)],
        "customers",
    )
    # the big-spender rule tags c00..c07
    import_rows(
        rt.engine,
        tmp_path / "e.jsonl",
        [event(i, f"c{i:02}", amount=5000.0 if i < 8 else 10.0) for i in range(12)],
    )


def test_a_segment_preview_counts_and_samples(rt: Runtime, tmp_path: Path) -> None:
    seed(rt, tmp_path)
    query = segments.SegmentQuery(
        condition={"all": ["tags contains big-spender", "consent.email == true"]}, sample=3
    )
    found = segments.preview(rt, query, at=AT)
    assert (found.matched, found.customers) == (4, 12)
    assert found.sample == ["c00", "c02", "c04"]
    assert found.rules_version == service.list_versions(rt)[0].version
    as_yaml = segments.SegmentQuery(condition="not: {fact: tags, op: contains, value: big-spender}")
    assert segments.preview(rt, as_yaml, at=AT).matched == 4  # c08..c11
    program = service.program_from_text(PROGRAM)
    given = segments.preview(rt, query, program=program, at=AT)
    assert given.matched == 4 and given.rules_version is None


def test_a_bad_segment_condition_says_what_is_wrong(rt: Runtime, tmp_path: Path) -> None:
    with pytest.raises(Refused, match="deploy a rules version"):
        segments.preview(rt, segments.SegmentQuery(condition="tags contains vip"))
    seed(rt, tmp_path)
    for condition, said in [
        ("spend_12m > 5", "unknown fact 'spend_12m'"),
        ({"all": ["event.amount > 5"]}, "segments test the customer's profile"),
        ({"nope": 1}, "nope: unknown field"),
        ("tier == diamond", "tier 'diamond' is not defined"),
        ("{all: [", "not valid YAML"),
        ("", "empty"),
        (_deep(80), "nested deeper"),
    ]:
        with pytest.raises(Invalid) as caught:
            segments.preview(rt, segments.SegmentQuery(condition=condition))
        assert said in str(caught.value), condition
        assert all(p.field == "condition" for p in caught.value.problems)
    with pytest.raises(ValueError):
        segments.SegmentQuery(condition="tags contains vip", sample=segments.MAX_SAMPLE + 1)


def _deep(n: int) -> dict[str, object]:
    cond: dict[str, object] = {"fact": "tier", "op": "exists"}
    for _ in range(n):
        cond = {"not": cond}
    return cond
