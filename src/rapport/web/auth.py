"""Who is calling: bearer tokens for the API, signed session cookies for the console.

Unsafe requests authenticated by the session cookie must carry the session's CSRF token
(``X-CSRF-Token`` header, which HTMX sends, or a ``csrf_token`` form field).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, status

from rapport import accounts
from rapport.accounts import Role
from rapport.catalog.pii import mask, mask_json_text, pii_fields

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    via_session: bool = False

    @property
    def sees_pii(self) -> bool:
        return self.role in accounts.PII_ROLES


def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


async def current_principal(request: Request) -> Principal | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        found = accounts.token_principal(request.app.state.ws.db, header[7:].strip())
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked bearer token")
        return Principal(found["name"], Role(found["role"]))
    user = request.session.get("user") if "session" in request.scope else None
    if not user:
        return None
    if request.method not in SAFE_METHODS:
        sent = request.headers.get("x-csrf-token")
        if sent is None and "form" in request.headers.get("content-type", ""):
            sent = str((await request.form()).get("csrf_token", ""))
        expected = request.session.get("csrf", "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
    # the cookie only names the user: a disabled user or a changed role takes effect at once
    role = accounts.current_role(request.app.state.ws.db, user["name"])
    if role is None:
        request.session.clear()
        return None
    return Principal(user["name"], role, via_session=True)


def require(*roles: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency: the caller must be signed in, with one of ``roles`` (any role if none).

    Admins pass every check.
    """

    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "authentication required: send 'Authorization: Bearer <token>' "
                "(rapport token create) or sign in to the console",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if roles and principal.role not in roles and principal.role is not Role.admin:
            allowed = ", ".join(r.value for r in roles)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role '{principal.role.value}' may not do this (needs: {allowed})",
            )
        request.state.principal = principal
        return principal

    return dependency


def redactor(request: Request) -> Callable[[Any], Any]:
    """Masks personal data in JSON-like values unless the caller's role may see it."""
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.sees_pii:
        return lambda obj: obj
    fields = pii_fields(request.app.state.ws.db)
    return lambda obj: mask_json_text(obj, fields) if isinstance(obj, str) else mask(obj, fields)
