"""Real servers for the channel tests: an aiosmtpd SMTP server and a recording HTTP server."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.conftest import free_port

# --- certificates ---------------------------------------------------------------------


def make_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 / localhost, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl CLI is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- SMTP -----------------------------------------------------------------------------


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    tls: bool
    auth_user: str | None

    @property
    def message(self) -> EmailMessage:
        return cast(EmailMessage, message_from_bytes(self.raw, policy=policy.default))


@dataclass
class RecordingSmtpHandler:
    """Accepts every recipient but those in `refuse` (550) and keeps what arrives."""

    refuse: set[str] = field(default_factory=set)
    received: list[ReceivedMail] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        auth = session.auth_data
        self.received.append(
            ReceivedMail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                raw=bytes(cast(bytes, envelope.original_content)),
                tls=_over_tls(server, session),
                auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            )
        )
        return "250 2.0.0 queued"


def _over_tls(server: SMTP, session: Session) -> bool:
    """STARTTLS sets `session.ssl`; implicit TLS shows in the transport."""
    transport = server.transport
    return session.ssl is not None or (
        transport is not None and transport.get_extra_info("ssl_object") is not None
    )


class PasswordAuthenticator:
    """aiosmtpd authenticator accepting one user name and password."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@contextmanager
def smtp_server(
    handler: RecordingSmtpHandler,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    authenticator: PasswordAuthenticator | None = None,
    require_starttls: bool = False,
) -> Iterator[int]:
    """An aiosmtpd server on 127.0.0.1 and a free port (yielded), stopped on exit.

    `tls_context` offers STARTTLS, or with `implicit_tls` speaks TLS from the first byte.
    With `authenticator`, AUTH is required (over plain text too, unless `require_starttls`).
    """
    port = free_port()
    kwargs: dict[str, Any] = {}
    if tls_context is not None and implicit_tls:
        kwargs["ssl_context"] = tls_context
    elif tls_context is not None:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = require_starttls
    if authenticator is not None:
        kwargs.update(
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=require_starttls or implicit_tls,
        )
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


# --- HTTP -----------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingHTTPServer:
    """A real HTTP server in a thread answering from a script and recording every request.

    `statuses` are used one per request, in order; after them every request gets `default`.
    `delay` seconds are slept before answering (to make the client time out).
    """

    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        default: int = 200,
        answer: dict[str, Any] | None = None,
        delay: float = 0.0,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.answer = answer if answer is not None else {"ok": True}
        self.delay = delay
        self.extra_headers = extra_headers or {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def _next_status(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return self.statuses.pop(0) if self.statuses else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = recorder._next_status(
                    RecordedRequest(
                        method="POST",
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                    )
                )
                if recorder.delay:
                    time.sleep(recorder.delay)
                out = json.dumps(recorder.answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    for name, value in recorder.extra_headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> RecordingHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
