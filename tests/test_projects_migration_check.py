"""The migration check's figures on a small hand-made dataset, the example data, the report."""

from __future__ import annotations

import csv
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from projects.migration_check import (
    MappingFile,
    check_migration,
    load_mapping,
    render_html,
    terminal_summary,
)
from projects.models import MigrationThresholds, load_template
from rules.source import SourceError

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2025, 5, 1, 8, tzinfo=UTC)
MAPPING = MappingFile.model_validate(
    {
        "amount_field": "spend",
        "name_field": "name",
        "fields": [
            {"source": "id", "target": "external_id", "required": True},
            {"source": "name", "target": "name", "required": True},
            {
                "source": "phone",
                "target": "phone",
                "transforms": ["strip", "phone"],
                "required": True,
            },
            {"source": "email", "target": "email", "transforms": ["strip", "lower", "email"]},
            {"source": "joined", "target": "joined", "transforms": ["strip", "date"]},
            {"source": "spend", "target": "spend", "transforms": ["strip", "decimal"]},
        ],
    }
)
COLUMNS = ["id", "name", "phone", "email", "joined", "spend"]
DATA = [
    ["A1", "Zhang Wei", "13912345678", "zw@example.com", "2020-01-02", "100.50"],
    ["A2", "Zhang  Wei.", "+86 139-1234-5678", "", "2020-01-02", "20"],
    ["A3", "Li Na", "13800138001", "LN@Example.com", "bad", "1,000.00"],
    ["A4", "Li Ming", "13700137002", "ln@example.com", "", "5"],
    ["A5", "", "13600136003", "x@example.com", "", "7"],
    ["A6", "Wang Fang", "12345", "wf@@example.com", "", "<i>abc</i>"],
    ["A7", "Zhao Min", "13300133006", "zm@example.com", "2021-05-06", "30"],
]
ROWS = [dict(zip(COLUMNS, r, strict=True)) for r in DATA]


def test_counts_fill_rates_and_amounts() -> None:
    r = check_migration(ROWS, MAPPING, "legacy.csv", NOW)
    assert (r.rows_in, r.rows_out) == (7, 5)
    assert [(x.row, x.reasons) for x in r.rejected] == [
        (6, ["name is blank"]),
        (7, ["phone '12345': not a valid phone number (region CN)"]),
    ]
    assert {k: (f.filled, round(f.fill_rate, 4)) for k, f in r.fields.items()} == {
        "external_id": (7, 1.0),
        "name": (6, 0.8571),
        "phone": (6, 0.8571),
        "email": (5, 0.7143),
        "joined": (3, 0.4286),
        "spend": (6, 0.8571),
    }
    assert r.invalid_rows == 2
    assert [(e.row, e.value) for e in r.fields["joined"].examples] == [(4, "bad")]
    assert r.fields["email"].examples[0].row == 7
    assert r.fields["email"].examples[0].reason.startswith("not a valid e-mail address")
    assert r.fields["spend"].examples[0].reason == "not a number"
    assert (r.amount_source, r.amount_mapped) == (Decimal("1162.50"), Decimal("1155.50"))
    assert r.rows[0] == {
        "external_id": "A1",
        "name": "Zhang Wei",
        "phone": "+8613912345678",
        "email": "zw@example.com",
        "joined": "2020-01-02",
        "spend": Decimal("100.50"),
    }
    assert r.rows[2]["email"] == "ln@example.com" and r.rows[2]["joined"] is None


def test_duplicates_by_phone_and_email_with_name_similarity() -> None:
    r = check_migration(ROWS, MAPPING, "legacy.csv", NOW)
    got = [(g.rows, g.keys, g.name_similarity, g.same_person) for g in r.duplicates]
    assert got == [
        ([2, 3], ["+8613912345678"], 1.0, True),
        ([4, 5], ["ln@example.com"], 0.667, False),
    ]
    assert r.duplicate_rows == 2


