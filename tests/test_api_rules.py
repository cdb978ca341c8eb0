"""`/api/v1/rules` over a real uvicorn server, on SQLite and PostgreSQL: validate, dry-run,
deploy, versions and activate; permissions; bounded YAML; the CLI and the API agree."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from crmflow.cli import app as cli_app
from tests import api_helpers
from tests.api_helpers import ApiServer
from tests.rules_helpers import PROGRAM, REPO, event, import_rows

EXAMPLES = REPO / "examples/rules"
runner = CliRunner()
api_server = api_helpers.api_server  # the fixture


def pack(**changed: str) -> dict[str, Any]:
    files = {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.yaml"))}
    return {"program": PROGRAM, "files": files | changed}


def test_validate_and_dry_run(api_server: ApiServer, tmp_path: Path) -> None:
    import_rows(
        api_server.runtime.engine, tmp_path / "c.jsonl", [{"customer_id": "C1"}], "customers"
    )
    with api_server.client("marketer") as http:
        ok = http.post("/api/v1/rules/validate", json=pack())
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["rules"]) == 11 and ok.json()["program_name"] == "Acme Rewards"
        bad = http.post(
            "/api/v1/rules/validate",
            json=pack(
                **{
                    "99-bad.yaml": "rules:\n  - name: x\n    when: spend_12m > 5\n"
                    "    then: [{add_tag: x}]\n"
                }
            ),
        )
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert bad.json()["errors"] == [
            {"field": "99-bad.yaml:3", "reason": bad.json()["errors"][0]["reason"]}
        ]
        assert "unknown fact 'spend_12m'" in bad.json()["errors"][0]["reason"]
        run = http.post(
            "/api/v1/rules/test",
            json=pack() | {"events": [event("t1", "C1", amount=1500.0)], "customer": "C1"},
        )
        assert run.status_code == 200, run.text
        fired = {f["rule"] for f in run.json()["events"][0]["fired"]}
        assert {"earn-on-purchase", "big-spender"} <= fired
        unknown = http.post(
            "/api/v1/rules/test",
            json=pack() | {"events": [event("t1", "C1")], "customer": "nobody"},
        )
        assert unknown.status_code == 404
        versions = http.get("/api/v1/rules/versions")
        assert versions.status_code == 200 and versions.json() == []  # nothing was deployed


def test_deploy_versions_activate(api_server: ApiServer) -> None:
    with api_server.client("admin") as http:
        first = http.post("/api/v1/rules/deploy", json=pack()).json()
        assert (first["status"], first["new"], first["rules"]) == ("deployed", True, 11)
        again = http.post("/api/v1/rules/deploy", json=pack()).json()
        assert again["status"] == "unchanged" and again["version"] == first["version"]
        other = pack(**{"60-more.yaml": "rules:\n  - name: more\n    then: [{add_tag: more}]\n"})
        second = http.post("/api/v1/rules/deploy", json=other).json()
        assert second["status"] == "deployed" and second["rules"] == 12
        listed = http.get("/api/v1/rules/versions").json()
        assert [(v["version"], v["active"]) for v in listed] == [
            (first["version"], False),
            (second["version"], True),
        ]
        assert listed[1]["source"].startswith("api key:")
        back = http.post(f"/api/v1/rules/versions/{first['version']}/activate")
        assert back.status_code == 200 and back.json()["active"] is True
        missing = http.post("/api/v1/rules/versions/0000000000000000/activate")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")


def test_who_may_do_what(api_server: ApiServer) -> None:
    with api_server.client("viewer") as http:
        assert http.get("/api/v1/rules/versions").status_code == 200
        assert http.post("/api/v1/rules/deploy", json=pack()).status_code == 403
        assert http.post("/api/v1/rules/validate", json=pack()).status_code == 403
    with api_server.client("operator") as http:
        assert http.get("/api/v1/rules/versions").status_code == 403
    with api_server.anonymous() as http:
        assert http.get("/api/v1/rules/versions").status_code == 401


def test_what_comes_in_is_bounded(api_server: ApiServer) -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
    )
    with api_server.client("marketer") as http:
        bomb = http.post("/api/v1/rules/validate", json=pack(**{"bomb.yaml": laughs}))
        assert bomb.status_code == 422 and "through its aliases" in bomb.json()["detail"]
        many = {f"r{i}.yaml": "rules: []\n" for i in range(101)}
        assert (
            http.post("/api/v1/rules/validate", json={"program": PROGRAM, "files": many})
        ).status_code == 422
        bad_name = http.post("/api/v1/rules/validate", json=pack(**{"../x.yaml": "rules: []"}))
        assert bad_name.status_code == 422
        as_program = http.post("/api/v1/rules/validate", json=pack(**{"program.yaml": PROGRAM}))
        assert as_program.status_code == 422
        huge = http.post("/api/v1/rules/validate", json=pack(**{"big.yaml": "#" * 1_200_000}))
        assert huge.status_code == 413
        too_many_events = http.post(
            "/api/v1/rules/test", json=pack() | {"events": [event(i, "C1") for i in range(1001)]}
        )
        assert too_many_events.status_code == 422
        long_version = http.post(f"/api/v1/rules/versions/{'a' * 65}/activate")
        assert long_version.status_code == 422


def test_the_cli_and_the_api_list_the_same_versions(api_server: ApiServer, cli_env: Path) -> None:
    assert runner.invoke(cli_app, ["rules", "deploy", str(EXAMPLES)]).exit_code == 0
    with api_server.client("marketer") as http:
        assert http.post("/api/v1/rules/deploy", json=pack(**{"x.yaml": "rules: []\n"})).is_success
        via_api = http.get("/api/v1/rules/versions").json()
    result = runner.invoke(cli_app, ["rules", "versions", "--json"])
    assert result.exit_code == 0, result.output
    via_cli = json.loads(result.stdout)
    assert len(via_cli) == 2

    def same(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r | {"deployed_at": datetime.fromisoformat(r["deployed_at"])} for r in rows]

    assert same(via_cli) == same(via_api)
