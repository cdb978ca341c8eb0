"""API keys: create (the token is shown once), list, revoke, and check a presented token.

A token is `crm_<key_id>_<secret>`: `key_id` is public (lists, the audit log), the secret is
32 random bytes of which only a SHA-256 hash is stored. A slow password hash buys nothing for
a 256-bit random secret and would cost every request; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from crmflow.services.errors import Conflict, Invalid, NotFound
from crmflow.services.permissions import Role
from crmflow.services.runtime import Runtime
from store.db import utcnow
from store.models import ApiKeyRow
from store.sql import table_of

PREFIX = "crm_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$"


class NewKey(BaseModel):
    """What `keys create` takes."""

    name: str = Field(pattern=NAME_PATTERN, description="A unique name for the key")
    role: Role
    person: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The project team member the key acts as (sign-offs are made as them)",
    )
    expires_days: int | None = Field(None, ge=1, le=3650, description="Days until it expires")


class KeyInfo(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    name: str
    role: Role
    person: str | None
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    active: bool


class CreatedKey(KeyInfo):
    token: str = Field(description="The whole token: shown this once, never stored")


class Principal(BaseModel):
    """Who is calling: a key's (or a signed-in user's) identity and role."""

    kind: str = "key"  # key | user
    id: str
    name: str
    role: Role
    person: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def by(self) -> str:
        """Who acts in a change: the key's team member, or the key's own name."""
        return self.person or self.name


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _info(row: ApiKeyRow, now: datetime) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        name=row.name,
        role=Role(row.role),
        person=row.person,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
        active=row.revoked_at is None and (row.expires_at is None or row.expires_at > now),
    )


def create_key(rt: Runtime, new: NewKey, *, created_by: str | None = None) -> CreatedKey:
    """A new key; `Conflict` when the name is taken."""
    now = utcnow()
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKeyRow(
        key_id=key_id,
        name=new.name,
        role=new.role.value,
        person=new.person,
        secret_hash=_hash(secret),
        created_at=now,
        created_by=created_by,
        expires_at=now + timedelta(days=new.expires_days) if new.expires_days else None,
    )
    try:
        with rt.engine.begin() as conn:
            conn.execute(
                insert(table_of(ApiKeyRow)),
                [{c.key: getattr(row, c.key) for c in ApiKeyRow.__table__.columns}],
            )
    except IntegrityError:
        raise Conflict(f"a key named {new.name!r} exists already") from None
    return CreatedKey(**_info(row, now).model_dump(), token=f"{PREFIX}{key_id}_{secret}")


def list_keys(rt: Runtime) -> list[KeyInfo]:
    now = utcnow()
    with rt.engine.connect() as conn:
        rows = conn.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
    return [_info(ApiKeyRow(**r._mapping), now) for r in rows]


def revoke_key(rt: Runtime, name_or_id: str) -> KeyInfo:
    """Revoke by name or key id (revoking twice keeps the first time)."""
    now = utcnow()
    t = table_of(ApiKeyRow)
    with rt.engine.begin() as conn:
        found = conn.execute(
            select(ApiKeyRow).where((t.c.name == name_or_id) | (t.c.key_id == name_or_id))
        ).first()
        if found is None:
            raise NotFound(f"no API key named {name_or_id!r}")
        row = ApiKeyRow(**found._mapping)
        if row.revoked_at is None:
            conn.execute(update(t).where(t.c.key_id == row.key_id).values(revoked_at=now))
            row.revoked_at = now
    return _info(row, now)


def split_token(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX):
        return None
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 16 or len(secret) > 100:
        return None
    return key_id, secret


def authenticate(rt: Runtime, token: str) -> Principal | None:
    """The key's principal, or None for an unknown, wrong, revoked or expired token."""
    parts = split_token(token)
    if parts is None:
        return None
    key_id, secret = parts
    t = table_of(ApiKeyRow)
    now = utcnow()
    with rt.engine.connect() as conn:
        found = conn.execute(select(ApiKeyRow).where(t.c.key_id == key_id)).first()
    if found is None:
        hmac.compare_digest(_hash(secret), _hash(""))  # same work either way
        return None
    row = ApiKeyRow(**found._mapping)
    if not hmac.compare_digest(row.secret_hash, _hash(secret)):
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    # last use, at most once a minute per key (no write on every request)
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
        with rt.engine.begin() as conn:
            conn.execute(update(t).where(t.c.key_id == key_id).values(last_used_at=now))
    return Principal(kind="key", id=key_id, name=row.name, role=Role(row.role), person=row.person)


def check_name(name: str) -> None:
    import re

    if not re.match(NAME_PATTERN, name):
        raise Invalid("letters, digits and _ . @ - only, at most 100", field="name")
