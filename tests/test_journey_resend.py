"""A failed message is listed with its attempts and can be re-sent on purpose, once, through
the real channel (a webhook receiver here), recorded as a delivery of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from crmflow.cli import app
from store.journeys import content_version, deploy_journey
from tests.channel_servers import RecordingHTTPServer
from tests.test_journey_limits import hook_worker, people, webhook_journey
from tests.test_journey_workflow import journey, start

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


async def test_a_failed_message_is_listed_with_its_attempts_and_re_sent_once(
    ts_env: WorkflowEnvironment,
    engine: Engine,
    cli_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"hook-{uuid.uuid4().hex[:6]}"
    text = webhook_journey(name)
    j = journey(text)
    definition = j.definition()
    with engine.begin() as conn:
        deploy_journey(conn, name, definition, text, "test")
    (cid,) = people(engine, tmp_path, f"S{uuid.uuid4().hex[:4]}-", 1)
    with RecordingHTTPServer([400]) as server:  # the receiver refuses it for good
        monkeypatch.setenv("CRMFLOW_WEBHOOK_URL", server.url)
        monkeypatch.setenv("CRMFLOW_WEBHOOK_SECRET", "whsec-limits")
        async with hook_worker(ts_env, engine, server.url) as queue:
            version = content_version(json.dumps(definition, sort_keys=True))
            result = await (await start(ts_env, queue, j, cid)).result()
        assert result.sent == 0 and version

        listed = runner.invoke(
            app, ["journeys", "deliveries", name, "--status", "failed", "--json"]
        )
        assert listed.exit_code == 0, listed.output
        (failed,) = json.loads(listed.stdout)["deliveries"]
        assert failed["customer_id"] == cid and failed["status"] == "failed"
        (attempt,) = failed["attempts"]
        assert attempt["outcome"] == "permanent" and "HTTP 400" in attempt["response"]
        assert attempt["latency_ms"] >= 0

        # the receiver is fixed: re-send it, once
        sent = await asyncio.to_thread(runner.invoke, app, ["journeys", "resend", failed["key"]])
        assert sent.exit_code == 0, sent.output
        assert f"re-sent {failed['key']} to {cid} via webhook" in " ".join(sent.stdout.split())
        assert len(server.requests) == 2
        body = json.loads(server.requests[-1].body)
        assert f"order {cid} shipped" in json.dumps(body)

        again = await asyncio.to_thread(runner.invoke, app, ["journeys", "resend", failed["key"]])
        assert again.exit_code == 1 and "was re-sent already" in flat(again.output)
        assert len(server.requests) == 2

    listed = runner.invoke(app, ["journeys", "deliveries", name, "--json"])
    rows = json.loads(listed.stdout)["deliveries"]
    assert [r["status"] for r in rows] == ["sent", "failed"]  # newest first
    assert rows[0]["resend_of"] == failed["key"]
    assert rows[0]["attempts"][0]["outcome"] == "sent"
    not_failed = await asyncio.to_thread(runner.invoke, app, ["journeys", "resend", rows[0]["key"]])
    assert not_failed.exit_code == 1 and "only a failed message can be re-sent" in flat(
        not_failed.output
    )
    missing = await asyncio.to_thread(runner.invoke, app, ["journeys", "resend", "journey:nope:1"])
    assert missing.exit_code == 1 and "no delivery with key" in flat(missing.output)
