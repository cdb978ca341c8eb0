"""The hostile corpus (tests/hostile/) against every way in: each file gives a clear error
naming the file (and line) within seconds and with bounded memory, never a traceback.

- YAML bombs (deep nesting, a recursive alias, a billion laughs, a key given twice, a file
  over the size limit) through the CLI of all six YAML languages: the programme, a rule file,
  a journey, the schedules, a project template and the rewards catalogue;
- template bombs in a journey: `journeys validate` refuses each, and rendered at send time
  anyway (a journey deployed before the limits) each fails its own message quickly.
"""

from __future__ import annotations

import shutil
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from crmflow.cli.app import app
from journeys.models import MessageNode
from journeys.template_limits import MAX_TEXT, TemplateLimitError
from journeys.templates import render_message, sample_profile
from rules.source import FILE_LIMITS

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TEAM = EXAMPLES / "rollout" / "team.yaml"
HOSTILE = Path(__file__).with_name("hostile")
YAML_BOMBS = sorted((HOSTILE / "yaml").glob("*.yaml"))
TEMPLATE_BOMBS = sorted((HOSTILE / "templates").glob("*.j2"))
SECONDS = 5.0
MEGABYTES = 64

EXPECTED = {
    "billion-laughs.yaml": "refused: expands to more than 100,000 values",
    "deep-nesting.yaml": "refused: nested more than 50 levels deep",
    "duplicate-keys.yaml": "refused: key 'name' is given twice, on line 2 and line 4",
    "recursive-alias.yaml": "refused: an alias refers to a node that contains it",
    "too-large.yaml": f"refused: {FILE_LIMITS.bytes + 6:,} bytes; the limit is",
}


@pytest.fixture
def bounded() -> Iterator[None]:
    """Each check stays within SECONDS and MEGABYTES (Python allocations, traced)."""
    tracemalloc.start()
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    assert took < SECONDS, f"took {took:.1f} s"
    assert peak < MEGABYTES, f"peaked at {peak:.0f} MB"


def _bombs(tmp_path: Path) -> list[Path]:
    big = tmp_path / "too-large.yaml"
    big.write_text("a: '" + "x" * FILE_LIMITS.bytes + "'\n")  # 6 bytes more than the limit
    return [*YAML_BOMBS, big]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _loaders(bomb: Path, tmp_path: Path) -> dict[str, list[str]]:
    rules_dir = tmp_path / "rules"
    shutil.copytree(EXAMPLES / "rules", rules_dir, dirs_exist_ok=True)
    shutil.copy(bomb, rules_dir / "99-hostile.yaml")
    program = ["--program", str(EXAMPLES / "program.yaml")]
    project = ["--name", "hostile", "--start", "2026-01-05", "--team", str(TEAM)]
    return {
        "programme": ["rules", "validate", str(EXAMPLES / "rules"), "--program", str(bomb)],
        "rule file": ["rules", "validate", str(rules_dir), *program],
        "journey": ["journeys", "validate", str(bomb), *program],
        "schedules": ["schedules", "validate", "--file", str(bomb)],
        "project template": ["project", "create", str(bomb), *project],
        "rewards": ["rewards", "validate", str(bomb), *program],
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_yaml_loader_refuses_each_bomb_with_its_file_and_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRMFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    bomb = next(b for b in _bombs(tmp_path) if b.name == name)
    for loader, args in _loaders(bomb, tmp_path).items():
        tracemalloc.start()
        started = time.monotonic()
        code, output = _invoke(args)
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        flat = " ".join(output.split())  # rich wraps long lines
        assert code != 0, f"{loader}: accepted {name}"
        if loader == "rule file" and name == "too-large.yaml":  # the whole pack is too large
            assert "characters of YAML; at most 1000000" in flat, flat
        else:
            assert EXPECTED[name] in flat, f"{loader}: {flat}"
            named = "99-hostile.yaml" if loader == "rule file" else name
            assert named in flat, f"{loader} does not name the file: {flat}"
        assert "Traceback" not in output, f"{loader}: {output}"
        assert took < SECONDS, f"{loader} took {took:.1f} s on {name}"
        assert peak < MEGABYTES + FILE_LIMITS.bytes * 3 / 1e6, f"{loader}: {peak:.0f} MB"
    assert not (tmp_path / "never.db").exists()


def _journey_with(template_text: str, tmp_path: Path) -> Path:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / "journeys" / "welcome.yaml").read_text())
    data["nodes"]["hello"]["template"] = {"subject": "Hello", "text": template_text}
    path = tmp_path / "hostile-journey.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return path


@pytest.mark.parametrize("bomb", TEMPLATE_BOMBS, ids=lambda p: p.stem)
def test_journeys_validate_refuses_a_template_that_can_run_away(
    bomb: Path, tmp_path: Path, bounded: None
) -> None:
    journey = _journey_with(bomb.read_text(), tmp_path)
    code, output = _invoke(
        ["journeys", "validate", str(journey), "--program", str(EXAMPLES / "program.yaml")]
    )
    flat = " ".join(output.split())
    assert code == 1, output
    assert "node 'hello': the template's text" in flat, flat
    assert "refused" in flat or "does not render" in flat, flat
    assert "Traceback" not in output


@pytest.mark.parametrize("bomb", TEMPLATE_BOMBS, ids=lambda p: p.stem)
def test_a_template_that_slipped_through_fails_its_message_quickly(
    bomb: Path, bounded: None
) -> None:
    """Rendered at send time without validation, as a journey deployed before the limits
    would be: the render raises (the deliver activity turns that into this message's
    failure) instead of eating the worker's memory or time."""
    node = MessageNode.model_validate(
        {"type": "message", "channel": "sms", "template": {"text": bomb.read_text()}, "next": "x"}
    )
    with pytest.raises((TemplateLimitError, RecursionError)):
        render_message(node, sample_profile())


def test_templates_within_the_limits_render_as_before() -> None:
    node = MessageNode.model_validate(
        {
            "type": "message",
            "channel": "sms",
            "template": {
                "text": "{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 3 }} "
                "{{ 2 ** 10 }} {{ '%05d'|format(42) }} {{ '{:>4}'.format(7) }} "
                "{{ customer.name|center(10) }}|{% set ns = namespace(n=0) %}"
                "{% for x in range(100) %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}"
            },
            "next": "x",
        }
    )
    text = render_message(node, sample_profile()).text
    assert text == "012 ababab 1024 00042    7   Li Wei  |4950"


def test_a_message_may_not_pass_the_output_limit() -> None:
    node = MessageNode.model_validate(
        {
            "type": "message",
            "channel": "sms",
            "template": {"text": "{% for i in range(200) %}{{ 'x' * 9000 }}{% endfor %}"},
            "next": "x",
        }
    )
    with pytest.raises(TemplateLimitError, match=f"at most {MAX_TEXT:,}"):
        render_message(node, sample_profile())
