"""The programme's welcome tier for members who have none (`store.tiers`): granted set-based
with a tier history row and an audit row each, when customers are imported with a rules
version deployed, and by a backfill over every member; never twice. On SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from crmflow.ingest import import_file
from store.ingest import upsert_customers
from store.models import AuditRow, CustomerRow, TierHistoryRow
from store.tiers import WELCOME_RULE, grant_welcome_tier
from tests.api_helpers import ApiServer
from tests.rules_helpers import REPO, deploy_dir, import_rows

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def customers(engine: Engine) -> dict[str, tuple[str, str | None, int]]:
    """customer id -> (stage, tier, state version)."""
    c = CustomerRow
    with engine.connect() as conn:
        rows = conn.execute(select(c.customer_id, c.lifecycle_stage, c.tier, c.state_version))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def history(engine: Engine) -> list[tuple[str, str | None, str, str | None]]:
    h = TierHistoryRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(h.customer_id, h.from_tier, h.to_tier, h.reason).order_by(h.id)
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def welcome_audit(engine: Engine) -> list[tuple[str, str, dict[str, Any], str | None]]:
    a = AuditRow
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.customer_id, a.kind, a.detail, a.rules_version)
            .where(a.rule == WELCOME_RULE)
            .order_by(a.customer_id)
        ).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def seed(engine: Engine, stages: dict[str, str], tiers: dict[str, str] | None = None) -> None:
    rows = [
        {"customer_id": cid, "lifecycle_stage": stage, "row_hash": cid}
        for cid, stage in stages.items()
    ]
    with engine.begin() as conn:
        upsert_customers(conn, rows, NOW)
        for cid, tier in (tiers or {}).items():
            conn.execute(
                CustomerRow.__table__.update()  # type: ignore[attr-defined]
                .where(CustomerRow.customer_id == cid)
                .values(tier=tier)
            )


def test_members_without_a_tier_get_it_once_with_history_and_audit(engine: Engine) -> None:
    seed(
        engine,
        {"M1": "member", "M2": "member", "M3": "member", "L1": "lead", "P1": "prospect"},
        {"M3": "gold"},
    )
    before = customers(engine)
    with engine.begin() as conn:
        assert grant_welcome_tier(conn, "basic", NOW, ["M1", "L1", "M3", "nobody"]) == 1
    after = customers(engine)
    assert after["M1"] == ("member", "basic", before["M1"][2] + 1)
    # the others are untouched: a lead, a member with a tier, a member not named
    assert {k: v for k, v in after.items() if k != "M1"} == {
        k: v for k, v in before.items() if k != "M1"
    }
    assert history(engine) == [("M1", None, "basic", "welcome tier: a member without a tier")]

    # the backfill: every member without one; then nothing is left to do
    with engine.begin() as conn:
        assert grant_welcome_tier(conn, "basic", NOW, reason="backfill", rules_version="v1") == 1
        assert grant_welcome_tier(conn, "basic", NOW) == 0
        assert grant_welcome_tier(conn, "basic", NOW, ["M1", "M2"]) == 0
    assert customers(engine)["M2"][1] == "basic"
    assert [(cid, reason) for cid, _, _, reason in history(engine)] == [
        ("M1", "welcome tier: a member without a tier"),
        ("M2", "backfill"),
    ]
    assert welcome_audit(engine) == [
        (
            "M1",
            "tier",
            {
                "from_tier": None,
                "to_tier": "basic",
                "how": "welcome",
                "reason": "welcome tier: a member without a tier",
            },
            None,
        ),
        (
            "M2",
            "tier",
            {"from_tier": None, "to_tier": "basic", "how": "welcome", "reason": "backfill"},
            "v1",
        ),
    ]


def test_the_welcome_is_dated_when_the_membership_began(engine: Engine) -> None:
    rows = [
        {"customer_id": "M1", "attributes": {"member_since": "2024-11-01"}},
        {"customer_id": "M2", "attributes": {"member_since": "not a date"}},
        {"customer_id": "M3", "attributes": {"member_since": "2030-01-01"}},
        {"customer_id": "M4", "attributes": {"joined": "2023-05-06"}},
        {"customer_id": "M5", "attributes": {}},
    ]
    with engine.begin() as conn:
        upsert_customers(
            conn,
            [r | {"lifecycle_stage": "member", "row_hash": r["customer_id"]} for r in rows],
            NOW,
        )
        assert grant_welcome_tier(conn, "basic", NOW, ["M1", "M2", "M3"]) == 3
        assert grant_welcome_tier(conn, "basic", NOW, since_attribute="joined") == 2
    h = TierHistoryRow
    with engine.connect() as conn:
        dated = dict(conn.execute(select(h.customer_id, h.changed_at)).all())
        a = AuditRow
        audited = dict(
            conn.execute(select(a.customer_id, a.at).where(a.rule == WELCOME_RULE)).all()
        )
    assert dated == {
        "M1": datetime(2024, 11, 1, tzinfo=UTC),
        "M2": NOW,  # not a date
        "M3": NOW,  # in the future
        "M4": datetime(2023, 5, 6, tzinfo=UTC),
        "M5": NOW,
    }
    assert audited == dated


def test_an_empty_list_of_ids_changes_nothing(engine: Engine) -> None:
    seed(engine, {"M1": "member"})
    with engine.begin() as conn:
        assert grant_welcome_tier(conn, "basic", NOW, []) == 0
    assert customers(engine)["M1"][1] is None


def test_the_demo_data_gives_every_member_the_welcome_tier(engine: Engine) -> None:
    version = deploy_dir(engine, REPO / "examples/rules")
    examples = REPO / "examples"
    imported = import_file(engine, examples / "customers.jsonl", "customers")
    assert imported.rejected == 0

    people = customers(engine)
    members = {cid for cid, (stage, _, _) in people.items() if stage == "member"}
    leads = {cid for cid, (stage, _, _) in people.items() if stage == "lead"}
    assert len(members) == 16 and leads
    assert {people[cid][1] for cid in members} == {"basic"}
    assert {people[cid][1] for cid in leads} == {None}
    assert sorted(cid for cid, *_ in history(engine)) == sorted(members)
    audited = welcome_audit(engine)
    assert sorted(cid for cid, *_ in audited) == sorted(members)
    assert {v for *_, v in audited} == {version}

    # the events move some customers on (the rules set stages and tiers): every member,
    # old or new, has a tier with a tier history row; a lead has neither
    events = import_file(engine, examples / "events.jsonl", "events")
    assert (events.rejected, events.conflicts) == (0, 0)
    people = customers(engine)
    changed = {cid for cid, *_ in history(engine)}
    for cid, (stage, tier, _) in people.items():
        if stage == "member":
            assert tier is not None and cid in changed, cid
        if stage == "lead":
            assert tier is None and cid not in changed, cid

    # importing again changes nothing
    rows, tiers = history(engine), customers(engine)
    again = import_file(engine, examples / "customers.jsonl", "customers")
    assert (again.stored, again.updated, again.duplicates) == (0, 0, again.received)
    assert import_file(engine, examples / "events.jsonl", "events").stored == 0
    assert history(engine) == rows
    assert customers(engine) == tiers


def test_no_rules_deployed_no_tier_and_a_later_import_grants_it(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "people.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"customer_id": "M1", "lifecycle_stage": "member"},
                {"customer_id": "L1", "lifecycle_stage": "lead"},
            ]
        )
    )
    assert import_file(engine, path, "customers").stored == 2
    assert customers(engine)["M1"][1] is None

    deploy_dir(engine, REPO / "examples/rules")
    # the same rows again: nothing to update, but the member gets the welcome tier
    again = import_file(engine, path, "customers")
    assert again.duplicates == 2
    assert {k: v[1] for k, v in customers(engine).items()} == {"M1": "basic", "L1": None}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(TierHistoryRow)).scalar_one() == 1


def test_an_api_customer_upsert_grants_it_too(engine: Engine, api_server: ApiServer) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    with api_server.client("marketer") as http:
        r = http.post(
            "/api/v1/customers/batch",
            json=[{"customer_id": "K1", "lifecycle_stage": "member"}],
        )
    assert r.status_code == 200, r.text
    assert customers(engine)["K1"][1] == "basic"
    assert [cid for cid, *_ in history(engine)] == ["K1"]


def test_deploying_a_programme_gives_existing_members_the_welcome_tier(
    engine: Engine, tmp_path: Path
) -> None:
    from crmflow.services import rules as rules_service
    from crmflow.services.runtime import Runtime
    from crmflow.settings import Settings

    rows = [
        {"customer_id": "W1", "lifecycle_stage": "member"},
        {"customer_id": "W2", "lifecycle_stage": "lead"},
    ]
    import_rows(engine, tmp_path / "c.jsonl", rows, kind="customers")  # no programme yet
    rt = Runtime(Settings(home=tmp_path / "home"), engine)
    done = rules_service.deploy(rt, rules_service.RulesFolder(folder=REPO / "examples/rules"))
    assert done.welcomed == 1
    with engine.connect() as conn:
        tiers = dict(conn.execute(select(CustomerRow.customer_id, CustomerRow.tier)).all())
    assert tiers == {"W1": "basic", "W2": None}
    again = rules_service.deploy(rt, rules_service.RulesFolder(folder=REPO / "examples/rules"))
    assert again.welcomed == 0
