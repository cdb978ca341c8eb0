"""`/api/v1/metrics`: this API process's Prometheus metrics (events ingested, rules fired,
…; `crmflow.metrics`), for a key with `metrics.read` — Prometheus sends it as a bearer
token (`authorization: {credentials_file: …}` in its scrape config)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from crmflow.api.security import permit
from crmflow.metrics import exposition
from crmflow.services.keys import Principal

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(who: Annotated[Principal, permit("metrics.read")]) -> Response:
    """The metrics in the Prometheus text exposition format (summed over the server's
    processes when `PROMETHEUS_MULTIPROC_DIR` is set)."""
    body, content_type = await run_in_threadpool(exposition)
    return Response(body, media_type=content_type)
