"""Console sign-in, sessions and CSRF over HTTP (a real server, both databases), and the
users service and CLI: a password is hashed, never shown; a wrong name and a wrong password
answer alike; a session cookie is HttpOnly and SameSite; a form without its CSRF token is
refused; sign-out and disabling a user end the session; a role sees only its pages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from crmflow.cli.app import app
from crmflow.services.errors import Conflict, Invalid
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from crmflow.services.users import NewUser, create_user, disable_user, sign_in
from store.models import ChangeLogRow, UserRow
from tests.api_helpers import make_settings
from tests.console_helpers import PASSWORD, ConsoleServer, csrf_of


def test_a_password_is_stored_only_as_an_argon2_hash(engine: Engine, tmp_path: Path) -> None:
    rt = Runtime(make_settings(tmp_path), engine)
    made = create_user(rt, NewUser(name="li.wei", role=Role.marketer, password=PASSWORD))
    assert made.active and made.role is Role.marketer
    with engine.connect() as conn:
        stored = conn.execute(select(UserRow.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(Conflict):
        create_user(rt, NewUser(name="li.wei", role=Role.viewer, password=PASSWORD))
    with pytest.raises(Invalid, match="at least 10 characters"):
        create_user(rt, NewUser(name="short", role=Role.viewer, password="abc"))
    assert sign_in(rt, "li.wei", "wrong password!") is None
    assert sign_in(rt, "nobody", PASSWORD) is None
    session = sign_in(rt, "li.wei", PASSWORD)
    assert session is not None and session.principal.actor == "user:li.wei"
    disable_user(rt, "li.wei")
    assert sign_in(rt, "li.wei", PASSWORD) is None


def test_users_cli_reads_the_password_from_stdin_and_never_prints_it(
    cli_env: Path, engine: Engine
) -> None:
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["users", "create", "peter", "--role", "project_manager", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert made.exit_code == 0, made.output
    assert PASSWORD not in made.output and "project_manager" in made.output
    listed = runner.invoke(app, ["users", "list", "--json"])
    assert '"name": "peter"' in listed.output and "hash" not in listed.output
    short = runner.invoke(
        app, ["users", "create", "p2", "--role", "viewer", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    off = runner.invoke(app, ["users", "disable", "peter"])
    assert off.exit_code == 0 and "disabled" in off.output


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(
    console_server: ConsoleServer,
) -> None:
    base = console_server.base
    with httpx.Client(base_url=base, timeout=30) as http:
        first = http.get("/console/tags", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/console/login?next=/console/tags"
        login = http.get("/console/login")
        assert login.status_code == 200 and 'autocomplete="current-password"' in login.text
        wrong = http.post(
            "/console/login",
            data={
                "name": "test-viewer",
                "password": "nope-nope-nope",
                "csrf_token": csrf_of(login.text),
            },
        )
        unknown = http.post(
            "/console/login",
            data={
                "name": "nobody",
                "password": "nope-nope-nope",
                "csrf_token": csrf_of(wrong.text),
            },
        )
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong user name or password." in wrong.text and "Wrong user name" in unknown.text
        good = http.post(
            "/console/login",
            data={
                "name": "test-viewer",
                "password": PASSWORD,
                "csrf_token": csrf_of(unknown.text),
                "next": "https://evil.example/",
            },
            follow_redirects=False,
        )
        assert good.status_code == 303 and good.headers["location"] == "/console/"
        cookie = next(h for h in good.headers.get_list("set-cookie") if "crmflow_session=" in h)
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
        page = http.get("/console/login", follow_redirects=False)
        assert page.status_code == 303  # signed in already
        out = http.post("/console/logout", data={"csrf_token": "forged"})
        assert out.status_code == 403 and "CSRF" in out.text
        assert "content-security-policy" in out.headers
        home = http.get("/console/tags")
        out = http.post(
            "/console/logout", data={"csrf_token": csrf_of(home.text)}, follow_redirects=False
        )
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        again = http.get("/console/tags", follow_redirects=False)
        assert again.status_code == 303 and "/console/login" in again.headers["location"]


def test_a_login_form_without_its_token_is_refused(console_server: ConsoleServer) -> None:
    with httpx.Client(base_url=console_server.base, timeout=30) as http:
        r = http.post("/console/login", data={"name": "test-admin", "password": PASSWORD})
    assert r.status_code == 403 and "out of date" in r.text


def test_a_role_sees_only_its_navigation_and_is_refused_the_rest(
    console_server: ConsoleServer,
) -> None:
    with console_server.signed_in("project_manager") as http:
        page = http.get("/console/tags", follow_redirects=True)
        assert page.status_code == 403  # tags need customers.read
        assert ">Projects<" in page.text and ">Journeys<" not in page.text
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/tags")
        assert ">Journeys<" in page.text and ">Projects<" in page.text


def test_disabling_a_user_ends_their_open_session(console_server: ConsoleServer) -> None:
    with console_server.signed_in("marketer") as http:
        assert http.get("/console/tags").status_code == 200
        disable_user(console_server.runtime, console_server.user("marketer"))
        gone = http.get("/console/tags")
        assert gone.status_code == 303 and "/console/login" in gone.headers["location"]


def test_a_console_change_lands_in_the_audit_log_as_the_user(
    console_server: ConsoleServer,
) -> None:
    with console_server.signed_in("viewer") as http:
        page = http.get("/console/tags")
        http.post("/console/logout", data={"csrf_token": csrf_of(page.text)})
    with console_server.runtime.engine.connect() as conn:
        rows = conn.execute(select(ChangeLogRow.actor, ChangeLogRow.target)).all()
    assert ("user:test-viewer", "/console/logout") in [tuple(r) for r in rows]
