"""An event id names one event, whichever way it arrives: the same id with other content is a
conflict — listed with its line (a file) or position (a request), written to the rejects file,
never applied and never counted as a duplicate. One report, in one vocabulary, for every
arrival; on SQLite and PostgreSQL, with one import process and with two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from crmflow.cli import app as cli_app
from crmflow.ingest import import_file, read_json_lines, rejects_path
from crmflow.ingest_report import IngestReport
from store.models import EventRow
from tests.api_helpers import ApiServer
from tests.conftest import write_lines
from tests.rules_helpers import REPO, deploy_dir, event

runner = CliRunner()


def adds_up(r: IngestReport) -> bool:
    return r.received == r.rejected + r.stored + r.updated + r.duplicates + r.conflicts


def stored_properties(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(EventRow.event_id, EventRow.properties)).all()
    return {r.event_id: r.properties for r in rows}


def conflicting_file(path: Path) -> Path:
    lines = [
        event(1, "C1", amount=10.0),  # 1: stored before, same content: a duplicate
        event(1, "C1", amount=99.0),  # 2: stored before with other properties: a conflict
        event(2, "C1", amount=20.0),  # 3: new
        event(2, "C1", "purchase", "2026-11-02T10:00:00+08:00", amount=20.0),  # 4: conflict
        event(3, "C1", amount=30.0),  # 5: new
        event(3, "C1", amount=30.0),  # 6: repeated in the file: a duplicate
        event(4, "C1", amount=1.0),  # 7: new
        event(4, "C1", amount=2.0),  # 8: the same id earlier in the file: a conflict
        {"event_id": "bad", "customer_id": "C1"},  # 9: rejected
        # 10: the stored instant written in another zone, to the millisecond: a duplicate
        event(1, "C1", "purchase", "2026-11-01T02:00:00.000+00:00", amount=10.0),
        event(5, "C2", amount=50.0),  # 11: new
        event(6, "C2", amount=60.0),  # 12: new
    ]
    return write_lines(path, [json.dumps(x) for x in lines])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_conflicting_event_in_a_file_is_reported_with_its_line_and_rejected(
    engine: Engine, tmp_path: Path, workers: int
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    before = write_lines(tmp_path / "before.jsonl", [json.dumps(event(1, "C1", amount=10.0))])
    assert import_file(engine, before, "events").stored == 1
    path = conflicting_file(tmp_path / "events.jsonl")

    report = import_file(engine, path, "events", chunk_size=3, workers=workers)

    assert (report.received, report.rejected, report.stored, report.updated) == (12, 1, 5, 0)
    assert (report.duplicates, report.conflicts, report.processed) == (3, 3, 5)
    assert adds_up(report)
    got = [(f.at, f.problem, f.event_id, f.differs) for f in report.faults]
    assert got == [
        (2, "conflict", "e1", ["properties"]),
        (4, "conflict", "e2", ["occurred_at"]),
        (8, "conflict", "e4", ["properties"]),
        (9, "rejected", None, []),
    ]
    assert "names another event" in report.faults[0].reason
    assert report.rejects_file == str(rejects_path(path))
    rejects = {r["line"]: r for r in map(json.loads, rejects_path(path).read_text().splitlines())}
    assert sorted(rejects) == [2, 4, 8, 9]
    assert rejects[2]["error"].startswith("conflict: event_id 'e1'")
    assert json.loads(rejects[8]["row"])["properties"] == {"amount": 2.0}
    assert "field 'type'" in rejects[9]["error"]
    # the first content of each id is the one stored, and applied once
    props = stored_properties(engine)
    assert (props["e1"], props["e4"]) == ({"amount": 10.0}, {"amount": 1.0})
    assert len(props) == 6

    # again: nothing new; the conflicts are conflicts still, never duplicates
    again = import_file(engine, path, "events", chunk_size=3, workers=workers)
    assert (again.stored, again.duplicates, again.conflicts, again.processed) == (0, 8, 3, 0)
    assert [f.at for f in again.faults] == [2, 4, 8, 9]


def test_without_rules_conflicts_are_found_too(engine: Engine, tmp_path: Path) -> None:
    path = conflicting_file(tmp_path / "events.jsonl")
    report = import_file(engine, path, "events", chunk_size=4)
    # e1 is new here: line 2 conflicts with line 1 (earlier in the file)
    assert (report.stored, report.duplicates, report.conflicts) == (6, 2, 3)
    assert (report.unprocessed, report.processed, report.rules_version) == (6, 0, None)
    assert [f.at for f in report.faults if f.problem == "conflict"] == [2, 4, 8]
    assert adds_up(report)


def test_an_api_batch_lists_conflicts_by_position(engine: Engine, api_server: ApiServer) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    with api_server.client("ingest") as http:
        assert http.post("/api/v1/events", json=event(1, "C1", amount=10.0)).status_code == 200
        batch = [
            event(1, "C1", amount=10.0),  # 0: a duplicate
            event(9, "C1", amount=5.0),  # 1: new
            event(1, "C1", "sign_in"),  # 2: stored with another type and properties
            event(9, "C1", amount=6.0),  # 3: earlier in the batch with other properties
            event(9, "C1", amount=5.0),  # 4: a repeat of position 1
        ]
        r = http.post("/api/v1/events/batch", json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["kind"], body["source"], body["received"], body["rejected"]) == (
        "events",
        "api",
        5,
        0,
    )
    assert (body["stored"], body["duplicates"], body["conflicts"]) == (1, 2, 2)
    assert [(f["at"], f["event_id"], f["differs"]) for f in body["faults"]] == [
        (2, "e1", ["type", "properties"]),
        (3, "e9", ["properties"]),
    ]
    assert body["rejects_file"] is None
    assert stored_properties(engine)["e9"] == {"amount": 5.0}


def test_an_api_customer_upsert_reports_in_the_same_words(api_server: ApiServer) -> None:
    people = [{"customer_id": "K1", "name": "Li Na"}, {"customer_id": "K2", "name": "Wang Fang"}]
    with api_server.client("marketer") as http:
        first = http.post("/api/v1/customers/batch", json=people).json()
        changed = [people[0], {"customer_id": "K2", "name": "Wang Fang", "locale": "en"}]
        second = http.post("/api/v1/customers/batch", json=changed).json()
        bad = http.post("/api/v1/customers/batch", json=[{"customer_id": "K3", "email": "no"}])
    assert (first["kind"], first["received"], first["stored"], first["duplicates"]) == (
        "customers",
        2,
        2,
        0,
    )
    assert (second["stored"], second["updated"], second["duplicates"]) == (0, 1, 1)
    assert second["conflicts"] == 0 and second["faults"] == []
    assert bad.status_code == 422
    assert "email" in bad.json()["detail"]


def test_the_cli_prints_the_new_words(cli_env: Path) -> None:
    path = cli_env / "events.jsonl"
    write_lines(
        path,
        [
            json.dumps(event(1, "C1", amount=10.0)),
            json.dumps(event(1, "C1", amount=11.0)),
            json.dumps(event(1, "C1", amount=10.0)),
        ],
    )
    result = runner.invoke(cli_app, ["events", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "3 received: 1 stored, 1 duplicates, 1 conflicts, 0 rejected" in result.output
    assert "line 2: conflict: event_id 'e1' names another event" in result.output
    assert "it differs in properties" in result.output
    assert "rows written to" in result.output
    result = runner.invoke(cli_app, ["events", "import", str(path), "--json"])
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("received", "stored", "duplicates", "conflicts")} == {
        "received": 3,
        "stored": 0,
        "duplicates": 2,
        "conflicts": 1,
    }
    assert report["faults"][0]["at"] == 2


def test_the_json_lines_reader_numbers_lines_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": 2}  \n', encoding="utf-8")
    assert list(read_json_lines(path)) == [(1, '{"a": 1}'), (4, '{"b": 2}')]
