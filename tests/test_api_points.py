"""Redemption, reversal, adjustment and the rewards catalogue over the HTTP API: status codes
(404, 409, 422, 403), `by` taken from the key, and the CLI's `--json` equal to the API's
body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from typer.testing import CliRunner

from crmflow.cli.app import app as cli_app
from store.models import PointsLedgerRow, RedemptionRow
from tests.api_helpers import ApiServer
from tests.test_points_services import COFFEE, LOUNGE, MUG, deploy_program, lot, member

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> Any:
    out = CliRunner().invoke(cli_app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_redeem_reverse_and_their_refusals(
    engine: Engine, api_server: ApiServer, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    lot(engine, 1000)
    with api_server.client("marketer") as http:
        big = {**MUG, "id": "big", "cost": 5000}
        r = http.put("/api/v1/rewards", json={"rewards": [COFFEE, MUG, LOUNGE, big]})
        assert r.status_code == 200, r.text
        assert r.json()["created"] == ["coffee", "mug", "lounge", "big"]
    url = "/api/v1/customers/C1/points/redemptions"
    with api_server.client("ingest", person="Till 3") as http:
        r = http.post(url, json={"reward": "coffee", "key": "rcpt-1"})
        assert r.status_code == 200, r.text
        done = r.json()
        assert (done["status"], done["by"], done["cost"], done["balance"]) == (
            "done",
            "Till 3",
            500,
            500,
        )
        assert done["code"].startswith("CAFE-")
        assert http.post(url, json={"reward": "coffee", "key": "rcpt-1"}).json() == done
        conflict = http.post(url, json={"reward": "mug", "key": "rcpt-1"})
        assert conflict.status_code == 409
        assert "was used for another redemption" in conflict.json()["detail"]
        short = http.post(url, json={"reward": "lounge", "key": "rcpt-2"})
        assert short.status_code == 409
        assert short.json()["detail"] == "reward lounge needs tier gold; the member is basic"
        poor = http.post(url, json={"reward": "big", "key": "rcpt-3"})
        assert poor.status_code == 409
        assert poor.json()["detail"] == "not enough points: 500 available, 5,000 needed"
        assert (
            http.post(
                "/api/v1/customers/nobody/points/redemptions",
                json={"reward": "coffee", "key": "k"},
            ).status_code
            == 404
        )
        assert http.post(url, json={"reward": "nothing", "key": "k9"}).status_code == 404
        for body in (
            {"reward": "coffee", "key": "k\u0000"},
            {"reward": "coffee", "key": "k" * 201},
            {"reward": "coffee"},
            {"reward": "Coffee", "key": "k"},
        ):
            bad = http.post(url, json=body)
            assert bad.status_code == 422, (body, bad.text)
        back = http.post("/api/v1/redemptions/rcpt-1/reverse")
        assert back.status_code == 200, back.text
        assert (back.json()["status"], back.json()["reversed_by"]) == ("reversed", "Till 3")
        again = http.post("/api/v1/redemptions/rcpt-1/reverse")
        assert again.status_code == 409
        assert again.json()["detail"].startswith("redemption rcpt-1 is already reversed (at ")
        assert http.post("/api/v1/redemptions/nope/reverse").status_code == 404
        # a till may redeem, not adjust
        r = http.post("/api/v1/customers/C1/points/adjustments", json={"amount": 5, "reason": "x"})
        assert r.status_code == 403
    with api_server.client("viewer") as http:
        assert http.post(url, json={"reward": "mug", "key": "v1"}).status_code == 403
        assert http.get("/api/v1/rewards").status_code == 200
        assert http.get("/api/v1/customers/C1/points").status_code == 200


def test_adjustments_over_the_api(engine: Engine, api_server: ApiServer, tmp_path: Path) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    url = "/api/v1/customers/C1/points/adjustments"
    with api_server.client("operator") as http:  # a key without a person: its name acts
        r = http.post(url, json={"amount": 2500, "reason": "goodwill", "key": "adj-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["amount"], body["qualifying"], body["balance"]) == (2500, False, 2500)
        assert body["by"].startswith("test-operator")
        assert (
            http.post(url, json={"amount": 2500, "reason": "goodwill", "key": "adj-1"}).json()
            == body
        )
        assert (
            http.post(url, json={"amount": 10, "reason": "goodwill", "key": "adj-1"}).status_code
            == 409
        )
        short = http.post(url, json={"amount": -3000, "reason": "fraud"})
        assert short.status_code == 409
        assert short.json()["detail"] == "not enough points: 2,500 available, 3,000 asked"
        for bad in (
            {"amount": 0, "reason": "x"},
            {"amount": 1.005, "reason": "x"},
            {"amount": 5, "reason": ""},
            {"amount": 5, "reason": "a\u0000"},
            {"amount": 5, "reason": "x", "by": "someone else"},
            {"amount": "2e10", "reason": "x"},
        ):
            r = http.post(url, json=bad)
            assert r.status_code == 422, (bad, r.text)
        assert (
            http.post(
                "/api/v1/customers/nobody/points/adjustments", json={"amount": 5, "reason": "x"}
            ).status_code
            == 404
        )
        r = http.post(url, json={"amount": 100, "reason": "migrated", "qualifying": True})
        assert r.status_code == 200 and r.json()["qualifying"] is True
    with engine.connect() as conn:
        actors = set(
            conn.execute(
                select(PointsLedgerRow.actor).where(PointsLedgerRow.kind == "adjust_credit")
            ).scalars()
        )
    assert actors == {body["by"]}


def test_the_cli_prints_the_api_body(
    engine: Engine, cli_env: Path, api_server: ApiServer, tmp_path: Path
) -> None:
    deploy_program(engine, tmp_path)
    member(engine)
    lot(engine, 2000)
    catalogue = tmp_path / "rewards.yaml"
    catalogue.write_text(
        "rewards:\n"
        "  - {id: mug, name: Mug, kind: gift, cost: 300, stock: 5}\n"
        "  - {id: coffee, name: Coffee, kind: coupon, cost: 500,\n"
        "     coupon: {value: 30, valid_days: 30, code_prefix: CAFE}}\n"
    )
    applied = cli("rewards", "apply", str(catalogue))
    assert applied["created"] == ["mug", "coffee"]
    with api_server.client("admin", person="Li Na") as http:
        assert cli("rewards", "list") == http.get("/api/v1/rewards").json()
        redeemed = cli("points", "redeem", "C1", "coffee", "--key", "k1", "--by", "Li Na")
        api = http.post(
            "/api/v1/customers/C1/points/redemptions", json={"reward": "coffee", "key": "k1"}
        ).json()
        assert redeemed == api
        reversed_ = cli("points", "reverse", "k1", "--by", "Li Na")
        replay = http.post(
            "/api/v1/customers/C1/points/redemptions", json={"reward": "coffee", "key": "k1"}
        ).json()
        assert reversed_ == replay and replay["status"] == "reversed"
        adjusted = cli(
            "points",
            "adjust",
            "C1",
            "--amount",
            "-150",
            "--reason",
            "damaged",
            "--by",
            "Li Na",
            "--key",
            "a1",
        )
        api = http.post(
            "/api/v1/customers/C1/points/adjustments",
            json={"amount": -150, "reason": "damaged", "key": "a1"},
        ).json()
        assert adjusted == api
    with engine.connect() as conn:
        assert conn.execute(select(RedemptionRow.reversed_by)).scalar_one() == "Li Na"
