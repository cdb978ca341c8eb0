"""`/api/v1/segments/preview` over a real uvicorn server, on SQLite and PostgreSQL, and
`crmflow segments preview`: the same counts from both faces."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer
from typer.testing import CliRunner

from crmflow.cli.segments import segments_app
from tests import api_helpers
from tests.api_helpers import ApiServer
from tests.rules_helpers import REPO, deploy_dir, event, import_rows

runner = CliRunner()
cli = typer.Typer()  # as crmflow/cli/app.py wires it: `crmflow segments …`
cli.add_typer(segments_app, name="segments")
api_server = api_helpers.api_server  # the fixture
VIP = {"all": ["tags contains big-spender", "consent.email == true"]}


def seed(server: ApiServer, tmp_path: Path) -> None:
    """12 customers; c00..c07 bought big yesterday (tagged big-spender), even ones said yes
    to e-mail: c00, c02, c04, c06 are in VIP."""
    engine = server.runtime.engine
    deploy_dir(engine, REPO / "examples/rules")
    customers = [{"customer_id": f"c{i:02}", "consent": {"email": i % 2 == 0}} for i in range(12)]
    import_rows(engine, tmp_path / "c.jsonl", customers, "customers")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    events = [
        event(i, f"c{i:02}", at=yesterday, amount=5000.0 if i < 8 else 10.0) for i in range(12)
    ]
    import_rows(engine, tmp_path / "e.jsonl", events)


def test_preview_counts_and_samples(api_server: ApiServer, tmp_path: Path) -> None:
    with api_server.client("marketer") as http:
        none_yet = http.post("/api/v1/segments/preview", json={"condition": VIP})
        assert none_yet.status_code == 409  # no rules version: no facts to test
        seed(api_server, tmp_path)
        found = http.post("/api/v1/segments/preview", json={"condition": VIP, "sample": 2})
        assert found.status_code == 200, found.text
        body = found.json()
        assert (body["matched"], body["customers"], body["sample"]) == (4, 12, ["c00", "c02"])
        shorthand = http.post("/api/v1/segments/preview", json={"condition": "purchases_30d >= 1"})
        assert shorthand.json()["matched"] == 12
        bad = http.post("/api/v1/segments/preview", json={"condition": "event.amount > 5"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "condition"
        assert "profile" in bad.json()["errors"][0]["reason"]
        too_many = http.post("/api/v1/segments/preview", json={"condition": VIP, "sample": 101})
        assert too_many.status_code == 422
        deep: dict[str, object] = {"fact": "tier", "op": "exists"}
        for _ in range(200):
            deep = {"not": deep}
        assert http.post("/api/v1/segments/preview", json={"condition": deep}).status_code == 422
    with api_server.client("viewer") as http:
        assert http.post("/api/v1/segments/preview", json={"condition": VIP}).status_code == 200
    with api_server.client("project_manager") as http:
        assert http.post("/api/v1/segments/preview", json={"condition": VIP}).status_code == 403


def test_the_cli_and_the_api_agree(api_server: ApiServer, tmp_path: Path, cli_env: Path) -> None:
    seed(api_server, tmp_path)
    with api_server.client("marketer") as http:
        via_api = http.post("/api/v1/segments/preview", json={"condition": VIP}).json()
    result = runner.invoke(cli, ["segments", "preview", "--when", json.dumps(VIP), "--json"])
    assert result.exit_code == 0, result.output
    via_cli = json.loads(result.stdout)
    keys = ("matched", "customers", "sample", "rules_version")
    assert {k: via_cli[k] for k in keys} == {k: via_api[k] for k in keys}
    text = runner.invoke(
        cli,
        [
            "segments",
            "preview",
            "--when",
            "{all: [tags contains big-spender]}",
            "--sample",
            "1",
            "--program",
            str(REPO / "examples/program.yaml"),
        ],
    )
    assert text.exit_code == 0, text.output
    assert "8 of 12 customers match" in text.stdout and "c00 … and 7 more" in text.stdout
    wrong = runner.invoke(cli, ["segments", "preview", "--when", "spend_12m > 5"])
    assert wrong.exit_code == 1 and "unknown fact 'spend_12m'" in wrong.output
