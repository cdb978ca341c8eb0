"""The `email` channel: SMTP through the standard library, run in a worker thread.

Every message gets a Message-ID derived from its dedupe key, so a message re-sent after a crash
(the worker died after the server accepted it but before the delivery was recorded) carries the
same Message-ID and receiving systems can recognise it as the same message.

Errors: a refusal that belongs to this message (the recipient refused, the content refused,
with a 5xx code) is permanent. Everything that belongs to the connection or to the channel's
own set-up (connection refused, timeouts, 4xx, TLS failures, a rejected login or From address)
is transient: no message is at fault, so none is dropped, and the activity's retry policy
retries until an operator fixes the server or the settings.

`List-Unsubscribe` and `List-Unsubscribe-Post` go out as RFC 8058 asks, whatever the URL's
length: `List-Unsubscribe: <https://…>` in plain ASCII. The standard library's default policy
folds a header at 78 characters and, when a word (a URL) does not fit, writes it as an RFC 2047
encoded word (`=?utf-8?q?=3Chttps=3A…?=`), which mailbox providers do not read as a link: the
message's policy writes these two headers verbatim on one line instead (RFC 5322 allows 998
characters). Only a URL longer than that is folded, inside the brackets, where RFC 2369 tells
readers to ignore whitespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

from activities.channels.base import (
    OutgoingMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
)

if TYPE_CHECKING:
    from crmflow.settings import Settings

Security = Literal["none", "starttls", "ssl"]
DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "ssl": 465}

# Headers the channel writes itself; a message may not set them through `headers`.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    )
)

# Headers written as they are: never folded at 78 characters, never RFC 2047-encoded.
VERBATIM_HEADERS = frozenset(("list-unsubscribe", "list-unsubscribe-post"))
# RFC 5322 2.1.1: a line is at most 998 characters, CRLF excluded.
MAX_LINE = 998
# What a URL in a header may hold as it is; anything else (a space, non-ASCII, `<`, `>`, `"`)
# is percent-encoded so the header stays plain ASCII and its brackets stay the URL's ends.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


class MailPolicy(EmailPolicy):
    """The default policy (`email.policy.default`), except for `VERBATIM_HEADERS`: those are
    written on one line as given (folded only past 998 characters, never encoded)."""

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in VERBATIM_HEADERS:
            return verbatim_header(name, str(value), self.linesep)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in VERBATIM_HEADERS:
            return verbatim_header(name, str(value), self.linesep).encode("ascii")
        return super().fold_binary(name, value)


MAIL_POLICY = MailPolicy()


def verbatim_header(name: str, value: str, linesep: str = "\r\n") -> str:
    """`name: value` on one line; past `MAX_LINE` characters, continued on lines that start
    with a space (RFC 5322 folding; inside a List-Unsubscribe URL's brackets readers ignore
    it, RFC 2369 section 2). Raises ValueError for a value that is not plain ASCII."""
    text = "".join(value.splitlines())  # a value parsed from a message may come folded
    if not text.isascii():
        raise ValueError(f"header {name} must be ASCII")
    line = f"{name}: {text}"
    lines = [line[:MAX_LINE]]
    lines += [" " + line[i : i + MAX_LINE - 1] for i in range(MAX_LINE, len(line), MAX_LINE - 1)]
    return linesep.join(lines) + linesep


def header_url(url: str) -> str:
    """`url` as a List-Unsubscribe header carries it: `<url>`, plain ASCII (what a URL may
    not hold as it is, percent-encoded)."""
    return f"<{quote(url.strip(), safe=_URL_SAFE)}>"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    mail_from: str
    port: int | None = None
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    ca_file: Path | None = None

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.security]

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        if not settings.smtp_host or not settings.mail_from:
            raise ValueError("e-mail needs CRMFLOW_SMTP_HOST and CRMFLOW_MAIL_FROM")
        return cls(
            host=settings.smtp_host,
            mail_from=settings.mail_from,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=(
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            timeout=settings.smtp_timeout_seconds,
            ca_file=settings.smtp_ca_file,
        )


def message_id_for(dedupe_key: str, mail_from: str) -> str:
    """`<crmflow.<sha256 of the key, 32 hex>@<the From domain>>`: the same key, the same id."""
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()[:32]
    _, addr = parseaddr(mail_from)
    domain = addr.rpartition("@")[2] or "crmflow.invalid"
    return f"<crmflow.{digest}@{domain}>"


class EmailChannel:
    """SMTP with optional STARTTLS / implicit TLS and AUTH; one connection per message."""

    name = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        _, from_addr = parseaddr(config.mail_from)
        if "@" not in from_addr:
            raise ValueError(f"mail_from {config.mail_from!r} has no e-mail address")
        self.envelope_from = from_addr

    def build_message(self, msg: OutgoingMessage) -> EmailMessage:
        """The MIME message: text and HTML alternatives and the channel's headers."""
        if not msg.to:
            raise PermanentSendError("e-mail needs a recipient address (`to`)")
        try:
            to = validate_email(msg.to, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise PermanentSendError(f"bad e-mail address {msg.to!r}: {exc}") from exc
        if msg.text is None and msg.html is None:
            raise PermanentSendError("e-mail needs a text or an HTML body")
        mime = EmailMessage(policy=MAIL_POLICY)
        try:
            mime["From"] = self.config.mail_from
            mime["To"] = Address(addr_spec=to)
            mime["Subject"] = msg.subject or ""
            mime["Date"] = formatdate(usegmt=True)
            mime["Message-ID"] = message_id_for(msg.dedupe_key, self.config.mail_from)
            if msg.unsubscribe_url:
                mime["List-Unsubscribe"] = header_url(msg.unsubscribe_url)
                mime["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            for name, value in msg.headers.items():
                if name.lower() in RESERVED_HEADERS:
                    raise PermanentSendError(f"header {name!r} is set by the e-mail channel")
                mime[name] = value
            if msg.text is not None:
                mime.set_content(msg.text)
                if msg.html is not None:
                    mime.add_alternative(msg.html, subtype="html")
            else:
                mime.set_content(msg.html or "", subtype="html")
        except ValueError as exc:  # CR/LF in a header, a malformed header value
            raise PermanentSendError(f"cannot build the e-mail: {exc}") from exc
        return mime

    async def send(self, msg: OutgoingMessage) -> SendResult:
        return await asyncio.to_thread(self.send_sync, msg)

    def send_sync(self, msg: OutgoingMessage) -> SendResult:
        """Build and send the message (blocking: from a thread)."""
        mime = self.build_message(msg)
        self._deliver(mime, str(mime["To"].addresses[0].addr_spec))
        return SendResult(
            provider_message_id=str(mime["Message-ID"]),
            detail={"smtp_host": self.config.host, "to": str(mime["To"])},
        )

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(
            cafile=str(self.config.ca_file) if self.config.ca_file else None
        )

    def _deliver(self, mime: EmailMessage, rcpt: str) -> None:
        cfg = self.config
        smtp: smtplib.SMTP | None = None
        try:
            if cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    cfg.host, cfg.effective_port, timeout=cfg.timeout, context=self._tls_context()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout)
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            try:
                smtp.send_message(mime, from_addr=self.envelope_from, to_addrs=[rcpt])
            except smtplib.SMTPNotSupportedError as exc:
                # A non-ASCII address and a server without SMTPUTF8: this message never fits.
                raise PermanentSendError(f"SMTP server {cfg.host}: {exc}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(rcpt, (0, b""))
            text = f"recipient {rcpt} refused: {code} {_text(reply)}"
            raise (PermanentSendError if code >= 500 else TransientSendError)(text) from exc
        except smtplib.SMTPDataError as exc:
            text = f"message refused: {exc.smtp_code} {_text(exc.smtp_error)}"
            raise (PermanentSendError if exc.smtp_code >= 500 else TransientSendError)(
                text
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientSendError(
                f"SMTP login as {cfg.username!r} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPSenderRefused as exc:
            raise TransientSendError(
                f"sender {exc.sender} refused: {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientSendError(f"SMTP server {cfg.host}: {exc}") from exc
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            # Connection refused or reset, timeouts, DNS, TLS handshake and certificate errors,
            # any other unexpected reply.
            raise TransientSendError(
                f"SMTP {cfg.host}:{cfg.effective_port}: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if smtp is not None:
                # The message is accepted once DATA got its 250: a failing QUIT changes nothing.
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    smtp.quit()
                smtp.close()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
