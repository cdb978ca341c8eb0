"""Follow-up tasks and the outbox as services (SQLite and PostgreSQL): filters, paging that
neither skips nor repeats, closing twice, masked addresses; and their CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine, insert
from typer.testing import CliRunner

from crmflow.cli.operations import tasks_app
from crmflow.services import operations as ops
from crmflow.services import outbox
from crmflow.services.errors import Invalid, NotFound
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.models import CustomerRow, FollowUpTaskRow, OutboxMessageRow

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
def rt(engine: Engine, tmp_path: Path) -> Runtime:
    return Runtime(Settings(home=tmp_path / "home"), engine)


def seed_tasks(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(CustomerRow), [{"customer_id": c} for c in ("C1", "C2", "C3")])
        conn.execute(
            insert(FollowUpTaskRow),
            [
                {
                    "customer_id": f"C{1 + i % 3}",
                    "owner": "amy" if i % 2 else "bob",
                    "title": f"call back #{i}",
                    # pairs share a due time: the cursor must break ties by id
                    "due_at": T0 + timedelta(hours=(9 - i) // 2),
                    "status": "done" if i in (3, 4) else "open",
                    "rule": "retention",
                }
                for i in range(10)
            ],
        )


def test_tasks_are_listed_soonest_due_first_and_filtered(engine: Engine, rt: Runtime) -> None:
    seed_tasks(engine)
    page = ops.list_tasks(rt)
    assert len(page.tasks) == 10 and page.next_cursor is None
    keys = [(t.due_at, t.id) for t in page.tasks]
    assert keys == sorted(keys)
    assert all(t.due_at.tzinfo is not None for t in page.tasks)
    open_ = ops.list_tasks(rt, ops.TaskQuery(status="open"))
    assert len(open_.tasks) == 8 and {t.status for t in open_.tasks} == {"open"}
    amy = ops.list_tasks(rt, ops.TaskQuery(owner="amy", status="done"))
    assert [t.title for t in amy.tasks] == ["call back #3"]
    c2 = ops.list_tasks(rt, ops.TaskQuery(customer_id="C2"))
    assert {t.customer_id for t in c2.tasks} == {"C2"} and len(c2.tasks) == 3
    assert ops.list_tasks(rt, ops.TaskQuery(owner="nobody")).tasks == []


def test_task_pages_neither_skip_nor_repeat(engine: Engine, rt: Runtime) -> None:
    seed_tasks(engine)
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        page = ops.list_tasks(rt, ops.TaskQuery(limit=3, cursor=cursor))
        seen += [t.id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [t.id for t in ops.list_tasks(rt).tasks]
    with pytest.raises(Invalid) as bad:
        ops.list_tasks(rt, ops.TaskQuery(cursor="not-a-cursor"))
    assert bad.value.problems[0].field == "cursor"


def test_closing_a_task_twice_is_idempotent(engine: Engine, rt: Runtime) -> None:
    seed_tasks(engine)
    first = ops.list_tasks(rt, ops.TaskQuery(status="open", limit=1)).tasks[0]
    closed = ops.close_task(rt, first.id)
    assert closed.status == "done" and closed.title == first.title
    again = ops.close_task(rt, first.id)
    assert again == closed
    assert first.id not in [t.id for t in ops.list_tasks(rt, ops.TaskQuery(status="open")).tasks]
    with pytest.raises(NotFound):
        ops.close_task(rt, 10**9)


def seed_outbox(engine: Engine) -> None:
    rows = [
        ("email", "C1", "alice@example.com"),
        ("sms", "C2", "+8613800001234"),
        ("email", "C2", "bob@example.org"),
        ("wechat", "C3", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"),
        ("sms", None, "13800001234"),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(OutboxMessageRow),
            [
                {
                    "dedupe_key": f"k{i}",
                    "channel": channel,
                    "customer_id": customer,
                    "address": address,
                    "subject": f"hello {i}",
                    "body_text": "hi",
                    "headers": {
                        "List-Unsubscribe": "<https://x/unsubscribe/secret-token>",
                        "X-Id": str(i),
                    },
                }
                for i, (channel, customer, address) in enumerate(rows)
            ],
        )


def test_outbox_is_newest_first_filtered_and_paged(engine: Engine, rt: Runtime) -> None:
    seed_outbox(engine)
    page = outbox.list_messages(rt, mask=False)
    assert [m.dedupe_key for m in page.messages] == ["k4", "k3", "k2", "k1", "k0"]
    assert page.messages[-1].address == "alice@example.com"
    assert page.next_before_id is None
    sms = outbox.list_messages(rt, outbox.OutboxFilter(channel="sms"), mask=False)
    assert [m.dedupe_key for m in sms.messages] == ["k4", "k1"]
    c2 = outbox.list_messages(rt, outbox.OutboxFilter(customer_id="C2"), mask=False)
    assert [m.dedupe_key for m in c2.messages] == ["k2", "k1"]
    first = outbox.list_messages(rt, outbox.OutboxFilter(limit=2), mask=False)
    assert [m.dedupe_key for m in first.messages] == ["k4", "k3"]
    assert first.next_before_id is not None
    rest = outbox.list_messages(
        rt, outbox.OutboxFilter(limit=10, before_id=first.next_before_id), mask=False
    )
    assert [m.dedupe_key for m in rest.messages] == ["k2", "k1", "k0"]


def test_outbox_addresses_are_masked_on_request(engine: Engine, rt: Runtime) -> None:
    seed_outbox(engine)
    masked = {m.dedupe_key: m for m in outbox.list_messages(rt, mask=True).messages}
    assert masked["k0"].address == "a***@example.com"
    assert masked["k1"].address == "+86*******1234"
    assert masked["k4"].address == "138****1234"
    assert masked["k3"].address == "oU***6o"
    # the unsubscribe link acts for the customer: its token is never shown
    assert masked["k0"].headers == {"List-Unsubscribe": "<https://x/unsubscribe/…>", "X-Id": "0"}
    assert masked["k0"].subject == "hello 0"


def test_mask_address() -> None:
    assert ops.mask_address(None) is None
    assert ops.mask_address("x@y.cn") == "x***@y.cn"
    assert ops.mask_address("+86 138-0000-1234") == "+86*******1234"
    assert ops.mask_address("12345") == "***45"
    assert ops.mask_address("abc") == "***"


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(tasks_app, name="tasks")
    return app


def test_the_cli_lists_and_closes_tasks(engine: Engine, cli_env: Path) -> None:
    seed_tasks(engine)
    runner = CliRunner()
    out = runner.invoke(cli(), ["tasks", "list", "--status", "open", "--owner", "amy", "--json"])
    assert out.exit_code == 0, out.output
    tasks = json.loads(out.output)["tasks"]
    assert len(tasks) == 4 and {t["owner"] for t in tasks} == {"amy"}
    out = runner.invoke(cli(), ["tasks", "close", str(tasks[0]["id"])])
    assert out.exit_code == 0, out.output
    assert f"task {tasks[0]['id']}: done" in out.output
    out = runner.invoke(cli(), ["tasks", "list", "--status", "open"])
    assert out.exit_code == 0 and "call back" in out.output
    out = runner.invoke(cli(), ["tasks", "close", "999999"])
    assert out.exit_code == 1 and "no follow-up task 999999" in out.output
    out = runner.invoke(cli(), ["tasks", "list", "--status", "maybe"])
    assert out.exit_code == 2
