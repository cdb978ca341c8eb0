"""Balances are read as of now: a lot past its date no longer counts, whether or not the
nightly expiry has run (issue 13), in every place a balance is shown or used."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from typer.testing import CliRunner

from crmflow.cli.app import app as cli_app
from crmflow.contracts.kpi import KpiRequest
from crmflow.services.customers import customer_360
from crmflow.services.errors import NotFound
from crmflow.services.points import statement
from crmflow.services.runtime import Runtime
from store.db import utcnow
from store.ingest import ensure_customers
from store.journeys import message_profile
from store.kpi import kpi_snapshot
from store.models import PointsLedgerRow, PointsLotRow
from store.profiles import load_profile
from tests.api_helpers import ApiServer, make_settings


def test_a_lot_that_expired_yesterday_counts_nowhere_before_the_nightly_run(
    engine: Engine, tmp_path: Path
) -> None:
    now = utcnow()
    with engine.begin() as conn:
        ensure_customers(conn, {"C1"}, now)
        conn.execute(
            insert(PointsLotRow),
            [
                # expired yesterday, the nightly run has not written its `expire` yet
                {
                    "customer_id": "C1",
                    "earned": Decimal(300),
                    "remaining": Decimal(300),
                    "earned_at": now - timedelta(days=400),
                    "expires_at": now - timedelta(days=1),
                },
                {
                    "customer_id": "C1",
                    "earned": Decimal(120),
                    "remaining": Decimal(100),
                    "earned_at": now - timedelta(days=10),
                    "expires_at": now + timedelta(days=355),
                },
                {
                    "customer_id": "C1",
                    "earned": Decimal(50),
                    "remaining": Decimal(50),
                    "earned_at": now - timedelta(days=5),
                    "expires_at": None,
                },
            ],
        )
    with engine.connect() as conn:
        profile = load_profile(conn, "C1")
        assert profile is not None
        assert profile.points_balance == 150
        assert [lot.remaining for lot in profile.expiring_lots] == [100, 50]
        # as of two days ago the first lot still counted
        before = load_profile(conn, "C1", at=now - timedelta(days=2))
        assert before is not None and before.points_balance == 450

        found = message_profile(conn, "C1", now)
        assert found is not None and found["points_balance"] == 150

        assert kpi_snapshot(conn, KpiRequest(as_of=now)).points_outstanding == 150
        back = kpi_snapshot(conn, KpiRequest(as_of=now - timedelta(days=2)))
        assert back.points_outstanding == 450

    view = customer_360(Runtime(make_settings(tmp_path), engine), "C1", mask=False)
    assert view.points.balance == 150


def _lot(
    earned: int, remaining: int, earned_days: int, expires_days: int, **kw: str
) -> dict[str, Any]:
    now = utcnow()
    return {
        "customer_id": "C2",
        "earned": Decimal(earned),
        "remaining": Decimal(remaining),
        "earned_at": now - timedelta(days=earned_days),
        "expires_at": now + timedelta(days=expires_days),
        "source": kw.get("source"),
        "event_id": kw.get("event_id"),
    }


def _entry(kind: str, amount: int, days_ago: int, **kw: str) -> dict[str, Any]:
    return {
        "customer_id": "C2",
        "kind": kind,
        "amount": Decimal(amount),
        "at": utcnow() - timedelta(days=days_ago),
        "event_id": kw.get("event_id"),
        "reason": kw.get("reason"),
    }


def _member_with_lots(engine: Engine) -> None:
    with engine.begin() as conn:
        ensure_customers(conn, {"C2"}, utcnow())
        conn.execute(
            insert(PointsLotRow),
            [
                _lot(300, 300, 400, -1, source="earn-on-purchase", event_id="old"),
                _lot(80, 0, 30, 300),
                _lot(120, 120, 10, 355),
            ],
        )
        conn.execute(
            insert(PointsLedgerRow),
            [
                _entry("earn", 300, 400),
                _entry("earn", 80, 30),
                _entry("redeem", -80, 20, reason="redeemed"),
                _entry("earn", 120, 10, event_id="new"),
            ],
        )


def test_a_points_statement_shows_each_lot_as_of_now(engine: Engine, tmp_path: Path) -> None:
    _member_with_lots(engine)
    found = statement(Runtime(make_settings(tmp_path), engine), "C2", ledger=2)
    assert found.totals.balance == 120
    # the lot past its date counts as expired before the nightly run writes its entry
    assert (found.totals.earned, found.totals.spent, found.totals.expired) == (500, 80, 300)
    assert [(lot.earned, lot.status) for lot in found.lots] == [
        (120, "active"),
        (80, "spent"),
        (300, "expired"),
    ]
    assert [(e.kind, e.amount, e.event_id) for e in found.ledger] == [
        ("earn", 120, "new"),
        ("redeem", -80, None),
    ]
    with pytest.raises(NotFound):
        statement(Runtime(make_settings(tmp_path), engine), "nobody")


def test_points_show_on_the_cli_and_the_api_give_the_same_statement(
    engine: Engine, cli_env: Path, api_server: ApiServer
) -> None:
    _member_with_lots(engine)
    out = CliRunner().invoke(cli_app, ["points", "show", "C2", "--json"])
    assert out.exit_code == 0, out.output
    cli = json.loads(out.output)
    with api_server.client("viewer") as http:
        r = http.get("/api/v1/customers/C2/points", params={"ledger": 20})
        assert r.status_code == 200, r.text
        assert http.get("/api/v1/customers/nobody/points").status_code == 404
    api = r.json()
    assert cli["totals"] == api["totals"]
    assert cli["lots"] == api["lots"]
    assert cli["ledger"] == api["ledger"]
    text = CliRunner().invoke(cli_app, ["points", "show", "C2"])
    assert text.exit_code == 0, text.output
    assert "balance 120" in text.output and "expired" in text.output
    assert "expired 300" in text.output and "clawed back 0," in text.output
    assert " -0" not in text.output
    missing = CliRunner().invoke(cli_app, ["points", "show", "nobody"])
    assert missing.exit_code == 1 and "no customer with id 'nobody'" in missing.output
