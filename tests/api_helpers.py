"""The API served by a real uvicorn server for tests, and keys per role.

from tests.api_helpers import ApiServer, api_server  # noqa: F401  (the fixture)

def test_x(api_server: ApiServer) -> None:
    with api_server.client("marketer") as http:       # a fresh key of that role
        r = http.get("/api/v1/customers")
    with api_server.client("admin", person="Peter Wang") as http: ...
    with api_server.anonymous() as http: ...           # no token
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine

from crmflow.api import create_app
from crmflow.services.keys import NewKey, create_key
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from crmflow.settings import Settings
from tests.conftest import free_port

UNSUBSCRIBE_SECRET = "test-unsubscribe-secret"


@dataclass
class ApiServer:
    base: str
    runtime: Runtime
    _tokens: dict[tuple[str, str | None], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def token(self, role: Role | str, person: str | None = None) -> str:
        """A key of `role` (made once per role and person for this server)."""
        k = (Role(role).value, person)
        with self._lock:
            if k not in self._tokens:
                name = f"test-{k[0]}-{len(self._tokens)}"
                made = create_key(self.runtime, NewKey(name=name, role=Role(role), person=person))
                self._tokens[k] = made.token
            return self._tokens[k]

    def client(self, role: Role | str, person: str | None = None, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.base,
            timeout=60,
            headers={"Authorization": f"Bearer {self.token(role, person)}"},
            **kw,
        )

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)


def serve(runtime: Runtime, port: int | None = None) -> Iterator[str]:
    """Serve `runtime`'s API on `port` (default: a free one) in a background thread; yields
    the base URL."""
    port = port or free_port()
    config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)


def make_settings(tmp_path: Path, base: str = "http://127.0.0.1:8080", **kw: Any) -> Settings:
    return Settings(
        home=tmp_path / "home",
        public_base_url=base,
        unsubscribe_secret=UNSUBSCRIBE_SECRET,
        **kw,
    )


@pytest.fixture
def api_server(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ApiServer]:
    """crmflow's API on the test database (SQLite and PostgreSQL), served by uvicorn."""
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    runtime = Runtime(make_settings(tmp_path, f"http://127.0.0.1:{port}"), engine)
    for base in serve(runtime, port):
        yield ApiServer(base, runtime)
