"""The schedules service without a Temporal server: the file (validate, preview, a name it
does not have, a file that does not load), backfill ranges, and Temporal not answering.
What needs a server is in tests/test_schedules.py and tests/test_api_schedules.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from crmflow.services import schedules as service
from crmflow.services.errors import Invalid, NotFound, TooLarge, Unavailable
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from tests.conftest import REPO, free_port

EXAMPLE = REPO / "examples/schedules.yaml"


def test_validate_and_preview_read_the_file() -> None:
    found = service.validate(EXAMPLE)
    names = [s.name for s in found]
    assert "nightly-points-expiry" in names
    expiry = found[names.index("nightly-points-expiry")]
    assert (expiry.automation, expiry.timezone) == ("points_expiry", "Asia/Shanghai")
    p = service.preview(EXAMPLE, "nightly-points-expiry", 3, now=datetime(2026, 11, 20, tzinfo=UTC))
    assert [t.isoformat() for t in p.next] == [
        "2026-11-21T02:00:00+08:00",
        "2026-11-22T02:00:00+08:00",
        "2026-11-23T02:00:00+08:00",
    ]


def test_a_name_the_file_lacks_is_not_found_and_a_bad_file_invalid(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no schedule 'nope' in the file"):
        service.preview(EXAMPLE, "nope")
    with pytest.raises(Invalid) as missing:
        service.validate(tmp_path / "none.yaml")
    assert missing.value.problems[0].field == "file"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "timezone: Mars/Olympus\nschedules:\n  - name: a\n    cron: '0 2 * * *'\n"
        "    automation: nothing\n"
    )
    with pytest.raises(service.SchedulesFileInvalid) as invalid:
        service.validate(bad)
    assert str(invalid.value) == f"{bad}: 2 problem(s); nothing was changed"
    assert [p.field for p in invalid.value.problems] == [f"{bad}:1", f"{bad}:3"]


def test_backfill_ranges_are_checked_before_temporal_is_asked() -> None:
    s = service.one(service.load(EXAMPLE), "nightly-points-expiry")

    def times(a: str, b: str) -> list[datetime]:
        return service.backfill_times(s, service.BackfillRange(from_=a, to=b))[2]

    assert len(times("2026-11-01", "2026-11-07")) == 7
    assert len(times("2026-11-01T03:00", "2026-11-02")) == 1
    with pytest.raises(Invalid, match="is before from"):
        times("2026-11-07", "2026-11-01")
    with pytest.raises(Invalid, match="not a date or a time"):
        times("yesterday", "2026-11-01")
    with pytest.raises(Invalid, match="out of range"):
        times("0001-01-01", "9999-12-31")
    with pytest.raises(TooLarge, match="at most 1,000"):
        times("2020-01-01", "2026-01-01")


def test_a_backfill_reaching_past_now_is_refused() -> None:
    """2026-12-02: a backfill of 2026-12-20 zeroed a lot due on 2026-12-15. Runs are as of
    their own time, so only nights that have passed may be replayed."""
    s = service.one(service.load(EXAMPLE), "nightly-points-expiry")  # 02:00 Asia/Shanghai
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

    def times(a: str, b: str) -> list[datetime]:
        return service.backfill_times(s, service.BackfillRange(from_=a, to=b), now=now)[2]

    assert len(times("2026-11-30", "2026-12-02")) == 3  # 12-02 02:00 Shanghai has passed
    with pytest.raises(Invalid, match="reaches past now") as refused:
        times("2026-12-20", "2026-12-20")
    assert [p.field for p in refused.value.problems] == ["to"]
    assert "the run of 2026-12-20 02:00 (Asia/Shanghai) has not come yet" in str(refused.value)
    with pytest.raises(Invalid, match="the run of 2026-12-03 02:00"):
        times("2026-11-30", "2026-12-03")  # the last night is still to come


async def test_temporal_not_answering_is_unavailable(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")
    rt = Runtime(settings, engine)
    with pytest.raises(Unavailable, match="cannot reach Temporal"):
        await service.pause(rt, EXAMPLE, "nightly-points-expiry")
