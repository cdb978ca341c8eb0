"""Property-based fuzzing of the whole API from its OpenAPI (schemathesis), with an admin
key, on SQLite and PostgreSQL: whatever a caller sends, no 500 and no answer that breaks
the schema. (503 is allowed: the routes that need Temporal answer it here, where no
Temporal server runs — it is the documented "try again later", not a crash.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from sqlalchemy import Engine

from crmflow.api import create_app
from crmflow.services.runtime import Runtime
from tests.api_helpers import ApiServer, make_settings, serve
from tests.conftest import free_port


@pytest.fixture
def fuzz_server(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ApiServer]:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))
    port = free_port()
    settings = make_settings(
        tmp_path,
        f"http://127.0.0.1:{port}",
        temporal_address=f"127.0.0.1:{free_port()}",  # nothing listens: fast Unavailable
        api_rate_limit="1000000/minute",
    )
    rt = Runtime(settings, engine)
    for base in serve(rt, port):
        yield ApiServer(base, rt)


def no_500(ctx: Any, response: Any, case: Case) -> bool | None:
    assert response.status_code != 500, f"500 for {case.method} {case.path}: {response.text}"
    assert response.status_code < 500 or response.status_code == 503, response.status_code
    return None


def test_no_input_gives_a_500_or_breaks_the_schema(fuzz_server: ApiServer) -> None:
    """Every operation of the OpenAPI, with generated valid and invalid input."""
    docs = fuzz_server.settings.model_copy(update={"api_public_docs": True})
    spec = create_app(Runtime(docs, fuzz_server.runtime.engine)).openapi()
    schema = schemathesis.openapi.from_dict(spec)
    headers = {"Authorization": f"Bearer {fuzz_server.token('admin')}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 10
    for op in operations:

        @given(case=op.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Case) -> None:
            case.call_and_validate(
                base_url=fuzz_server.base,
                headers=headers,
                checks=[response_schema_conformance, content_type_conformance],
                excluded_checks=[not_a_server_error],
                additional_checks=[no_500],
            )

        run()
