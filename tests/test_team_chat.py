"""Staff notices to team chats (WeCom and DingTalk group robots, Slack) through
`activities.staff_notices`, each against a local stand-in that checks the request as the
provider documents it (tests/chat_servers.py), on SQLite and PostgreSQL: the JSON each
expects, DingTalk's signature, errcodes and statuses taken as permanent or transient, one
post per notice however many people it goes to and however often the activity is retried,
notices cut to the robot's limit, and the robots' URLs and secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from activities.channels import Channel
from activities.staff_notices import StaffNotices
from activities.team_chat import (
    DINGTALK_ROBOT,
    SLACK,
    WECOM_ROBOT,
    DingtalkRobot,
    dingtalk_sign,
    team_chats,
)
from crmflow.cli import app as cli_app
from crmflow.settings import Settings
from store.models import OutboxMessageRow
from tests.chat_servers import (
    DingtalkRobotServer,
    SlackWebhookServer,
    WecomRobotServer,
    dingtalk_expected_sign,
)

KEY = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
TOKEN = "c0ffee0123456789abcdef"
SECRET = "SECd2f4a6e8b0c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f3a5b7c9d1e3f"


@pytest.fixture(autouse=True)
def no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_CONFIG", str(tmp_path / "none.toml"))


def settings(**kw: Any) -> Settings:
    return Settings(channel_retry_attempts=3, channel_retry_base_seconds=0.01, **kw)


def notices(engine: Engine, **kw: Any) -> StaffNotices:
    chats: dict[str, Channel] = dict(team_chats(settings(**kw)))
    return StaffNotices(engine, chats)


def outbox(engine: Engine) -> list[Any]:
    t = OutboxMessageRow.__table__
    with engine.connect() as conn:
        return list(conn.execute(select(t).order_by(t.c.id)).all())


def counted(channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "crmflow_staff_notices_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


async def test_wecom_robot_gets_a_text_message(engine: Engine) -> None:
    with WecomRobotServer(KEY) as wecom:
        staff = notices(engine, wecom_robot_url=wecom.url)
        before = counted(WECOM_ROBOT, "sent")
        await staff.send(
            "lead_sla:nightly:2026-11-20:li.wei@example.com",
            "li.wei@example.com",
            "3 lead(s) of zhang went back to the shared pool",
            "These leads had no follow-up within 24 hours:\n\nC0001\nC0002\nC0003",
        )
    assert len(wecom.requests) == 1
    req = wecom.requests[0]
    assert req.headers["content-type"] == "application/json"
    assert wecom.delivered == [
        {
            "msgtype": "text",
            "text": {
                "content": "3 lead(s) of zhang went back to the shared pool\n\n"
                "These leads had no follow-up within 24 hours:\n\nC0001\nC0002\nC0003"
            },
        }
    ]
    rows = outbox(engine)
    assert [r.channel for r in rows] == [WECOM_ROBOT, "outbox"]
    post, notice = rows
    assert post.address is None  # the robot's URL is a secret: never stored
    assert KEY not in json.dumps(post.headers) + json.dumps(notice.headers)
    assert notice.headers[f"X-Crmflow-Chat-{WECOM_ROBOT}"] == "sent"
    assert counted(WECOM_ROBOT, "sent") == before + 1


async def test_a_notice_to_several_people_is_posted_once_and_retries_post_nothing(
    engine: Engine,
) -> None:
    with WecomRobotServer(KEY) as wecom, SlackWebhookServer() as slack:
        staff = notices(engine, wecom_robot_url=wecom.url, slack_webhook_url=slack.url)
        for to in ("owner@example.com", "pm@example.com", "owner@example.com"):
            await staff.send(
                f"project:acme:go-live:overdue:1:{to}",
                to,
                "Go-live gate is 3 working days late",
                "Sign-off of gate go-live was due on 2026-11-17.",
            )
        # the activity retried after the ledger rows were written: nothing is posted again
        fresh = notices(engine, wecom_robot_url=wecom.url, slack_webhook_url=slack.url)
        await fresh.send(
            "project:acme:go-live:overdue:1:pm@example.com",
            "pm@example.com",
            "Go-live gate is 3 working days late",
            "Sign-off of gate go-live was due on 2026-11-17.",
        )
    assert len(wecom.delivered) == 1
    assert len(slack.delivered) == 1
    channels = sorted(r.channel for r in outbox(engine))
    assert channels == ["outbox", "outbox", SLACK, WECOM_ROBOT]


async def test_dingtalk_signed_as_documented(engine: Engine) -> None:
    with DingtalkRobotServer(TOKEN, SECRET) as ding:
        staff = notices(engine, dingtalk_robot_url=ding.url, dingtalk_robot_secret=SECRET)
        await staff.send(
            "kpi_digest:weekly:2026-11-23:a@example.com",
            "a@example.com",
            "KPI digest 2026-11-23 (7 days)",
            "Repurchase rate 12.5% (+1.2 pp)",
        )
    assert ding.delivered == [
        {
            "msgtype": "text",
            "text": {
                "content": "KPI digest 2026-11-23 (7 days)\n\nRepurchase rate 12.5% (+1.2 pp)"
            },
        }
    ]
    req = ding.requests[0]
    # the sign is URL-encoded in the query: base64's + / = never appear raw
    raw = dict(part.split("=", 1) for part in req.raw_query.split("&"))
    assert set(raw) == {"access_token", "timestamp", "sign"}
    assert not set("+/=") & set(raw["sign"])
    assert req.query["sign"] == dingtalk_expected_sign(req.query["timestamp"], SECRET)


def test_dingtalk_signature_against_the_documented_recipe() -> None:
    # DingTalk's sample: timestamp 1577262236757 and a secret give this base64 digest
    assert dingtalk_sign(1577262236757, "SEC000") == dingtalk_expected_sign(
        "1577262236757", "SEC000"
    )
    assert len(dingtalk_sign(1577262236757, "SEC000")) == 44  # 32 bytes of HMAC-SHA256


async def test_dingtalk_wrong_secret_is_refused_for_good_and_noted(engine: Engine) -> None:
    with DingtalkRobotServer(TOKEN, SECRET) as ding:
        staff = notices(engine, dingtalk_robot_url=ding.url, dingtalk_robot_secret="SECwrong")
        before = counted(DINGTALK_ROBOT, "failed")
        await staff.send("k1", None, "Reminder", "Checklist item due tomorrow")
    assert len(ding.requests) == 1  # permanent: not retried
    assert ding.delivered == []
    [notice] = outbox(engine)  # the notice itself is in the outbox, no chat ledger row
    note = notice.headers[f"X-Crmflow-Chat-{DINGTALK_ROBOT}"]
    assert note.startswith("refused: ") and "errcode 310000" in note
    assert "SECwrong" not in note and TOKEN not in note
    assert counted(DINGTALK_ROBOT, "failed") == before + 1


async def test_throttling_is_retried_and_a_busy_robot_does_not_fail_the_notice(
    engine: Engine,
) -> None:
    with WecomRobotServer(KEY) as wecom:
        wecom.script = [
            (200, json.dumps({"errcode": 45009, "errmsg": "api freq out of limit"}), {})
        ]
        staff = notices(engine, wecom_robot_url=wecom.url)
        await staff.send("n1", None, "Escalation", "Stage testing has not started")
        assert len(wecom.requests) == 2 and len(wecom.delivered) == 1
        wecom.script = [(200, json.dumps({"errcode": -1, "errmsg": "system busy"}), {})] * 3
        await staff.send("n2", None, "Escalation", "Stage training has not started")
        assert len(wecom.requests) == 5 and len(wecom.delivered) == 1
    notes = {r.dedupe_key: r.headers.get(f"X-Crmflow-Chat-{WECOM_ROBOT}") for r in outbox(engine)}
    assert notes["n1"] == "sent"
    assert notes["n2"].startswith("unreachable: ") and "errcode -1" in notes["n2"]
    assert KEY not in json.dumps(notes)


async def test_wecom_wrong_key_is_permanent(engine: Engine) -> None:
    with WecomRobotServer(KEY) as wecom:
        wrong = wecom.url.replace(KEY, "not-the-key")
        staff = notices(engine, wecom_robot_url=wrong)
        await staff.send("n1", None, "Reminder", "Gate sign-off due")
    assert len(wecom.requests) == 1
    note = outbox(engine)[0].headers[f"X-Crmflow-Chat-{WECOM_ROBOT}"]
    assert "errcode 93000" in note and "not-the-key" not in note


async def test_slack_escapes_and_honours_retry_after(engine: Engine) -> None:
    with SlackWebhookServer() as slack:
        slack.script = [(429, "rate_limited", {"Retry-After": "0"})]
        staff = notices(engine, slack_webhook_url=slack.url)
        await staff.send("n1", None, "Leads <urgent>", "Tom & Jerry's leads > 24 h")
        assert len(slack.requests) == 2
        assert slack.delivered == [
            {"text": "*Leads &lt;urgent&gt;*\n\nTom &amp; Jerry's leads &gt; 24 h"}
        ]
        slack.script = [(410, "channel_is_archived", {})]
        await staff.send("n2", None, "Digest", "Figures attached")
        assert len(slack.requests) == 3  # 410: permanent, not retried
    notes = {r.dedupe_key: r.headers.get(f"X-Crmflow-Chat-{SLACK}") for r in outbox(engine)}
    assert notes["n2"] == "refused: slack answered HTTP 410: channel_is_archived"


async def test_slack_removed_webhook_is_permanent(engine: Engine) -> None:
    with SlackWebhookServer() as slack:
        staff = notices(engine, slack_webhook_url=slack.base + "/services/T0001/B0001/gone")
        await staff.send("n1", None, "Digest", "Figures")
    assert len(slack.requests) == 1
    assert "no_service" in outbox(engine)[0].headers[f"X-Crmflow-Chat-{SLACK}"]
    assert "/gone" not in json.dumps(outbox(engine)[0].headers)


async def test_a_long_notice_is_cut_to_the_robots_limit(engine: Engine) -> None:
    text = "客户" * 2000  # 12,000 bytes of UTF-8
    with WecomRobotServer(KEY) as wecom:
        await notices(engine, wecom_robot_url=wecom.url).send("n1", None, "长通知", text)
    [sent] = wecom.delivered
    content = sent["text"]["content"]
    assert len(content.encode("utf-8")) <= 2048
    assert content.startswith("长通知\n\n客户")
    assert content.endswith("(cut: the whole notice is in the outbox and the e-mail)")
    assert [r.body_text for r in outbox(engine) if r.channel == "outbox"] == [text]


def test_unreachable_robot_says_so_without_its_url() -> None:
    robot = DingtalkRobot("http://127.0.0.1:9/robot/send?access_token=tok123", "SECxyz")
    assert "tok123" not in repr(robot) and "SECxyz" not in repr(robot)


def test_settings_never_show_the_robots_secrets(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CRMFLOW_WECOM_ROBOT_URL", f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"
    )
    monkeypatch.setenv(
        "CRMFLOW_DINGTALK_ROBOT_URL", f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}"
    )
    monkeypatch.setenv("CRMFLOW_DINGTALK_ROBOT_SECRET", SECRET)
    monkeypatch.setenv("CRMFLOW_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T1/B2/sekrit")
    for args in (["settings", "--json"], ["settings"]):
        out = CliRunner().invoke(cli_app, args)
        assert out.exit_code == 0, out.output
        for secret in (KEY, TOKEN, SECRET, "sekrit"):
            assert secret not in out.output


def test_a_dingtalk_secret_without_its_url_is_refused() -> None:
    with pytest.raises(ValueError, match="CRMFLOW_DINGTALK_ROBOT_URL is not") as got:
        team_chats(settings(dingtalk_robot_secret=SECRET))
    assert SECRET not in str(got.value)
    with pytest.raises(ValueError, match="CRMFLOW_SLACK_WEBHOOK_URL is not an http"):
        team_chats(settings(slack_webhook_url="hooks.slack.com/services/T1/B2/sekrit"))


def test_no_chat_by_default() -> None:
    assert team_chats(settings()) == {}
