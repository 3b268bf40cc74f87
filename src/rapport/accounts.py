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


class Scope(StrEnum):
    """What a bearer token may do, within what its role allows."""

    ingest = "ingest"  # post events to the collector (/v1)
    read = "read"  # safe methods (GET) of the API
    write = "write"  # unsafe methods (POST, PUT, PATCH, DELETE) of the API
    admin = "admin"  # admin-only routes (users, tokens, sources, ...); implies read and write


def default_scopes(role: Role | str) -> frozenset[Scope]:
    """What a token gets when no scopes are asked for: all its role can use but ``ingest``."""
    if Role(role) is Role.admin:
        return frozenset({Scope.read, Scope.write, Scope.admin})
    return frozenset({Scope.read, Scope.write})


def parse_scopes(raw: str | list[str] | tuple[str, ...]) -> frozenset[Scope]:
    """``"ingest,read"`` (or a list) as scopes; an unknown name is a ValueError naming it."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    found: set[Scope] = set()
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            found.add(Scope(part))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"scopes: unknown scope {part!r} (known: {known})") from None
    if not found:
        raise ValueError("scopes: give at least one of " + ", ".join(s.value for s in Scope))
    return frozenset(found)


def format_scopes(scopes: frozenset[Scope] | set[Scope]) -> str:
    order = list(Scope)
    return ",".join(s.value for s in sorted(scopes, key=order.index))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(field: str, raw: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"30d"``, ``"2w"`` or ``"0"``; a ValueError names the
    field."""
    text = raw.strip().lower()
    if text == "0":
        return timedelta(0)
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit():
        raise ValueError(f"{field}: {raw!r} is not a duration like 90s, 15m, 1h, 30d or 2w")
    return timedelta(seconds=int(number) * _UNITS[unit])


class TokenRejected(Exception):
    """A token that exists but may no longer be used; the message says why."""


class TokenNotFound(LookupError):
    pass


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def issue_token(
    engine: Engine,
    role: Role | str,
    name: str = "cli",
    user_id: int | None = None,
    scopes: frozenset[Scope] | None = None,
    expires_at: datetime | None = None,
    rotated_from: int | None = None,
) -> tuple[str, int]:
    """A new bearer token and its id; only its hash is stored, so it is shown once."""
    role = Role(role)
    scopes = default_scopes(role) if scopes is None else scopes
    if Scope.admin in scopes and role is not Role.admin:
        raise ValueError(f"scopes: 'admin' needs role admin (the token's role is {role.value!r})")
    token = "rpt_" + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        result = conn.execute(
            insert(api_tokens).values(
                name=name,
                token_hash=_token_hash(token),
                role=role.value,
                user_id=user_id,
                created_at=now(),
                scopes=format_scopes(scopes),
                expires_at=expires_at,
                rotated_from=rotated_from,
            )
        )
        return token, int(result.inserted_primary_key[0])  # type: ignore[index]


def create_token(
    engine: Engine,
    role: Role | str,
    name: str = "cli",
    user_id: int | None = None,
    scopes: frozenset[Scope] | None = None,
    expires_at: datetime | None = None,
) -> str:
    """A new bearer token (see ``issue_token``); scopes default to what the role implies."""
    return issue_token(engine, role, name, user_id, scopes, expires_at)[0]


def token_principal(engine: Engine, token: str) -> dict[str, Any] | None:
    """``{"name", "role", "scopes", "token"}`` for a usable bearer token, None for an unknown
    one; ``TokenRejected`` (saying why) for a revoked, rotated or expired one. A token made for
    a user acts as that user (a lead an agent claims through the API is theirs in the console
    too)."""
    digest = _token_hash(token)
    with engine.begin() as conn:
        row = conn.execute(
            select(
                api_tokens.c.id,
                api_tokens.c.name,
                api_tokens.c.role,
                api_tokens.c.scopes,
                api_tokens.c.expires_at,
                api_tokens.c.revoked_at,
                api_tokens.c.last_used_at,
                users.c.username,
            )
            .outerjoin(users, users.c.id == api_tokens.c.user_id)
            .where(api_tokens.c.token_hash == digest)
        ).first()
        if row is None:
            return None
        at, last = now(), _aware(row.last_used_at)
        revoked, expires = _aware(row.revoked_at), _aware(row.expires_at)
        if revoked is not None and revoked <= at:
            successor = conn.execute(
                select(api_tokens.c.id).where(api_tokens.c.rotated_from == row.id)
            ).first()
            if successor is not None:
                raise TokenRejected(
                    f"token was rotated: {row.name!r} has a new secret since "
                    f"{revoked:%Y-%m-%d %H:%M:%S} UTC"
                )
            raise TokenRejected(
                f"token was revoked: {row.name!r} at {revoked:%Y-%m-%d %H:%M:%S} UTC"
            )
        if expires is not None and expires <= at:
            raise TokenRejected(f"token expired: {row.name!r} at {expires:%Y-%m-%d %H:%M:%S} UTC")
        # a write per request would cost hot APIs (personalisation) a commit each: once a minute
        if last is None or last < at - TOKEN_TOUCH:
            conn.execute(
                update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=at)
            )
    return {
        "name": row.username or f"token:{row.name}",
        "role": row.role,
        "scopes": parse_scopes(row.scopes),
        "token": row.name,
    }


