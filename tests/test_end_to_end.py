"""End to end on real servers: `crmflow demo`, `crmflow up` and `python worker.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from crmflow.settings import Settings
from crmflow.stack import run_kpi_snapshot
from crmflow.temporal import connect
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.devserver
CRMFLOW = str(Path(sys.executable).parent / "crmflow")


def stack_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMFLOW_")}
    env |= {
        "CRMFLOW_HOME": str(home),
        "CRMFLOW_EMBEDDED_PORT": str(free_port()),
        "CRMFLOW_EMBEDDED_UI_PORT": str(free_port()),
        "CRMFLOW_UP_HTTP_PORT": str(free_port()),
        "CRMFLOW_CONFIG": str(home / "none.toml"),
    }
    return env


def processes_using(path: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if str(path) in line]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "crmflow-home"
    yield home
    assert processes_using(home) == [], "a process of the embedded stack was left running"


def run_demo(env: dict[str, str], *, as_json: bool = True) -> Any:
    done = subprocess.run(
        [CRMFLOW, "demo", *(["--json"] if as_json else [])],
        cwd=REPO,
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)) if as_json else done.stdout


def test_demo_runs_twice_and_leaves_nothing_running(home: Path) -> None:
    env = stack_env(home)
    data = run_demo(env)
    customers, events = data["imports"]
    assert customers["stored"] == customers["received"] and customers["rejected"] == 0
    assert events["stored"] == events["received"] and events["rejected"] == 0
    assert events["processed"] == events["received"] and events["rules_fired"] > 0
    joined, signed_up = data["sign_ups"]
    assert joined["stored"] == joined["received"] == 3
    assert signed_up["stored"] == signed_up["processed"] == 3 and signed_up["rules_fired"] == 3
    assert data["kpi"]["points_issued"] > 0 and data["kpi"]["tiers"]
    assert data["kpi"]["customers"] == customers["received"] + joined["received"]
    assert data["kpi"]["events"] == events["received"] + signed_up["received"]
    assert (home / "crmflow.db").exists() and (home / "temporal.db").exists()
    assert processes_using(home) == []

    # the new sign-ups' welcome e-mails went out during the run, to the outbox; those quiet
    # hours hold are said to wait, and until when
    messages = data["messages"]
    sent = [m for m in messages["shown"] if m["this_run"]]
    assert messages["sent_this_run"] >= len(sent) >= 1
    assert messages["by_channel"].get("email", 0) >= 1
    for m in sent:
        assert m["channel"] == "email" and m["via"] == "outbox"
        assert m["subject"] and m["lines"] and "***@example.com" in m["to"]
    welcomed = {m["customer_id"] for m in sent}
    waiting = {w["customer_id"]: w for w in messages["waiting"]}
    assert welcomed | set(waiting) == {"C0901", "C0902", "C0903"}
    assert not welcomed & set(waiting)
    for w in waiting.values():
        since = datetime.fromisoformat(messages["since"])
        assert "quiet hours" in w["reason"] and datetime.fromisoformat(w["until"]) > since

    # a second run, as text: the section shows the messages sent on the first run
    text = run_demo(env, as_json=False)
    assert "Messages sent during this run:" in text
    assert "Subject: Welcome to Acme Rewards" in text or "Subject: 欢迎加入" in text

    data2 = run_demo(env)
    assert [r["stored"] for r in data2["imports"]] == [0, 0]
    assert [r["duplicates"] for r in data2["imports"]] == [r["received"] for r in data["imports"]]
    assert data2["imports"][1]["processed"] == 0
    assert [r["stored"] for r in data2["sign_ups"]] == [0, 0]
    assert data2["sign_ups"][1]["duplicates"] == 3 and data2["sign_ups"][1]["conflicts"] == 0
    assert data2["kpi"]["points_outstanding"] == data["kpi"]["points_outstanding"]
    assert data2["kpi"]["events"] == data["kpi"]["events"]
    assert data2["kpi"]["customers"] == data["kpi"]["customers"]
    assert data2["workflow_id"] != data["workflow_id"]
    # nothing is sent again; only a message quiet hours held may have gone out since
    again = data2["messages"]
    assert {m["customer_id"] for m in again["shown"] if m["this_run"]} <= set(waiting)
    assert {m["customer_id"] for m in again["shown"]} >= welcomed


async def test_up_serves_until_interrupted_and_keeps_history(home: Path) -> None:
    env = stack_env(home)
    settings = Settings(
        home=home,
        embedded_port=int(env["CRMFLOW_EMBEDDED_PORT"]),
        embedded_ui_port=int(env["CRMFLOW_EMBEDDED_UI_PORT"]),
    )

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [CRMFLOW, "up"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        said = []
        for line in proc.stdout:
            said.append(line)
            if "Ctrl-C to stop" in line:
                console = f"http://127.0.0.1:{env['CRMFLOW_UP_HTTP_PORT']}/console"
                assert any(console in s for s in said), said  # printed beside the Web UI
                login = httpx.get(f"{console}/login", timeout=30)
                assert login.status_code == 200 and "Sign in to crmflow" in login.text
                return proc
            assert time.monotonic() < deadline
        raise AssertionError(
            f"crmflow up did not start: {proc.stderr.read() if proc.stderr else ''}"
        )

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0

    proc = start()
    try:
        client = await connect(settings)
        wf_id, snap = await run_kpi_snapshot(client, settings, workflow_id=f"kept-{uuid.uuid4()}")
        assert snap.customers == 0
    finally:
        stop(proc)
    assert processes_using(home) == []

    # the dev server keeps its state in home/temporal.db: the workflow is still there
    proc = start()
    try:
        client = await connect(settings)
        described = await client.get_workflow_handle(wf_id).describe()
        assert described.status is not None and described.status.name == "COMPLETED"
    finally:
        stop(proc)


async def test_worker_py_serves_a_cluster(
    dev_env: WorkflowEnvironment, engine: Engine, db_url: str, tmp_path: Path
) -> None:
    target = dev_env.client.service_client.config.target_host
    queue = f"ops-{uuid.uuid4()}"
    env = stack_env(tmp_path) | {
        "CRMFLOW_TEMPORAL_ADDRESS": target,
        "CRMFLOW_TASK_QUEUE": queue,
        "CRMFLOW_DATABASE_URL": db_url,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "worker.py"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            assert "worker polling" in w.stdout.readline()
        settings = Settings(task_queue=queue, temporal_address=target)
        results = [
            await run_kpi_snapshot(dev_env.client, settings, workflow_id=f"w-{uuid.uuid4()}")
            for _ in range(4)
        ]
        assert all(snap.customers == 0 for _, snap in results)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=60) == 0


def test_up_with_its_port_taken_stops_with_a_message_and_attaches_to_nothing(home: Path) -> None:
    """`crmflow up` does not attach to whatever server holds its port (on the shared default
    7233 that would be someone else's Temporal)."""
    import socket

    env = stack_env(home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["CRMFLOW_EMBEDDED_PORT"])))
        taken.listen()
        started = time.monotonic()
        done = subprocess.run(
            [CRMFLOW, "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert time.monotonic() - started < 30  # it stops before starting anything
    port = env["CRMFLOW_EMBEDDED_PORT"]
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr
    assert "CRMFLOW_EMBEDDED_PORT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Temporal dev server on" not in done.stdout


def test_up_with_its_http_port_taken_stops_before_starting_anything(home: Path) -> None:
    import socket

    env = stack_env(home)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["CRMFLOW_UP_HTTP_PORT"])))
        taken.listen()
        done = subprocess.run(
            [CRMFLOW, "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert f"port {env['CRMFLOW_UP_HTTP_PORT']} on 127.0.0.1 is taken" in done.stderr
    assert "CRMFLOW_UP_HTTP_PORT" in done.stderr and "Traceback" not in done.stderr
    assert "Temporal dev server on" not in done.stdout


async def test_a_missing_tls_file_names_its_setting(tmp_path: Path) -> None:
    from crmflow.temporal import TemporalSetupError

    missing = tmp_path / "client.pem"
    settings = Settings(
        home=tmp_path,
        temporal_address=f"127.0.0.1:{free_port()}",
        temporal_tls_client_cert=missing,
        temporal_tls_client_key=missing,
    )
    with pytest.raises(TemporalSetupError) as refused:
        await connect(settings)
    assert str(refused.value).startswith(
        f"CRMFLOW_TEMPORAL_TLS_CLIENT_CERT names '{missing}', which cannot be read"
    )
    only_cert = tmp_path / "cert.pem"
    only_cert.write_text("not really a certificate")
    settings = Settings(
        home=tmp_path, temporal_address="127.0.0.1:1", temporal_tls_client_cert=only_cert
    )
    with pytest.raises(TemporalSetupError, match="set CRMFLOW_TEMPORAL_TLS_CLIENT_KEY too"):
        await connect(settings)
