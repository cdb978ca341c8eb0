"""The projects benchmark's baseline: a bare workflow answering a trivial query and update.

In a module of its own (not the benchmark's `__main__`): the workflow sandbox refuses
workflows defined in `__main__`.
"""

from __future__ import annotations

from temporalio import workflow


@workflow.defn
class BareWorkflow:
    """Counts updates; answers a query with the count."""

    def __init__(self) -> None:
        self.count = 0
        self.stop = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.stop)
        return self.count

    @workflow.query
    def status(self) -> int:
        return self.count

    @workflow.update
    def check(self, item: str) -> str:
        self.count += 1
        return item

    @check.validator
    def _check_ok(self, item: str) -> None:
        if not item:
            raise ValueError("an item is needed")

    @workflow.signal
    def finish(self) -> None:
        self.stop = True
