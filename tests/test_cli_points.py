"""`crmflow points redeem | reverse | adjust` and `crmflow rewards validate | schema | apply |
list` as a user types them: what they print, and the error and exit code of a refusal."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from crmflow.cli.app import app as cli_app
from tests.test_points_services import deploy_program, lot, member

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_app, list(args))


def test_rewards_validate_schema_apply_and_list(
    engine: Engine, cli_env: Path, tmp_path: Path
) -> None:
    example = str(REPO / "examples" / "rewards.yaml")
    ok = run("rewards", "validate", example)
    assert ok.exit_code == 0, ok.output
    assert f"ok: 2 rewards, tiers checked against {REPO / 'examples' / 'program.yaml'}" in (
        " ".join(ok.output.split())
    )
    bad = tmp_path / "bad" / "rewards.yaml"
    bad.parent.mkdir()
    bad.write_text("rewards:\n  - {id: x, name: X, kind: coupon, cost: 5}\n")
    out = run("rewards", "validate", str(bad))
    assert out.exit_code == 1
    assert f"{bad}:2: rewards.0: a coupon reward needs" in out.output
    as_json = run("rewards", "validate", str(bad), "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["errors"][0]["line"] == 2
    schema = run("rewards", "schema")
    assert schema.exit_code == 0 and json.loads(schema.output)["title"] == "crmflow rewards file"

    # no rules deployed: a reward naming a tier cannot be applied
    refused = run("rewards", "apply", example)
    assert refused.exit_code == 1 and "cannot be checked: no programme" in refused.output
    deploy_program(engine, tmp_path)
    dry = run("rewards", "apply", example, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would apply" in dry.output and "2 created" in dry.output
    assert "No rewards" not in run("rewards", "list").output
    done = run("rewards", "apply", example)
    assert done.exit_code == 0 and "applied" in done.output and "2 created" in done.output
    listed = run("rewards", "list")
    assert listed.exit_code == 0
    assert "coffee-voucher" in listed.output and "lounge-pass" in listed.output
    assert "1,000" in listed.output  # stock left
    again = run("rewards", "apply", example)
    assert "0 created, 0 updated, 2 unchanged, 0 withdrawn" in again.output


def test_redeem_reverse_and_adjust_as_typed(engine: Engine, cli_env: Path, tmp_path: Path) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    lot(engine, 1000)
    catalogue = tmp_path / "rewards.yaml"
    catalogue.write_text(
        "rewards:\n"
        "  - {id: coffee, name: Coffee, kind: coupon, cost: 500, per_member_limit: 1,\n"
        "     coupon: {value: 30, valid_days: 30, code_prefix: CAFE}}\n"
    )
    assert run("rewards", "apply", str(catalogue)).exit_code == 0
    out = run("points", "redeem", "C1", "coffee", "--key", "till-9", "--by", "Li Na")
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert text.startswith("redeemed coffee for C1 (key till-9): 500 points, coupon CAFE-")
    assert text.endswith("balance 500")
    limit = run("points", "redeem", "C1", "coffee", "--key", "till-10")
    assert limit.exit_code == 1
    assert "limit reached: coffee redeemed 1 times (limit 1)" in limit.output
    back = run("points", "reverse", "till-9", "--by", "Li Na")
    assert back.exit_code == 0 and "reversed coffee for C1" in back.output
    twice = run("points", "reverse", "till-9")
    assert twice.exit_code == 1 and "is already reversed" in twice.output
    credit = run(
        "points", "adjust", "C1", "--amount", "2500", "--reason", "goodwill", "--by", "ops"
    )
    assert credit.exit_code == 0, credit.output
    assert "credited 2,500 points to C1" in credit.output and "balance 3,500" in credit.output
    debit = run("points", "adjust", "C1", "--amount", "-4000", "--reason", "fraud", "--by", "ops")
    assert debit.exit_code == 1
    assert "not enough points: 3,500 available, 4,000 asked" in debit.output
    zero = run("points", "adjust", "C1", "--amount", "0", "--reason", "x", "--by", "ops")
    assert zero.exit_code == 1 and "amount: must be a number other than 0" in zero.output
    missing = run("points", "adjust", "C1", "--amount", "5", "--reason", "x")
    assert missing.exit_code == 2  # --by is required
    show = run("points", "show", "C1")
    assert show.exit_code == 0
    flat = " ".join(show.output.split())
    assert "balance 3,500" in flat and "credited 2,500" in flat and "spent 0" in flat
    assert "redeem_reversal" in flat and "adjust_credit" in flat
