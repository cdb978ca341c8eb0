"""The typed errors every service raises; each face maps them in one place (an exit code, an
HTTP status with a problem document, a flash message)."""

from __future__ import annotations

from dataclasses import dataclass


class ServiceError(Exception):
    """Base of the errors a service raises on purpose; `str(exc)` is for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ServiceError):
    """The thing named does not exist (404)."""


class Refused(ServiceError):
    """The request was understood and is not allowed in this state; `reason` says why (409
    for a state the caller can change, or 422)."""


class Conflict(ServiceError):
    """The request clashes with what is stored, e.g. an event id reused with other content
    (409)."""


@dataclass(frozen=True)
class FieldProblem:
    """One field at fault: `field` is a dotted path (`events.3.occurred_at`), `reason` says
    what was expected."""

    field: str
    reason: str


class Invalid(ServiceError):
    """Input that does not validate (422); `problems` names each field at fault."""

    def __init__(self, problems: list[FieldProblem] | FieldProblem | str, field: str = "") -> None:
        if isinstance(problems, str):
            problems = [FieldProblem(field, problems)]
        elif isinstance(problems, FieldProblem):
            problems = [problems]
        self.problems = problems
        super().__init__(
            "; ".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in problems)
        )


class Unavailable(ServiceError):
    """Something the service needs does not answer now (Temporal, a worker, the database):
    try again later (503)."""


class TooLarge(ServiceError):
    """More in one request than the limits allow (413)."""
