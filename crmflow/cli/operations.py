"""`crmflow tasks …` and `crmflow outbox …`: the follow-up tasks rules create for sales
owners, and the messages in the outbox. A thin face over `crmflow.services.operations`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table

from crmflow.cli import common
from crmflow.domain import describe_errors
from crmflow.services import operations as service
from crmflow.services.runtime import Runtime

tasks_app = typer.Typer(help="Follow-up tasks: list, close.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Q = TypeVar("Q", bound=BaseModel)


def _query(model: type[Q], **options: Any) -> Q:
    """The service's query from the options; a value it refuses is an error, exit 1."""
    try:
        return model(**options)
    except ValidationError as exc:
        common.fail(f"bad option: {describe_errors(exc)}")


def _runtime(*, write: bool = False) -> AbstractContextManager[Runtime]:
    """A runtime on the configured database (it must exist unless the command writes)."""
    return common.runtime(write=write)


@tasks_app.command("list")
def list_tasks(
    status: Annotated[
        service.TaskStatus | None, typer.Option(help="open or done (default: both)")
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner's tasks")] = None,
    customer: Annotated[str | None, typer.Option(help="Only this customer's tasks")] = None,
    limit: Annotated[int, typer.Option(min=1, max=service.MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Where the previous page ended")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow-up tasks, soonest due first."""
    query = _query(
        service.TaskQuery,
        status=status,
        owner=owner,
        customer_id=customer,
        limit=limit,
        cursor=cursor,
    )
    with _runtime() as rt:
        page = service.list_tasks(rt, query)
    if as_json:
        common.emit_json(page.model_dump(mode="json"))
        return
    table = Table("id", "due", "status", "owner", "customer", "title", "rule")
    for t in page.tasks:
        table.add_row(
            str(t.id),
            f"{t.due_at:%Y-%m-%d %H:%M}",
            t.status,
            t.owner or "-",
            t.customer_id,
            t.title,
            t.rule or "-",
        )
    common.console.print(table)
    if page.next_cursor:
        common.console.print(f"more: --cursor {page.next_cursor}", highlight=False)


@tasks_app.command("close")
def close_task(
    task_id: Annotated[int, typer.Argument(metavar="ID", help="The task's id", min=1)],
    as_json: JsonFlag = False,
) -> None:
    """Mark a follow-up task done (closing a done task again changes nothing)."""
    with _runtime(write=True) as rt:
        task = service.close_task(rt, task_id)
    if as_json:
        common.emit_json(task.model_dump(mode="json"))
        return
    common.console.print(f"task {task.id}: {task.status} ({task.title})", highlight=False)
