"""The rules runtime: what processing keeps between chunks belongs to one database engine,
so two databases in one process (an API's and a simulation's) never share it."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine

from crmflow.ingest import import_file
from crmflow.rules_runtime import bind, rules_runtime
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.db import make_engine
from store.migrate import upgrade
from store.rule_versions import active_source
from tests.rules_helpers import deploy_dir

REPO = Path(__file__).resolve().parents[1]


def _purchases(path: Path, customer: str, n: int) -> Path:
    rows = [
        {
            "event_id": f"{customer}-{i}",
            "customer_id": customer,
            "type": "purchase",
            "occurred_at": f"2026-01-0{i + 1}T10:00:00Z",
            "properties": {"amount": 100},
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_each_engine_has_its_own_runtime_and_a_face_binds_its_own(
    engine: Engine, tmp_path: Path
) -> None:
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        upgrade(other)
        assert rules_runtime(engine) is rules_runtime(engine)
        assert rules_runtime(engine) is not rules_runtime(other)
        rt = Runtime(Settings(), other)
        assert rules_runtime(other) is rt.rules  # the face's own, bound in its entry point
        mine = bind(other)
        assert rules_runtime(other) is mine is not rt.rules
    finally:
        other.dispose()


def test_processing_on_one_database_leaves_the_other_runtime_untouched(
    engine: Engine, tmp_path: Path
) -> None:
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        upgrade(other)
        here, there = bind(engine), bind(other)
        deploy_dir(engine, REPO / "examples/rules")
        report = import_file(engine, _purchases(tmp_path / "e.jsonl", "R1", 3), "events")
        assert report.processed == 3
        with engine.connect() as conn:
            found = active_source(conn)
            assert found is not None
            assert here.active_pack(conn) is here.active_pack(conn)  # compiled once
        assert len(here.states) == 1  # R1's state, kept for the next chunk
        assert len(there.states) == 0
        with other.connect() as conn:
            assert there.active_pack(conn) is None  # nothing deployed over there
    finally:
        other.dispose()
