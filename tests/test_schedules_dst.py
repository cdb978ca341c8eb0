"""Schedules that tell the truth about daylight saving: `validate` warns of cron times that
do not exist or happen twice in the schedule's zone and says what the server does; the
server does exactly that (its own matching times, on the dev server); and `preview` shows
the server's times — not croniter's, which disagree on the day a time does not exist — and
falls back to croniter with a note when the server does not answer or has no such schedule.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from automations.cron import clock_shifts, dst_warnings
from crmflow import schedules as sched
from crmflow.cli import app
from crmflow.contracts.automations import schedule_id
from tests.conftest import free_port

NY = ZoneInfo("America/New_York")


def test_the_clock_shifts_of_a_zone() -> None:
    (spring, autumn) = clock_shifts("America/New_York", date(2027, 1, 1), date(2027, 12, 31))
    assert (spring.day, spring.kind, f"{spring.start:%H:%M}", f"{spring.end:%H:%M}") == (
        date(2027, 3, 14),
        "gap",
        "02:00",
        "03:00",
    )
    assert (autumn.day, autumn.kind, f"{autumn.start:%H:%M}", f"{autumn.end:%H:%M}") == (
        date(2027, 11, 7),
        "fold",
        "01:00",
        "02:00",
    )
    # half an hour on Lord Howe Island; none in Shanghai
    (lh, _) = clock_shifts("Australia/Lord_Howe", date(2027, 1, 1), date(2027, 12, 31))
    assert (lh.kind, f"{lh.start:%H:%M}", f"{lh.end:%H:%M}") == ("fold", "01:30", "02:00")
    assert clock_shifts("Asia/Shanghai", date(2027, 1, 1), date(2027, 12, 31)) == []


def test_cron_times_that_dst_skips_or_repeats() -> None:
    start = date(2026, 12, 3)
    missing = dst_warnings("30 2 * * *", "America/New_York", start)
    assert [(w.kind, w.day, f"{w.at:%H:%M}") for w in missing] == [
        ("missing", date(2027, 3, 14), "02:30"),
        ("missing", date(2028, 3, 12), "02:30"),
    ]
    assert "02:30 does not exist on 2027-03-14" in missing[0].message("30 2 * * *", "x")
    assert "does not run it that day" in missing[0].message("30 2 * * *", "x")
    twice = dst_warnings("30 1 * * *", "America/New_York", start)
    assert [(w.kind, w.day) for w in twice] == [
        ("repeated", date(2027, 11, 7)),
        ("repeated", date(2028, 11, 5)),
    ]
    assert "runs it twice that day" in twice[0].message("30 1 * * *", "x")
    # hourly: one missing and one repeated run a year; Sundays only: the change is a Sunday
    hourly = dst_warnings("15 * * * *", "Europe/London", start)
    assert sorted({(w.kind, f"{w.at:%H:%M}") for w in hourly}) == [
        ("missing", "01:15"),
        ("repeated", "01:15"),
    ]
    assert dst_warnings("30 2 * * 1", "America/New_York", start) == []
    assert dst_warnings("0 2 * * *", "Asia/Shanghai", start) == []
    assert dst_warnings("0 12 * * *", "America/New_York", start) == []


def write(path: Path, tag: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "timezone": "America/New_York",
                "schedules": [
                    {"name": f"{tag}-gap", "cron": "30 2 * * *", "automation": "date_events"},
                    {"name": f"{tag}-fold", "cron": "30 1 * * *", "automation": "tag_expiry"},
                    {"name": f"{tag}-noon", "cron": "0 12 * * *", "automation": "tag_expiry"},
                ],
            }
        )
    )
    return path


def test_validate_warns_and_says_what_the_server_does(tmp_path: Path) -> None:
    path = write(tmp_path / "schedules.yaml", "v")
    runner = CliRunner()
    out = runner.invoke(app, ["schedules", "validate", "-f", str(path)])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "3 schedule(s), all valid; 2 warning(s)" in text
    assert "02:30 does not exist on" in text and "does not run it that day" in text
    assert "the next run covers the missed day" in text  # date events catch up
    assert "01:30 happens twice on" in text and "runs it twice that day" in text
    out = runner.invoke(app, ["schedules", "validate", "-f", str(path), "--json"])
    found = {s["name"]: s["warnings"] for s in json.loads(out.output)["schedules"]}
    assert len(found["v-gap"]) == 1 and len(found["v-fold"]) == 1 and found["v-noon"] == []
    # the examples' zone has no daylight saving
    example = runner.invoke(app, ["schedules", "validate", "-f", "examples/schedules.yaml"])
    assert example.exit_code == 0 and "warning" not in example.output


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.mark.devserver
async def test_the_server_skips_and_repeats_and_preview_shows_its_times(
    dev_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = dev_env.client
    tag = f"d{uuid.uuid4().hex[:6]}"
    path = write(tmp_path / "schedules.yaml", tag)
    f = str(path)
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", client.service_client.config.target_host)
    monkeypatch.setenv("CRMFLOW_TASK_QUEUE", "dst")
    try:
        # not applied yet: croniter's times, saying so
        out = await asyncio.to_thread(
            cli, "schedules", "preview", f"{tag}-gap", "-f", f, "--from", "2027-03-12", "--json"
        )
        assert out.exit_code == 0, out.output
        p = json.loads(out.output)
        assert p["source"] == "croniter" and "not on the Temporal server" in p["note"]
        assert "2027-03-14T03:00:00-04:00" in p["next"]  # croniter's answer to a missing time

        out = await asyncio.to_thread(cli, "schedules", "apply", "-f", f)
        assert out.exit_code == 0, out.output
        # what the server matches: no 02:30 on 14 March, two 01:30s on 7 November
        gap = await sched.matching_times(
            client,
            f"{tag}-gap",
            datetime(2027, 3, 12, tzinfo=UTC),
            datetime(2027, 3, 17, tzinfo=UTC),
        )
        assert [t.astimezone(NY).strftime("%m-%d %H:%M") for t in gap] == [
            "03-12 02:30",
            "03-13 02:30",
            "03-15 02:30",
            "03-16 02:30",
        ]
        fold = await sched.matching_times(
            client,
            f"{tag}-fold",
            datetime(2027, 11, 6, tzinfo=UTC),
            datetime(2027, 11, 9, tzinfo=UTC),
        )
        assert [t.isoformat() for t in fold] == [
            "2027-11-06T05:30:00+00:00",
            "2027-11-07T05:30:00+00:00",  # 01:30 EDT
            "2027-11-07T06:30:00+00:00",  # 01:30 EST, an hour later
            "2027-11-08T06:30:00+00:00",
        ]

        # preview shows the server's times, and where croniter disagrees
        out = await asyncio.to_thread(
            cli,
            "schedules",
            "preview",
            f"{tag}-gap",
            "-f",
            f,
            "--from",
            "2027-03-12",
            "--next",
            "4",
            "--json",
        )
        assert out.exit_code == 0, out.output
        p = json.loads(out.output)
        assert p["source"] == "server" and p["note"] is None
        assert p["next"] == [
            "2027-03-12T02:30:00-05:00",
            "2027-03-13T02:30:00-05:00",
            "2027-03-15T02:30:00-04:00",
            "2027-03-16T02:30:00-04:00",
        ]
        assert p["differs"] == ["croniter says 2027-03-14 03:00 EDT; the server does not run then"]
        out = await asyncio.to_thread(
            cli, "schedules", "preview", f"{tag}-gap", "-f", f, "--from", "2027-03-12"
        )
        assert "from the Temporal server" in out.output
        assert "differs croniter says 2027-03-14 03:00 EDT" in " ".join(out.output.split())

        # list shows the server's next runs too
        await asyncio.to_thread(cli, "schedules", "pause", f"{tag}-noon", "-f", f)
        out = await asyncio.to_thread(cli, "schedules", "preview", f"{tag}-noon", "-f", f, "--json")
        assert "paused on the server" in json.loads(out.output)["note"]
    finally:
        for sid in await sched.crmflow_schedule_ids(client):
            if sid.startswith(schedule_id(tag)):
                await client.get_schedule_handle(sid).delete()


def test_preview_without_the_server_says_the_times_are_croniters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "schedules.yaml", "n")
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CRMFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    out = cli("schedules", "preview", "n-gap", "-f", str(path), "--next", "2", "--json")
    assert out.exit_code == 0, out.output
    p = json.loads(out.output)
    assert p["source"] == "croniter" and len(p["next"]) == 2
    assert p["note"].startswith("Temporal did not answer (cannot reach Temporal")
    assert "daylight-saving" in p["note"]


def test_list_without_the_server_shows_croniters_next_runs(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(cli_env / "schedules.yaml", "o")
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    out = cli("schedules", "list", "-f", str(path), "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [r["name"] for r in rows] == ["o-gap", "o-fold", "o-noon"]
    assert all(r["server"] is None and len(r["next_croniter"]) == 1 for r in rows)
    assert rows[0]["note"].startswith("Temporal did not answer")
    out = cli("schedules", "list", "-f", str(path))
    assert out.exit_code == 0, out.output
    assert "next runs are croniter's, not the server's" in " ".join(out.output.split())


def test_a_workflow_named_by_the_cli_links_to_the_web_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crmflow.cli.schedules import ui_link

    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.delenv("CRMFLOW_TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("CRMFLOW_EMBEDDED_UI_PORT", "18233")
    assert ui_link("automation-nightly:2026-12-07T02:00:00Z") == (
        "http://127.0.0.1:18233/namespaces/default/workflows/"
        "automation-nightly%3A2026-12-07T02%3A00%3A00Z"
    )
    monkeypatch.setenv("CRMFLOW_TEMPORAL_ADDRESS", "temporal.internal:7233")
    assert ui_link("automation-x") is None  # a cluster's UI address is not known here
