"""Console users and their sessions: create, list, disable; sign in, check a session, sign out.

A user has a name, one role of the permission table (the same roles as API keys) and may act
as a project team member (`person`: sign-offs are made as them). Passwords are hashed with
argon2id (argon2-cffi; a hash made with weaker parameters is upgraded at the next sign-in);
a password is never stored, printed or logged.

A session is a random 256-bit token in an HttpOnly cookie; only its SHA-256 hash is stored
with the session's CSRF secret. It ends at sign-out, after `console_session_hours` idle, or
when its user is disabled. A signed-in user is a `Principal` of kind `user`, so the
permission table, the audit log and every service treat console and API callers alike.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from crmflow.services.errors import Conflict, Invalid, NotFound
from crmflow.services.keys import NAME_PATTERN, Principal
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from store.db import utcnow
from store.models import ConsoleSessionRow, UserRow

MIN_PASSWORD = 10
MAX_PASSWORD = 1_000  # argon2 hashes anything, but a 100 MB "password" costs memory
_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters
# A hash to check against when the user does not exist, so both answers take as long.
_DUMMY_HASH = _hasher.hash("crmflow-no-such-user")
_LAST_SEEN_EVERY = timedelta(minutes=1)  # write last_seen_at at most this often


class NewUser(BaseModel):
    """What `users create` takes."""

    name: str = Field(pattern=NAME_PATTERN, description="The sign-in name (unique)")
    role: Role
    person: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The project team member the user acts as (sign-offs are made as them)",
    )
    password: SecretStr = Field(description=f"At least {MIN_PASSWORD} characters")


class UserInfo(BaseModel):
    """A user as listed: never the password or its hash."""

    name: str
    role: Role
    person: str | None
    created_at: datetime
    created_by: str | None
    disabled_at: datetime | None
    last_sign_in_at: datetime | None
    active: bool


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"at most {MAX_PASSWORD} characters", field="password")


def _info(row: UserRow) -> UserInfo:
    return UserInfo(
        name=row.name,
        role=Role(row.role),
        person=row.person,
        created_at=row.created_at,
        created_by=row.created_by,
        disabled_at=row.disabled_at,
        last_sign_in_at=row.last_sign_in_at,
        active=row.disabled_at is None,
    )


def create_user(rt: Runtime, new: NewUser, created_by: str | None = None) -> UserInfo:
    password = new.password.get_secret_value()
    _check_password(password)
    row = UserRow(
        name=new.name,
        role=new.role.value,
        person=new.person,
        password_hash=_hasher.hash(password),
        created_at=utcnow(),
        created_by=created_by,
    )
    try:
        with rt.engine.begin() as conn:
            conn.execute(
                insert(UserRow).values(
                    name=row.name,
                    role=row.role,
                    person=row.person,
                    password_hash=row.password_hash,
                    created_at=row.created_at,
                    created_by=row.created_by,
                )
            )
    except IntegrityError as exc:
        raise Conflict(f"a user named {new.name!r} exists already") from exc
    return _info(row)


def list_users(rt: Runtime) -> list[UserInfo]:
    with rt.engine.connect() as conn:
        rows = conn.execute(select(UserRow).order_by(UserRow.name)).all()
    return [_info(UserRow(**r._mapping)) for r in rows]


def disable_user(rt: Runtime, name: str) -> UserInfo:
    """Disable a user and end their sessions (an open page answers "signed out" next time)."""
    now = utcnow()
    with rt.engine.begin() as conn:
        found = conn.execute(select(UserRow).where(UserRow.name == name)).first()
        if found is None:
            raise NotFound(f"no user named {name!r}")
        conn.execute(
            update(UserRow)
            .where(UserRow.name == name, UserRow.disabled_at.is_(None))
            .values(disabled_at=now)
        )
        conn.execute(
            update(ConsoleSessionRow)
            .where(ConsoleSessionRow.user_name == name, ConsoleSessionRow.ended_at.is_(None))
            .values(ended_at=now)
        )
        row = conn.execute(select(UserRow).where(UserRow.name == name)).one()
    return _info(UserRow(**row._mapping))


@dataclass(frozen=True)
class Session:
    """A signed-in session: who, the cookie's token (only at sign-in) and the CSRF secret."""

    principal: Principal
    csrf_token: str
    token: str = ""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _principal(row: UserRow) -> Principal:
    return Principal(
        kind="user", id=row.name, name=row.name, role=Role(row.role), person=row.person
    )


def sign_in(rt: Runtime, name: str, password: str) -> Session | None:
    """A new session for a right name and password of an active user; None otherwise (the
    same answer, after the same work, whether the name exists or not)."""
    if len(password) > MAX_PASSWORD or len(name) > 100:
        return None
    with rt.engine.connect() as conn:
        found = conn.execute(select(UserRow).where(UserRow.name == name)).first()
    row = UserRow(**found._mapping) if found is not None else None
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    now = utcnow()
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    hours = rt.settings.console_session_hours
    values: dict[str, object] = {"last_sign_in_at": now}
    if _hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = _hasher.hash(password)
    with rt.engine.begin() as conn:
        conn.execute(update(UserRow).where(UserRow.name == row.name).values(**values))
        conn.execute(
            insert(ConsoleSessionRow).values(
                token_hash=_hash(token),
                user_name=row.name,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(hours=hours),
            )
        )
    return Session(_principal(row), csrf, token)


def session_of(rt: Runtime, token: str) -> Session | None:
    """The live session a cookie's token names (its idle time renewed), or None."""
    if not token or len(token) > 200:
        return None
    now = utcnow()
    s, u = ConsoleSessionRow, UserRow
    with rt.engine.connect() as conn:
        found = conn.execute(
            select(s.token_hash, s.csrf_token, s.last_seen_at, u)
            .join(u, u.name == s.user_name)
            .where(
                s.token_hash == _hash(token),
                s.ended_at.is_(None),
                s.expires_at > now,
                u.disabled_at.is_(None),
            )
        ).first()
    if found is None:
        return None
    m = found._mapping
    user = UserRow(**{c: m[c] for c in UserRow.__table__.columns.keys()})  # noqa: SIM118
    if now - m["last_seen_at"] >= _LAST_SEEN_EVERY:
        hours = rt.settings.console_session_hours
        with rt.engine.begin() as conn:
            conn.execute(
                update(s)
                .where(s.token_hash == m["token_hash"])
                .values(last_seen_at=now, expires_at=now + timedelta(hours=hours))
            )
    return Session(_principal(user), m["csrf_token"])


def sign_out(rt: Runtime, token: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            update(ConsoleSessionRow)
            .where(
                ConsoleSessionRow.token_hash == _hash(token), ConsoleSessionRow.ended_at.is_(None)
            )
            .values(ended_at=utcnow())
        )