def token_status(row: Any, at: datetime | None = None) -> str:
    """active | rotated | revoked | expired, from an ``api_tokens`` row (``successor``: the id
    of the token that replaced it, if the caller selected it)."""
    at = at or now()
    revoked, expires = _aware(row["revoked_at"]), _aware(row["expires_at"])
    if revoked is not None:
        if row.get("successor") is not None:
            return "rotated" if revoked <= at else "rotating"
        if revoked <= at:
            return "revoked"
    if expires is not None and expires <= at:
        return "expired"
    return "active"


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """Every token without its hash: name, role, scopes, dates, status (newest first)."""
    successor = api_tokens.alias("successor")
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                api_tokens.c.id,
                api_tokens.c.name,
                api_tokens.c.role,
                api_tokens.c.scopes,
                users.c.username.label("user"),
                api_tokens.c.created_at,
                api_tokens.c.last_used_at,
                api_tokens.c.expires_at,
                api_tokens.c.revoked_at,
                api_tokens.c.rotated_from,
                successor.c.id.label("successor"),
            )
            .outerjoin(users, users.c.id == api_tokens.c.user_id)
            .outerjoin(successor, successor.c.rotated_from == api_tokens.c.id)
            .order_by(api_tokens.c.id.desc())
        ).mappings()
        out = []
        at = now()
        for r in rows:
            item = dict(r)
            for key in ("created_at", "last_used_at", "expires_at", "revoked_at"):
                item[key] = _aware(item[key])
            item["scopes"] = format_scopes(parse_scopes(item["scopes"])).split(",")
            item["status"] = token_status(item, at)
            item.pop("successor")
            out.append(item)
    return out


def find_token(engine: Engine, ref: str | int) -> dict[str, Any]:
    """A token by id (an int), or the active token of a name (a str; refused if several
    active tokens share it)."""
    tokens = list_tokens(engine)
    if isinstance(ref, int):
        for item in tokens:
            if item["id"] == ref:
                return item
        raise TokenNotFound(f"no token with id {ref}")
    live = [t for t in tokens if t["name"] == ref and t["status"] == "active"]
    if not live:
        raise TokenNotFound(f"no active token named {ref!r} (see `rapport token list`)")
    if len(live) > 1:
        ids = ", ".join(str(t["id"]) for t in live)
        raise TokenNotFound(f"{len(live)} active tokens are named {ref!r} (ids {ids}): give --id")
    return live[0]


def rotate_token(engine: Engine, token_id: int, grace: timedelta = timedelta(0)) -> tuple[str, int]:
    """A new secret for the token (same name, role, scopes, user and expiry); the old secret
    keeps working for ``grace``, then fails with "token was rotated"."""
    with engine.begin() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).mappings().first()
        if row is None:
            raise TokenNotFound(f"no token with id {token_id}")
        if row["revoked_at"] is not None:
            raise TokenRejected(
                f"token {row['name']!r} (id {token_id}) was already revoked or rotated"
            )
        expires = _aware(row["expires_at"])
        if expires is not None and expires <= now():
            raise TokenRejected(
                f"token {row['name']!r} (id {token_id}) expired at {expires:%Y-%m-%d %H:%M:%S} "
                "UTC: create a new one (rapport token create)"
            )
        conn.execute(
            update(api_tokens)
            .where(api_tokens.c.id == token_id)
            .values(revoked_at=now() + max(grace, timedelta(0)))
        )
    return issue_token(
        engine,
        row["role"],
        row["name"],
        row["user_id"],
        parse_scopes(row["scopes"]),
        _aware(row["expires_at"]),
        rotated_from=token_id,
    )


def revoke_token(engine: Engine, token_id: int) -> dict[str, Any]:
    """Stop a token now (a rotated token still in its grace period stops too)."""
    at = now()
    with engine.begin() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).mappings().first()
        if row is None:
            raise TokenNotFound(f"no token with id {token_id}")
        revoked = _aware(row["revoked_at"])
        if revoked is None or revoked > at:
            conn.execute(
                update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=at)
            )
    return {"id": token_id, "name": row["name"], "revoked_at": at}


def audit(engine: Engine, actor: str, action: str, target: str = "", **detail: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(audit_log).values(
                at=now(), actor=actor, action=action, target=target, detail=detail or None
            )
        )
