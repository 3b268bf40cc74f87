"""Users, roles and API tokens. Passwords are argon2 hashes; tokens are stored as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import Engine, insert, select, update

from rapport.db.tables import api_tokens, audit_log, users

_hasher = PasswordHasher()


class Role(StrEnum):
    admin = "admin"  # everything, including users, sources and the tracking plan
    marketer = "marketer"  # audiences, campaigns; reads data; sees PII masked
    sales = "sales"  # works leads routed to them
    viewer = "viewer"  # reads dashboards; PII masked


#: roles that may read unmasked PII (mobile, ID card, email, bank card)
PII_ROLES = frozenset({Role.admin})
#: how stale a token's ``last_used_at`` may get before a request writes it again
TOKEN_TOUCH = timedelta(minutes=1)


def now() -> datetime:
    return datetime.now(UTC)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(engine: Engine, username: str, password: str, role: Role | str) -> int:
    role = Role(role)
    with engine.begin() as conn:
        result = conn.execute(
            insert(users).values(
                username=username,
                password_hash=hash_password(password),
                role=role.value,
                disabled=False,
                created_at=now(),
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def authenticate(engine: Engine, username: str, password: str) -> dict[str, Any] | None:
    """The user row if the password matches and the user is enabled, else None."""
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
    if row is None or row["disabled"]:
        _hasher.hash(password)  # same work either way: no user enumeration by timing
        return None
    try:
        _hasher.verify(row["password_hash"], password)
    except (VerifyMismatchError, InvalidHashError):
        return None
    return dict(row)


def current_role(engine: Engine, username: str) -> Role | None:
    """The user's role now, or None if the user is gone or disabled."""
    with engine.connect() as conn:
        row = conn.execute(
            select(users.c.role).where(users.c.username == username, users.c.disabled.is_(False))
        ).first()
    return None if row is None else Role(row.role)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    engine: Engine, role: Role | str, name: str = "cli", user_id: int | None = None
) -> str:
    """A new bearer token; only its hash is stored, so it is shown once."""
    token = "rpt_" + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            insert(api_tokens).values(
                name=name,
                token_hash=_token_hash(token),
                role=Role(role).value,
                user_id=user_id,
                created_at=now(),
            )
        )
    return token


def token_principal(engine: Engine, token: str) -> dict[str, Any] | None:
    """``{"name", "role"}`` for a valid bearer token, else None. A token made for a user acts
    as that user (a lead an agent claims through the API is theirs in the console too)."""
    digest = _token_hash(token)
    with engine.begin() as conn:
        row = conn.execute(
            select(
                api_tokens.c.id,
                api_tokens.c.name,
                api_tokens.c.role,
                api_tokens.c.last_used_at,
                users.c.username,
            )
            .outerjoin(users, users.c.id == api_tokens.c.user_id)
            .where(api_tokens.c.token_hash == digest)
        ).first()
        if row is None:
            return None
        at, last = now(), row.last_used_at
        # a write per request would cost hot APIs (personalisation) a commit each: once a minute
        if last is None or (last if last.tzinfo else last.replace(tzinfo=UTC)) < at - TOKEN_TOUCH:
            conn.execute(
                update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=at)
            )
    return {"name": row.username or f"token:{row.name}", "role": row.role}


def audit(engine: Engine, actor: str, action: str, target: str = "", **detail: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(audit_log).values(
                at=now(), actor=actor, action=action, target=target, detail=detail or None
            )
        )
