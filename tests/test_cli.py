"""The command line as a user runs it (in process, with the settings from the environment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crmflow.cli import app
from tests.conftest import REPO

runner = CliRunner()


@pytest.fixture
def env(cli_env: Path) -> Path:
    return cli_env


def test_import_and_show(env: Path) -> None:
    result = runner.invoke(app, ["customers", "import", str(REPO / "examples/customers.jsonl")])
    assert result.exit_code == 0, result.output
    assert "28 received: 28 stored, 0 updated, 0 duplicates, 0 rejected" in result.output
    result = runner.invoke(app, ["events", "import", str(REPO / "examples/events.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stored"] == report["received"] > 100
    assert report["duplicates"] == report["conflicts"] == 0
    result = runner.invoke(app, ["customer", "show", "C0002", "--json"])
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert profile["name"] == "Wang Fang"
    assert profile["phone"].startswith("+86")
    assert profile["events_by_type"]["purchase"] >= 1
    result = runner.invoke(app, ["customer", "show", "C0002"])
    assert "Wang Fang" in result.output


def test_rejects_are_reported_with_lines(env: Path) -> None:
    bad = env / "events.jsonl"
    bad.write_text(
        '{"event_id": "x", "customer_id": "c", "type": "purchase", '
        '"occurred_at": "2026-11-20T10:00:00"}\n'
    )
    result = runner.invoke(app, ["events", "import", str(bad)])
    assert result.exit_code == 1  # not one row validated
    assert "line 1: rejected: field 'occurred_at'" in result.output
    assert (env / "events.jsonl.rejects.jsonl").exists()


def test_unknown_customer_and_missing_file(env: Path) -> None:
    runner.invoke(app, ["migrate"])
    result = runner.invoke(app, ["customer", "show", "nobody"])
    assert result.exit_code == 1
    assert "no customer with id 'nobody'" in result.output
    result = runner.invoke(app, ["events", "import", str(env / "missing.jsonl")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_bad_setting_is_named(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_DEFAULT_PHONE_REGION", "China")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 1
    assert "default_phone_region" in result.output
    assert "two-letter" in result.output


def test_settings_from_toml_and_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = env / "crmflow.toml"
    toml.write_text('task_queue = "from-file"\ntemporal_namespace = "crm"\n')
    monkeypatch.setenv("CRMFLOW_CONFIG", str(toml))
    monkeypatch.setenv("CRMFLOW_TEMPORAL_NAMESPACE", "from-env")
    result = runner.invoke(app, ["settings", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["task_queue"] == "from-file"
    assert data["temporal_namespace"] == "from-env"  # the environment wins
    assert data["embedded"] is True


def test_read_command_on_an_empty_database_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    result = runner.invoke(app, ["customer", "show", "x"])
    assert result.exit_code == 1
    assert "crmflow migrate" in result.output


def test_the_api_refuses_a_public_address_with_the_default_unsubscribe_secret(env: Path) -> None:
    result = runner.invoke(app, ["api", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 1
    assert "unsubscribe secret is the built-in default" in " ".join(result.output.split())
    result = runner.invoke(app, ["api", "--certfile", str(env / "missing.pem")])
    assert result.exit_code == 1
    assert "--keyfile" in result.output


def test_settings_never_print_secrets(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_DATABASE_URL", "postgresql://crm:s3cret-pw@db:5432/crm")
    monkeypatch.setenv("CRMFLOW_TEMPORAL_API_KEY", "tmprl-key-value")
    monkeypatch.setenv("CRMFLOW_UNSUBSCRIBE_SECRET", "unsub-secret-value")
    for args in (["settings", "--json"], ["settings"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        for secret in ("s3cret-pw", "tmprl-key-value", "unsub-secret-value"):
            assert secret not in result.output
    data = json.loads(runner.invoke(app, ["settings", "--json"]).stdout)
    assert data["database_url"] == "postgresql://crm:***@db:5432/crm"
