"""The HTTP API (a face): `/api/v1/…` over the service layer, the public unsubscribe
pages, and the web console under /console (`crmflow.console`).

Every route under `/api/v1` declares its permission (`crmflow.api.security.permit`); errors
are problem documents (`crmflow.api.problems`); bodies are bounded (`api_max_body_bytes`,
`api_max_batch`); every change is written to the change log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from crmflow import console
from crmflow.api import problems
from crmflow.api.routes import (
    admin,
    customers,
    events,
    health,
    journeys,
    metrics,
    operations,
    overview,
    points,
    projects,
    rewards,
    rules,
    schedules,
    segments,
    unsubscribe,
)
from crmflow.api.security import BodyLimit, ChangeLog, RateLimits
from crmflow.services.errors import ServiceError
from crmflow.services.runtime import Runtime

PREFIX = "/api/v1"
FACTORY = "crmflow.api.app:app_from_settings"  # for uvicorn's worker processes

ROUTERS = (
    health.router,
    metrics.router,
    overview.router,
    events.router,
    customers.router,
    points.router,
    rewards.router,
    segments.router,
    rules.router,
    journeys.router,
    projects.router,
    schedules.router,
    operations.router,
    admin.router,
)


def create_app(rt: Runtime) -> FastAPI:
    """The API over `rt` (its engine on a migrated database)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="crmflow",
        summary="Customers, events, rules, journeys, rollout projects and schedules.",
        version="1",
        lifespan=lifespan,
        responses=problems.PROBLEM_RESPONSES,
        docs_url="/docs" if rt.settings.api_public_docs else None,
        redoc_url="/redoc" if rt.settings.api_public_docs else None,
        openapi_url="/openapi.json" if rt.settings.api_public_docs else None,
    )
    app.state.runtime = rt
    app.state.rate_limits = RateLimits(
        rt.settings.api_rate_limit, rt.settings.api_rate_limit_storage
    )
    app.add_exception_handler(RequestValidationError, problems.invalid_request)
    app.add_exception_handler(ServiceError, problems.service_error)
    app.add_exception_handler(StarletteHTTPException, problems.http_error)
    app.add_exception_handler(Exception, problems.unexpected)
    api = APIRouter(prefix=PREFIX)
    for router in ROUTERS:
        api.include_router(router)
    app.include_router(api)
    app.include_router(health.probes)  # /livez, /readyz: public, a bare yes or no
    app.include_router(unsubscribe.router)
    console.install(app)
    # outermost last: the body limit sees the request before anything reads it
    app.add_middleware(ChangeLog)
    app.add_middleware(BodyLimit, max_bytes=rt.settings.api_max_body_bytes)
    return app


def app_from_settings() -> FastAPI:
    """The API of one server process of its own (`crmflow api --workers N`): settings from
    the environment and crmflow.toml, an engine on the database `crmflow api` migrated."""
    from crmflow.settings import Settings
    from store.db import make_engine

    settings = Settings()
    return create_app(Runtime(settings, make_engine(settings.db_url)))
