"""Serving the API (and console) inside another program's event loop: `crmflow up`."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from contextlib import contextmanager

import uvicorn

from crmflow.api.app import create_app
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from store.db import make_engine


class _QuietServer(uvicorn.Server):
    """uvicorn inside `crmflow up`: Ctrl-C is the stack's to handle, not the server's."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_until(settings: Settings, stop: asyncio.Event) -> None:
    """The API and console on 127.0.0.1:`up_http_port` until `stop` is set."""
    engine = make_engine(settings.db_url)
    app = create_app(Runtime(settings, engine))
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.up_http_port, log_level="warning")
    server = _QuietServer(config)
    serving = asyncio.create_task(server.serve())
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await serving
        engine.dispose()
