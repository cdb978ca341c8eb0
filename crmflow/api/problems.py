"""Errors as `application/problem+json` (RFC 9457), in one place for the whole API.

A service's typed error maps to one status; a request that does not validate gets 422 with
every field at fault (`errors`: `field` as a dotted path, `reason`). Nothing a caller sends
gives a 500: an unexpected exception is logged and answered with a problem that names no
internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmflow.services.errors import (
    Conflict,
    Invalid,
    NotFound,
    Refused,
    ServiceError,
    TooLarge,
    Unavailable,
)

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"

STATUS: dict[type[ServiceError], tuple[int, str]] = {
    NotFound: (404, "Not found"),
    Refused: (409, "Refused"),
    Conflict: (409, "Conflict"),
    Invalid: (422, "Invalid input"),
    TooLarge: (413, "Too large"),
    Unavailable: (503, "Unavailable"),
}


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field at fault (`body.events.3.type`)")
    reason: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, errors=errors or [])
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, media_type=PROBLEM, headers=headers
    )


# the problem responses every route may give, for the OpenAPI
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM: {}}, "description": text}
    for code, text in {
        401: "No token, or an unknown, revoked or expired one",
        403: "The key's role may not do this",
        413: "The request is larger than the limits allow",
        422: "A field does not validate",
        429: "Too many requests for this key: wait `Retry-After` seconds",
    }.items()
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """More problem responses a route may give (404, 409, 503 …), for its OpenAPI."""
    text = {
        404: "Not found",
        409: "Refused in this state, or a conflict with what is stored",
        503: "Temporal, a worker or the database does not answer: try again later",
    }
    return {
        c: {"model": Problem, "content": {PROBLEM: {}}, "description": text.get(c, "")}
        for c in codes
    }


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _reason(err: dict[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    return str(err.get("msg", "")).removeprefix("Value error, ")


def validation_errors(errors: list[dict[str, Any]]) -> list[FieldError]:
    return [FieldError(field=_where(e.get("loc", ())), reason=_reason(e)) for e in errors]


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(list(exc.errors()))
    detail = "; ".join(f"{e.field}: {e.reason}" if e.field else e.reason for e in errors)
    return problem(422, "Invalid input", detail or "the request does not validate", errors)


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status, title = next((v for k, v in STATUS.items() if isinstance(exc, k)), (400, "Bad request"))
    errors = (
        [FieldError(field=p.field, reason=p.reason) for p in exc.problems]
        if isinstance(exc, Invalid)
        else []
    )
    headers = {"Retry-After": "5"} if status == 503 else None
    return problem(status, title, str(exc), errors, headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}
    headers = dict(exc.headers or {})
    return problem(
        exc.status_code,
        titles.get(exc.status_code, "Error"),
        str(exc.detail),
        headers=headers or None,
    )


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "an unexpected error; it was logged")
