"""The e-mail channel against a real aiosmtpd server: plain + AUTH, STARTTLS, implicit TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.channels.base import OutgoingMessage, PermanentSendError, TransientSendError
from activities.channels.email import EmailChannel, SmtpConfig, message_id_for
from tests.channel_servers import (
    PasswordAuthenticator,
    RecordingSmtpHandler,
    make_self_signed_cert,
    server_tls_context,
    smtp_server,
)
from tests.conftest import free_port

FROM = "Club News <news@club.example>"
# AUTH over plain text is what the plain-server tests exercise on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def message(**overrides: object) -> OutgoingMessage:
    fields: dict[str, object] = {
        "dedupe_key": "welcome:v3:cust-42:node-1",
        "customer_id": "cust-42",
        "channel": "email",
        "to": "ana@example.org",
        "subject": "Welcome, Ana — 100 points inside",
        "text": "Hello Ana,\nyou have 100 points.",
        "html": "<p>Hello <b>Ana</b>, you have 100 points.</p>",
        "headers": {"Reply-To": "care@club.example"},
        "unsubscribe_url": "http://127.0.0.1:8080/unsubscribe/tok.sig",
    }
    fields.update(overrides)
    return OutgoingMessage.model_validate(fields)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


async def test_delivers_both_parts_with_message_id_and_unsubscribe_headers() -> None:
    handler = RecordingSmtpHandler()
    auth = PasswordAuthenticator("crm", "s3cret")
    with smtp_server(handler, authenticator=auth) as port:
        channel = EmailChannel(
            SmtpConfig(
                host="127.0.0.1",
                port=port,
                security="none",
                mail_from=FROM,
                username="crm",
                password="s3cret",
                timeout=5,
            )
        )
        result = await channel.send(message())

    assert len(handler.received) == 1
    got = handler.received[0]
    assert got.mail_from == "news@club.example"
    assert got.rcpt_tos == ["ana@example.org"]
    assert got.auth_user == "crm"
    assert got.tls is False
    mail = got.message
    expected_id = message_id_for("welcome:v3:cust-42:node-1", FROM)
    assert expected_id.startswith("<crmflow.") and expected_id.endswith("@club.example>")
    assert mail["Message-ID"] == expected_id
    assert result.provider_message_id == expected_id
    assert mail["From"] == FROM
    assert mail["To"] == "ana@example.org"
    assert mail["Subject"] == "Welcome, Ana — 100 points inside"
    assert mail["Reply-To"] == "care@club.example"
    assert mail["List-Unsubscribe"] == "<http://127.0.0.1:8080/unsubscribe/tok.sig>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["Date"] is not None
    assert mail.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().replace("\r\n", "\n") for p in mail.iter_parts()}
    assert parts == {
        "text/plain": "Hello Ana,\nyou have 100 points.\n",
        "text/html": "<p>Hello <b>Ana</b>, you have 100 points.</p>\n",
    }


async def test_a_resend_carries_the_same_message_id() -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=5)
        )
        first = await channel.send(message())
        second = await channel.send(message())
        other = await channel.send(message(dedupe_key="welcome:v3:cust-42:node-2"))

    ids = [m.message["Message-ID"] for m in handler.received]
    assert ids[0] == ids[1] == first.provider_message_id == second.provider_message_id
    assert ids[2] == other.provider_message_id != ids[0]


async def test_html_only_and_no_unsubscribe_link() -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=5)
        )
        await channel.send(message(text=None, unsubscribe_url=None, headers={}))
    mail = handler.received[0].message
    assert mail.get_content_type() == "text/html"
    assert (
        mail.get_content().replace("\r\n", "\n")
        == "<p>Hello <b>Ana</b>, you have 100 points.</p>\n"
    )
    assert mail["List-Unsubscribe"] is None
    assert mail["List-Unsubscribe-Post"] is None


async def test_starttls_with_a_self_signed_certificate(cert: tuple[Path, Path]) -> None:
    handler = RecordingSmtpHandler()
    auth = PasswordAuthenticator("crm", "s3cret")
    tls = server_tls_context(*cert)
    # The server refuses AUTH and mail before STARTTLS: this only passes over TLS.
    with smtp_server(handler, tls_context=tls, authenticator=auth, require_starttls=True) as port:
        channel = EmailChannel(
            SmtpConfig(
                host="127.0.0.1",
                port=port,
                security="starttls",
                mail_from=FROM,
                username="crm",
                password="s3cret",
                timeout=5,
                ca_file=cert[0],
            )
        )
        await channel.send(message())
    assert len(handler.received) == 1
    assert handler.received[0].tls is True
    assert handler.received[0].auth_user == "crm"


async def test_starttls_refuses_an_untrusted_certificate(cert: tuple[Path, Path]) -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler, tls_context=server_tls_context(*cert)) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="starttls", mail_from=FROM, timeout=5)
        )
        with pytest.raises(TransientSendError, match="CERTIFICATE_VERIFY_FAILED"):
            await channel.send(message())
    assert handler.received == []


async def test_implicit_tls(cert: tuple[Path, Path]) -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler, tls_context=server_tls_context(*cert), implicit_tls=True) as port:
        channel = EmailChannel(
            SmtpConfig(
                host="127.0.0.1",
                port=port,
                security="ssl",
                mail_from=FROM,
                timeout=5,
                ca_file=cert[0],
            )
        )
        await channel.send(message())
    assert len(handler.received) == 1
    assert handler.received[0].tls is True


async def test_refused_recipient_is_permanent() -> None:
    handler = RecordingSmtpHandler(refuse={"gone@example.org"})
    with smtp_server(handler) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=5)
        )
        with pytest.raises(PermanentSendError, match="550"):
            await channel.send(message(to="gone@example.org"))
        # The connection is fine: the next message goes through.
        await channel.send(message(dedupe_key="k2"))
    assert [m.rcpt_tos for m in handler.received] == [["ana@example.org"]]


async def test_wrong_password_is_transient_and_sends_nothing() -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler, authenticator=PasswordAuthenticator("crm", "s3cret")) as port:
        channel = EmailChannel(
            SmtpConfig(
                host="127.0.0.1",
                port=port,
                security="none",
                mail_from=FROM,
                username="crm",
                password="wrong",
                timeout=5,
            )
        )
        with pytest.raises(TransientSendError, match="535"):
            await channel.send(message())
    assert handler.received == []


async def test_server_down_is_transient() -> None:
    channel = EmailChannel(
        SmtpConfig(host="127.0.0.1", port=free_port(), security="none", mail_from=FROM, timeout=2)
    )
    with pytest.raises(TransientSendError, match="ConnectionRefusedError"):
        await channel.send(message())


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"to": "not-an-address"}, "bad e-mail address"),
        ({"to": None}, "needs a recipient"),
        ({"text": None, "html": None}, "text or an HTML body"),
        ({"headers": {"X-Campaign": "spring\r\nBcc: victim@example.org"}}, "cannot build"),
        ({"headers": {"From": "ceo@club.example"}}, "set by the e-mail channel"),
    ],
)
async def test_bad_messages_are_permanent_before_connecting(
    overrides: dict[str, object], reason: str
) -> None:
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=5)
        )
        with pytest.raises(PermanentSendError, match=reason):
            await channel.send(message(**overrides))
    assert handler.received == []
