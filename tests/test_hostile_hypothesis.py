"""hypothesis over every YAML loader and the import: whatever the input, a clear error (a
SourceError with file and line, a row's rejection) and never another exception; an import
stores exactly the rows it reports stored, nothing of a rejected one.

The loaders get the example files mutated: a value swapped for a hostile one (NaN, huge
numbers, NUL, a long string, a template bomb, a nested list), a key dropped or added, or raw
characters spliced into the text. The import gets rows built from the event format's fields
with hostile values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select

from crmflow.ingest import import_file
from crmflow.schedules import load_schedules
from journeys.validate import validate_text
from projects.models import check_template
from rules.pack import load_program
from rules.rewards import load_rewards
from rules.source import SourceError, parse_yaml
from store.models import EventRow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PROGRAM_TEXT = (EXAMPLES / "program.yaml").read_text()
PROGRAM = load_program(parse_yaml(PROGRAM_TEXT, "program.yaml"))

HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -(10**30),
            10**400,
            "",
            "\x00",
            "x" * 5_000,
            "{{ 'a' * 1000000000 }}",
            "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31",
            "2025-02-30",
            [[[[[[[[[[1]]]]]]]]]],
            {"": None},
            None,
            True,
        ]
    ),
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*prefix, i))
    return found


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return data


@st.composite
def mutated(draw: st.DrawFn, example: Path) -> str:
    text = example.read_text()
    how = draw(st.sampled_from(["value", "drop", "add", "splice"]))
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["[", "{", ":", "&a ", "*a", "- ", "\t", "'", '"', "\x00"]))
        return text[:at] + junk * draw(st.integers(1, 60)) + text[at:]
    data = yaml.safe_load(text)
    path = draw(st.sampled_from(_paths(data)))
    if how == "value":
        data = _set(data, path, draw(HOSTILE_VALUES))
    elif how == "drop" and path:
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
    else:
        node = data
        for part in path:
            node = node[part]
        if isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=12))] = draw(HOSTILE_VALUES)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(text, encoding="utf-8")
    return path


LOADERS: dict[str, tuple[Path, Callable[[str, Path], object]]] = {
    "programme": (EXAMPLES / "program.yaml", lambda t, _: load_program(parse_yaml(t, "p.yaml"))),
    "journey": (
        EXAMPLES / "journeys" / "welcome.yaml",
        lambda t, _: validate_text(t, "j.yaml", PROGRAM),
    ),
    "schedules": (EXAMPLES / "schedules.yaml", lambda t, tmp: load_schedules(_write(tmp, t))),
    "project template": (
        EXAMPLES / "rollout" / "crm-rollout.yaml",
        lambda t, _: check_template(parse_yaml(t, "t.yaml")),
    ),
    "rewards": (EXAMPLES / "rewards.yaml", lambda t, _: load_rewards(t, PROGRAM, "r.yaml")),
    "rule file": (
        EXAMPLES / "rules" / "40-retention.yaml",
        lambda t, _: _rule_file(t),
    ),
}


def _rule_file(text: str) -> object:
    from crmflow.services import rules as service

    try:
        return service.validate(
            service.RulesTexts(
                program=(EXAMPLES / "program.yaml").read_text(), files={"r.yaml": text}
            )
        )
    except service.RulesInvalid as exc:
        raise SourceError(exc.errors) from exc


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_a_mutated_file_is_loaded_or_refused_with_its_line_never_a_crash(
    loader: str, tmp_path: Path
) -> None:
    example, load = LOADERS[loader]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated(example))
    def check(text: str) -> None:
        try:
            load(text, tmp_path)
        except SourceError as exc:
            assert exc.errors, "an error lists its problems"
            assert all(e.message and e.file for e in exc.errors)

    check()


ROW_FIELDS = ["event_id", "customer_id", "type", "occurred_at", "properties", "extra"]
ROWS = st.lists(
    st.dictionaries(
        st.sampled_from(ROW_FIELDS),
        st.one_of(HOSTILE_VALUES, st.dictionaries(st.text(max_size=5), HOSTILE_VALUES)),
        max_size=6,
    ).map(
        lambda row: (
            {
                "event_id": "e",
                "customer_id": "HY1",
                "type": "sign_in",
                "occurred_at": "2026-11-20T10:00:00+08:00",
                "properties": {},
            }
            | row
        )
    ),
    min_size=1,
    max_size=8,
)


def _line(n: int, row: dict[str, Any]) -> str:
    if row.get("event_id") == "e":
        row = row | {"event_id": f"hy-{n}"}
    return json.dumps(row, allow_nan=True, default=str)


def test_hypothesis_rows_import_stores_exactly_what_it_reports(
    engine: Engine, tmp_path: Path
) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ROWS)
    def check(rows: list[dict[str, Any]]) -> None:
        with engine.begin() as conn:
            conn.execute(delete(EventRow))
        path = tmp_path / "events.jsonl"
        path.write_text("".join(_line(n, row) + "\n" for n, row in enumerate(rows)))
        report = import_file(engine, path, "events", chunk_size=3)
        assert report.received == len(rows)
        accounted = report.stored + report.rejected + report.duplicates + report.conflicts
        assert accounted == report.received
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(EventRow)).scalar_one()
        assert stored == report.stored
        assert all(f.reason for f in report.faults)

    check()
