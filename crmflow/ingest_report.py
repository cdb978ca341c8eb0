"""What storing rows did: one report, in one vocabulary, for every way rows come in.

A file import of customers or events (`crmflow customers|events import`), a batch of events
or customers sent to the HTTP API, and the customer import of a project's migration check
all answer with an `IngestReport`. Every row sent is counted exactly once:

    received = rejected + stored + updated + duplicates + conflicts

The API's OpenAPI schema is generated from this model: the field descriptions are the
documentation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr

MAX_REPORTED = 20  # rows at fault listed in a file's report (all of them are in its rejects file)

Problem = Literal["rejected", "conflict"]


class RowFault(BaseModel):
    """A row that was not applied: it did not validate, or its event id names another event."""

    at: int = Field(
        description="Where the row is: its line number in a file (from 1), or its position "
        "in a request's list (from 0)"
    )
    problem: Problem = Field(
        description="`rejected`: the row did not validate; `conflict`: its event id is stored "
        "(or came earlier in the same input) with other content"
    )
    event_id: str | None = Field(None, description="The event id of a conflicting event")
    differs: list[str] = Field(
        default_factory=list,
        description="For a conflict: the fields that differ (customer_id, type, occurred_at, "
        "properties)",
    )
    reason: str = Field(description="What was expected, or which fields differ, in words")


class IngestReport(BaseModel):
    """What storing a file or a request of customers or events did."""

    kind: Literal["customers", "events"] = Field(description="What the rows are")
    source: str = Field(description="The file read, or `api` for a request")
    received: int = Field(0, description="Rows read from the file, or items sent in the request")
    rejected: int = Field(
        0,
        description="Rows that did not validate (files only: a request with an invalid item "
        "is refused whole, 422, and nothing of it is stored)",
    )
    stored: int = Field(0, description="New ids written now (customers or events)")
    updated: int = Field(
        0, description="Customers stored before whose content changed now (always 0 for events)"
    )
    duplicates: int = Field(
        0,
        description="Rows with no effect: the id is stored already with the same content, or "
        "the row repeats one earlier in the same input",
    )
    conflicts: int = Field(
        0,
        description="Events whose event_id is stored (or came earlier in the same input) with "
        "other content: not applied, and never counted as duplicates",
    )
    faults: list[RowFault] = Field(
        default_factory=list,
        description="The rows at fault (rejected or conflicting), by position; a file's "
        f"report lists the first {MAX_REPORTED} (its rejects file has every one), a request's "
        "lists all",
    )
    processed: int = Field(0, description="Stored events run through the active rules version")
    rules_fired: int = Field(0, description="Rules that fired on the processed events")
    rules_version: str | None = Field(
        None, description="The rules version that processed them (none when none is deployed)"
    )
    unprocessed: int = Field(
        0,
        description="Stored events waiting for a rules version (none deployed, or the import "
        "asked not to process); `crmflow events process` runs them later",
    )
    seconds: float = Field(0.0, description="Time taken, in seconds")
    rejects_file: str | None = Field(
        None,
        description="Files only: where rejected and conflicting rows were written (JSON "
        "lines with the line, the reason and the row); none when every row was applied",
    )

    _limit: int | None = PrivateAttr(default=MAX_REPORTED)

    def list_all_faults(self) -> IngestReport:
        """List every row at fault (a request's report: it is bounded by the batch limit)."""
        self._limit = None
        return self

    def fault(self, fault: RowFault) -> None:
        """Note a row at fault (rejected or conflicting, already counted by the caller)."""
        if self._limit is None or len(self.faults) < self._limit:
            self.faults.append(fault)

    def as_dict(self) -> dict[str, object]:
        return self.model_dump(mode="json")