def test_meets_thresholds_with_reasons_and_target_rows() -> None:
    target = [{"spend": "100.50"}, {"spend": "1,050.00"}]
    r = check_migration(ROWS, MAPPING, "legacy.csv", NOW, target_rows=target)
    assert (r.target_rows, r.amount_target) == (2, Decimal("1150.50"))
    passed, reasons = r.meets(MigrationThresholds())
    assert not passed
    assert reasons == [
        "fill rate of email is 71.4%, below 95.0%",
        "fill rate of joined is 42.9%, below 95.0%",
        "fill rate of name is 85.7%, below 95.0%",
        "fill rate of phone is 85.7%, below 95.0%",
        "fill rate of spend is 85.7%, below 95.0%",
        "duplicate rate is 40.0%, above 1.0%",
        "invalid rate is 28.6%, above 2.0%",
        "rejected rate is 28.6%, above 2.0%",
        "amounts differ by 7.00 (source 1162.50, migrated 1155.50), above the tolerance 0.01",
        "the target's amounts differ from the migrated ones by 5.00, above the tolerance 0.01",
    ]
    clean = check_migration([ROWS[0], ROWS[6]], MAPPING, "clean.csv", NOW)
    assert clean.meets(MigrationThresholds(min_fill_rate=0.5)) == (True, [])
    s = clean.summary()
    assert (s.rows_in, s.rows_out, s.rejected, s.duplicate_rate) == (2, 2, 0, 0.0)


def test_missing_column_is_reported() -> None:
    rows = [{k: v for k, v in row.items() if k != "joined"} for row in ROWS[:1]]
    r = check_migration(rows, MAPPING, "x.csv", NOW)
    assert r.missing_columns == ["joined"]
    assert (
        r.meets(MigrationThresholds(min_fill_rate=0))[1][0] == "source column 'joined' is missing"
    )


def test_blocking_keeps_comparisons_within_shared_keys() -> None:
    # 3,000 distinct members and one pair: fast, and exactly one group
    rows = [
        {
            "id": str(i),
            "name": f"Member {i}",
            "phone": f"1391{i:07d}",
            "email": "",
            "joined": "",
            "spend": "1",
        }
        for i in range(3000)
    ]
    rows.append(dict(rows[10], id="dup"))
    r = check_migration(rows, MAPPING, "big.csv", NOW)
    assert [(g.rows, g.same_person) for g in r.duplicates] == [([12, 3002], True)]


def test_example_data_and_mapping() -> None:
    mapping = load_mapping(REPO / "examples/rollout/mapping.yaml")
    with open(REPO / "examples/rollout/legacy.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    r = check_migration(rows, mapping, "legacy.csv", NOW)
    template = load_template(REPO / "examples/rollout/crm-rollout.yaml")
    assert template.migration is not None
    summary = terminal_summary(r, template.migration.thresholds)
    assert (summary["rows_in"], summary["rows_out"], summary["rejected"]) == (40, 36, 4)
    assert summary["duplicate_groups"] == 3 and summary["duplicate_rows"] == 3
    assert summary["invalid"] == {"phone": 2, "email": 2, "member_since": 1, "lifetime_spend": 1}
    assert summary["passed"] is False
    assert "duplicate rate is 8.3%, above 2.0%" in summary["reasons"]


def test_html_report_escapes_values() -> None:
    r = check_migration(ROWS, MAPPING, "<legacy>.csv", NOW)
    html = render_html(r, MigrationThresholds())
    assert "&lt;i&gt;abc&lt;/i&gt;" in html and "<i>abc</i>" not in html
    assert "&lt;legacy&gt;.csv" in html
    assert '<strong class="fail">FAIL</strong>' in html
    assert "shared contact" in html and "same person" in html
    assert "row 4: bad" in html


def test_mapping_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "mapping.yaml"
    f.write_text(
        textwrap.dedent("""\
        amount_field: spend
        fields:
          - {source: Spend, target: spend, transforms: [strip, money]}
        """)
    )
    with pytest.raises(SourceError) as info:
        load_mapping(f)
    (err,) = info.value.errors
    assert err.line == 3
    assert err.message.startswith("fields.0.transforms.1: expected 'strip'")
    f.write_text("amount_field: total\nfields:\n  - {source: Spend, target: spend}\n")
    with pytest.raises(SourceError, match="amount_field 'total' is not a mapped target field"):
        load_mapping(f)
