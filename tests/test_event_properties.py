"""Event properties checked at the door against the programme's declarations: the pure check
(`rules.properties`), the file import (a bad row is that row's rejection, with its line and
field, the rest of the file stored) and the API (422 naming `events.<i>.properties.<name>`,
nothing stored), on SQLite and PostgreSQL. With no rules deployed only the JSON checks
apply. A refund reusing an event id with another amount is a conflict everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from crmflow.ingest import import_file, rejects_path
from rules.models import Program
from rules.pack import load_program
from rules.properties import check_properties
from rules.source import parse_yaml
from store.models import EventRow
from tests.api_helpers import ApiServer
from tests.conftest import write_lines
from tests.rules_helpers import PROGRAM, REPO, deploy_dir, event

MONEY = "expected money: a finite number ≥ 0 with at most two decimals, got "
EXAMPLE = load_program(parse_yaml(PROGRAM, "program.yaml"))


def program(**changes: Any) -> Program:
    return EXAMPLE.model_copy(update=changes)


def stored(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(EventRow.event_id, EventRow.properties)).all()
    return {r.event_id: r.properties for r in rows}


# --------------------------------------------------------------------------- the pure check


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        ("199.00", MONEY + "'199.00'"),
        ("abc", MONEY + "'abc'"),
        (-50, MONEY + "-50"),
        (12.345, MONEY + "12.345"),
        (True, MONEY + "true"),
        (float("nan"), MONEY + "NaN"),
        (float("inf"), MONEY + "Infinity"),
        (
            1e12,
            "expected money of at most 1,000,000,000.00 (the programme's max_amount), "
            "got 1000000000000.0",
        ),
    ],
)
def test_money_that_is_not_money_is_refused_with_the_reason(amount: Any, reason: str) -> None:
    assert check_properties("purchase", {"amount": amount}, EXAMPLE) == [
        ("properties.amount", reason)
    ]


@pytest.mark.parametrize("amount", [0, 199, 199.9, 199.99, 0.01, 1e9, 123456789.12])
def test_money_is_accepted(amount: float) -> None:
    assert check_properties("purchase", {"amount": amount, "currency": "CNY"}, EXAMPLE) == []


def test_each_declared_type_is_checked_and_undeclared_properties_are_not() -> None:
    p = program(event_properties={"n": "number", "s": "string", "b": "boolean", "m": "money"})
    good = {"n": -1.5, "s": "x", "b": False, "m": 3.5, "colour": object(), "blank": None}
    assert check_properties("sign_in", good, p) == []
    bad = {"n": "1", "s": 5, "b": "yes", "m": -1, "x": 1}
    assert check_properties("sign_in", bad, p) == [
        ("properties.n", "expected a number, got '1'"),
        ("properties.s", "expected a string, got 5"),
        ("properties.b", "expected true or false, got 'yes'"),
        ("properties.m", MONEY + "-1"),
    ]
    assert check_properties("sign_in", {"n": True}, p) == [
        ("properties.n", "expected a number, got true")
    ]
    assert check_properties("sign_in", {"n": float("-inf")}, p) == [
        ("properties.n", "expected a number, got -Infinity")
    ]


def test_a_null_property_counts_as_absent() -> None:
    # a refund without an amount is a full refund
    assert check_properties("refund", {"amount": None, "order_id": "O1"}, EXAMPLE) == []


def test_the_spend_of_a_purchase_or_refund_is_money_whatever_its_declaration() -> None:
    p = program(event_properties={"amount": "number"})
    assert check_properties("purchase", {"amount": 1.005}, p) == [
        ("properties.amount", MONEY + "1.005")
    ]
    assert check_properties("refund", {"amount": -3}, p) == [("properties.amount", MONEY + "-3")]
    # on another event it is the number it is declared as
    assert check_properties("adjustment", {"amount": -3.333}, p) == []


def test_the_currency_must_be_the_programmes_or_have_a_rate() -> None:
    assert check_properties("purchase", {"amount": 5, "currency": "USD"}, EXAMPLE) == [
        (
            "properties.currency",
            "currency 'USD' is not accepted: the programme's currency is CNY, and "
            "currency_rates has no rate for it",
        )
    ]
    rated = program(currency_rates={"USD": 7.1, "HKD": 0.9})
    assert check_properties("purchase", {"amount": 5, "currency": "USD"}, rated) == []
    assert check_properties("sign_in", {"currency": "EUR"}, rated) == [
        (
            "properties.currency",
            "currency 'EUR' is not accepted: the programme's currency is CNY, and "
            "currency_rates has rates for HKD, USD only",
        )
    ]
    assert check_properties("sign_in", {"currency": 7}, rated) == [
        ("properties.currency", "expected a string, got 7")
    ]


# --------------------------------------------------------------------------- file imports

BAD_LINES = [
    # (line text, the field, a piece of the reason)
    (json.dumps(event(2, "C1", amount="199.00")), "properties.amount", MONEY + "'199.00'"),
    (json.dumps(event(3, "C1", amount="abc")), "properties.amount", MONEY + "'abc'"),
    (json.dumps(event(4, "C1", amount=-50)), "properties.amount", MONEY + "-50"),
    (json.dumps(event(5, "C1", amount=1e12)), "properties.amount", "max_amount"),
    (json.dumps(event(6, "C1", amount=12.345)), "properties.amount", MONEY + "12.345"),
    # JSON has no NaN or Infinity; Python's reader allows them, and the JSON check refuses
    (json.dumps(event(7, "C1", amount=float("nan"))), "properties", "no NaN, infinity"),
    (json.dumps(event(8, "C1", amount=float("inf"))), "properties", "no NaN, infinity"),
    (json.dumps(event(9, "C1", amount=True)), "properties.amount", MONEY + "true"),
    (
        json.dumps(event(10, "C1", amount=100, currency="USD")),
        "properties.currency",
        "currency 'USD' is not accepted",
    ),
]


def door_file(path: Path) -> Path:
    good = [
        json.dumps(event(1, "C1", amount=199.0, order_id="O1")),
        *(text for text, _, _ in BAD_LINES),
        json.dumps(event(11, "C2", amount=50.5, currency="CNY", order_id="O2")),
        json.dumps(event(12, "C2", "refund", order_id="O2", amount=None)),
    ]
    return write_lines(path, good)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_row_that_does_not_match_its_declaration_is_rejected_with_line_and_field(
    engine: Engine, tmp_path: Path, workers: int
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    path = door_file(tmp_path / "events.jsonl")

    report = import_file(engine, path, "events", chunk_size=2, workers=workers)

    assert (report.received, report.rejected, report.stored) == (12, 9, 3)
    assert (report.conflicts, report.processed) == (0, 3)
    faults = {f.at: f for f in report.faults}
    assert sorted(faults) == list(range(2, 11))
    rejects = {r["line"]: r for r in map(json.loads, rejects_path(path).read_text().splitlines())}
    assert sorted(rejects) == list(range(2, 11))
    for line, (text, field, reason) in enumerate(BAD_LINES, start=2):
        assert faults[line].problem == "rejected"
        assert f"field '{field}': " in faults[line].reason, faults[line].reason
        assert reason in faults[line].reason
        assert rejects[line]["error"] == faults[line].reason
        assert rejects[line]["row"] == text
    # the good rows of the same file are stored and processed
    assert set(stored(engine)) == {"e1", "e11", "e12"}


def test_a_csv_row_is_checked_too(engine: Engine, tmp_path: Path) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,customer_id,type,occurred_at,properties.amount,properties.currency\n"
        "e1,C1,purchase,2026-11-01T10:00:00+08:00,199.00,CNY\n"  # a CSV cell 199.00 is 199.0
        "e2,C1,purchase,2026-11-01T10:00:00+08:00,abc,CNY\n"
        "e3,C1,purchase,2026-11-01T10:00:00+08:00,NaN,CNY\n"
        "e4,C1,purchase,2026-11-01T10:00:00+08:00,20,USD\n",
        encoding="utf-8",
    )
    report = import_file(engine, path, "events")
    assert (report.stored, report.rejected) == (1, 3)
    assert [(f.at, f.reason.split(":")[0]) for f in report.faults] == [
        (3, "field 'properties.amount'"),
        (4, "field 'properties'"),
        (5, "field 'properties.currency'"),
    ]
    assert stored(engine) == {"e1": {"amount": 199.0, "currency": "CNY"}}


def test_without_rules_only_the_json_checks_apply(engine: Engine, tmp_path: Path) -> None:
    path = door_file(tmp_path / "events.jsonl")
    report = import_file(engine, path, "events")
    # only NaN and Infinity are refused: the rest is stored, waiting for a rules version
    assert [f.at for f in report.faults] == [7, 8]
    assert (report.stored, report.unprocessed) == (10, 10)
    assert stored(engine)["e2"] == {"amount": "199.00"}


def test_the_active_programme_decides_what_passes(engine: Engine, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    for f in (REPO / "examples/rules").glob("*.yaml"):
        (rules / f.name).write_text(f.read_text())
    rated = PROGRAM.replace("currency: CNY", "currency: CNY\ncurrency_rates: {USD: 7.1}")
    (tmp_path / "program.yaml").write_text(rated)
    deploy_dir(engine, rules)
    path = write_lines(
        tmp_path / "events.jsonl",
        [json.dumps(event(1, "C1", amount=100, currency="USD"))],
    )
    assert import_file(engine, path, "events").stored == 1


# --------------------------------------------------------------------------- the API

ASYNC = {"Prefer": "respond-async"}


@pytest.mark.parametrize("prefer", [None, "respond-async"])
def test_the_api_refuses_a_property_that_does_not_match_naming_it(
    engine: Engine, api_server: ApiServer, prefer: str | None
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    headers = {"Prefer": prefer} if prefer else {}
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=event(1, "C1", amount="199.00"), headers=headers)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["errors"] == [
            {"field": "events.0.properties.amount", "reason": MONEY + "'199.00'"}
        ]
        assert body["detail"] == "events.0.properties.amount: " + MONEY + "'199.00'"

        # a batch is refused whole, each field at fault named by its position
        batch = [
            event(2, "C1", amount=10),
            event(3, "C1", amount=12.345),
            event(4, "C1", amount=5, currency="USD"),
        ]
        r = http.post("/api/v1/events/batch", json=batch, headers=headers)
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["errors"]] == [
            "events.1.properties.amount",
            "events.2.properties.currency",
        ]
        assert stored(engine) == {}

        r = http.post("/api/v1/events/batch", json=[event(2, "C1", amount=10)], headers=headers)
        assert r.status_code == (202 if prefer else 200), r.text
    assert set(stored(engine)) == {"e2"}


def test_the_api_without_rules_applies_only_the_json_checks(
    engine: Engine, api_server: ApiServer
) -> None:
    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=event(1, "C1", amount="199.00"))
        assert r.status_code == 200, r.text
    assert stored(engine) == {"e1": {"amount": "199.00"}}


# --------------------------------------------------------------------------- conflicts


def test_a_refund_reusing_an_event_id_with_another_amount_is_a_conflict(
    engine: Engine, tmp_path: Path, api_server: ApiServer
) -> None:
    deploy_dir(engine, REPO / "examples/rules")
    purchase = event("p1", "C1", amount=300, order_id="O1")
    refund = event("r1", "C1", "refund", "2026-11-02T10:00:00+08:00", order_id="O1", amount=100)
    first = write_lines(tmp_path / "first.jsonl", [json.dumps(purchase), json.dumps(refund)])
    assert import_file(engine, first, "events").stored == 2

    again = refund | {"properties": {"order_id": "O1", "amount": 250}}
    path = write_lines(tmp_path / "again.jsonl", [json.dumps(refund), json.dumps(again)])
    report = import_file(engine, path, "events")
    assert (report.stored, report.duplicates, report.conflicts) == (0, 1, 1)
    assert [(f.at, f.problem, f.event_id, f.differs) for f in report.faults] == [
        (2, "conflict", "er1", ["properties"])
    ]
    (reject,) = map(json.loads, rejects_path(path).read_text().splitlines())
    assert reject["line"] == 2 and reject["error"].startswith("conflict: event_id 'er1'")
    assert json.loads(reject["row"])["properties"] == {"order_id": "O1", "amount": 250}

    with api_server.client("ingest") as http:
        r = http.post("/api/v1/events", json=again)
        assert r.status_code == 409, r.text
        assert "properties" in r.json()["detail"]
        r = http.post("/api/v1/events", json=again, headers=ASYNC)
        assert r.status_code == 409, r.text
    assert stored(engine)["er1"] == {"order_id": "O1", "amount": 100}
