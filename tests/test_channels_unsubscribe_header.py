"""RFC 8058 headers as a real SMTP server receives them: `List-Unsubscribe: <https://…>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`, plain ASCII, never RFC 2047-encoded,
for real-length tokens and long public base URLs (read from the raw message bytes)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from activities.channels.base import OutgoingMessage
from activities.channels.email import MAX_LINE, EmailChannel, SmtpConfig
from activities.channels.unsubscribe import (
    make_unsubscribe_token,
    read_unsubscribe_token,
    unsubscribe_url,
)
from tests.channel_servers import RecordingSmtpHandler, smtp_server

FROM = "Club News <news@club.example>"
SECRET = "k3y-for-unsubscribe-links-0123456789abcdef"


def real_link(base_url: str, customer_id: str = "cust-2f6d3c9e-8a51-4b77-9e0a-1c2d3e4f5a6b") -> str:
    """A link exactly as the deliver activity makes one: the real token function."""
    token = make_unsubscribe_token(
        SECRET,
        customer_id,
        "email",
        "welcome-series-spring-2026",
        issued_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    )
    assert len(token) > 100  # a real token, not `tok.sig`
    return unsubscribe_url(base_url, token)


def raw_header_block(raw: bytes) -> bytes:
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, "no blank line after the headers"
    return head


def unfolded_headers(raw: bytes) -> dict[str, list[str]]:
    """The message's top-level header lines, unfolded as RFC 5322 says (CRLF before
    whitespace removed), by lower-cased name."""
    text = raw_header_block(raw).decode("ascii")  # a header block is ASCII, or the test fails
    out: dict[str, list[str]] = {}
    for line in re.sub(r"\r\n(?=[ \t])", "", text).split("\r\n"):
        name, _, value = line.partition(":")
        out.setdefault(name.lower(), []).append(value.removeprefix(" "))
    return out


async def send(url: str, **overrides: object) -> bytes:
    fields: dict[str, object] = {
        "dedupe_key": "journey:welcome:cust-42:1:send",
        "customer_id": "cust-42",
        "channel": "email",
        "to": "ana@example.org",
        "subject": "Welcome to the club, Ana - 100 points are waiting for you inside",
        "text": "Hello Ana",
        "html": "<p>Hello Ana</p>",
        "unsubscribe_url": url,
    }
    fields.update(overrides)
    handler = RecordingSmtpHandler()
    with smtp_server(handler) as port:
        channel = EmailChannel(
            SmtpConfig(host="127.0.0.1", port=port, security="none", mail_from=FROM, timeout=5)
        )
        await channel.send(OutgoingMessage.model_validate(fields))
    assert len(handler.received) == 1
    return handler.received[0].raw


@pytest.mark.parametrize(
    "base_url",
    [
        "https://crm.club.example.com",
        "http://127.0.0.1:8080/",
        # a long public base URL: a deep path behind a reverse proxy
        "https://members.loyalty-programme.retail-group.example.com/"
        + "/".join(f"tenant-section-{i:02d}" for i in range(12)),
    ],
)
async def test_list_unsubscribe_goes_out_as_a_bracketed_url(base_url: str) -> None:
    url = real_link(base_url)
    assert len(f"List-Unsubscribe: <{url}>") > 78  # longer than the default fold width
    raw = await send(url)

    headers = unfolded_headers(raw)
    assert headers["list-unsubscribe"] == [f"<{url}>"]
    assert headers["list-unsubscribe-post"] == ["List-Unsubscribe=One-Click"]
    head = raw_header_block(raw)
    assert b"=?utf-8?" not in head.lower()
    # not even folded: one raw line each, within RFC 5322's 998 characters
    lines = head.split(b"\r\n")
    assert f"List-Unsubscribe: <{url}>".encode() in lines
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    assert all(len(line) <= MAX_LINE for line in lines)
    # the link still carries the token the unsubscribe page reads
    token = url.rsplit("/", 1)[1]
    assert read_unsubscribe_token(SECRET, token).customer_id.startswith("cust-2f6d")


async def test_the_other_headers_still_fold_as_before() -> None:
    """Only the two RFC 8058 headers are written verbatim: a long subject still folds, and a
    non-ASCII one is still encoded (as it must be)."""
    url = real_link("https://crm.club.example.com")
    raw = await send(url, subject="Willkommen im Club, Änne — " + "Punkte " * 12)
    head = raw_header_block(raw).decode("ascii")
    subject = next(line for line in head.split("\r\n") if line.startswith("Subject:"))
    assert "=?utf-8?" in subject
    assert unfolded_headers(raw)["list-unsubscribe"] == [f"<{url}>"]


async def test_a_url_past_998_characters_folds_inside_the_brackets_without_encoding() -> None:
    """A URL that cannot fit one header line (RFC 5322: 998 characters) is folded with
    whitespace inside the brackets, which RFC 2369 tells readers to ignore; still no encoded
    word, and every raw line within the limit."""
    url = real_link("https://crm.club.example.com/" + "x" * 1500)
    raw = await send(url)
    head = raw_header_block(raw)
    assert b"=?utf-8?" not in head.lower()
    assert all(len(line) <= MAX_LINE for line in head.split(b"\r\n"))
    (value,) = unfolded_headers(raw)["list-unsubscribe"]
    assert value.startswith("<https://crm.club.example.com/xxx") and value.endswith(">")
    assert re.sub(r"\s", "", value) == f"<{url}>"


async def test_a_url_with_characters_a_header_cannot_hold_is_percent_encoded() -> None:
    """A space or a non-ASCII character in the configured base URL is percent-encoded: the
    header stays ASCII and the brackets stay the URL's ends."""
    token_url = real_link("https://crm.club.example.com/会员 area")
    raw = await send(token_url)
    (value,) = unfolded_headers(raw)["list-unsubscribe"]
    assert value.startswith("<https://crm.club.example.com/%E4%BC%9A%E5%91%98%20area/unsubscribe/")
    assert value.endswith(token_url.rsplit("/", 1)[1] + ">")
    assert b"=?utf-8?" not in raw_header_block(raw).lower()
