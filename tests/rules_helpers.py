"""Helpers for tests that run rules through the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, select

from crmflow.ingest import import_file
from crmflow.ingest_report import IngestReport
from rules.pack import load_pack
from store.models import Base, PointsLedgerRow, PointsLotRow
from store.rule_versions import deploy

REPO = Path(__file__).resolve().parents[1]
PROGRAM = (REPO / "examples/program.yaml").read_text()


def deploy_dir(engine: Engine, rules_dir: Path) -> str:
    pack, source = load_pack(rules_dir)
    with engine.begin() as conn:
        deploy(conn, pack.version, source, len(pack.rules), str(rules_dir))
    return pack.version


def rules_dir(tmp: Path, rules_yaml: str, name: str = "rules") -> Path:
    """A rules folder with the example programme and one rule file."""
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (tmp / "program.yaml").write_text(PROGRAM)
    (d / "rules.yaml").write_text(rules_yaml)
    return d


def import_rows(
    engine: Engine, path: Path, rows: list[dict[str, Any]], kind: str = "events", **kw: Any
) -> IngestReport:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return import_file(engine, path, kind, **kw)  # type: ignore[arg-type]


def event(
    n: int | str,
    customer: str,
    type_: str = "purchase",
    at: str = "2026-11-01T10:00:00+08:00",
    **props: Any,
) -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "customer_id": customer,
        "type": type_,
        "occurred_at": at,
        "properties": props,
    }


def points(engine: Engine, customer: str) -> tuple[float, float]:
    """(sum of lots remaining, sum of ledger amounts) for a customer."""
    with engine.connect() as conn:
        lots = conn.execute(
            select(func.coalesce(func.sum(PointsLotRow.remaining), 0)).where(
                PointsLotRow.customer_id == customer
            )
        ).scalar_one()
        ledger = conn.execute(
            select(func.coalesce(func.sum(PointsLedgerRow.amount), 0)).where(
                PointsLedgerRow.customer_id == customer
            )
        ).scalar_one()
    return float(lots), float(ledger)


def wipe(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
