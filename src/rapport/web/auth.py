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
from rapport.accounts import Role, Scope
from rapport.catalog.pii import mask, mask_json_text, pii_fields

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    via_session: bool = False
    #: a bearer token's scopes; None for a console session (bounded by its role only)
    scopes: frozenset[Scope] | None = None

    def allows(self, scope: Scope) -> bool:
        if self.scopes is None or scope in self.scopes:
            return True
        return Scope.admin in self.scopes and scope in (Scope.read, Scope.write)

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
        try:
            found = accounts.token_principal(request.app.state.ws.db, header[7:].strip())
        except accounts.TokenRejected as exc:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
        if found is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked bearer token")
        return Principal(found["name"], Role(found["role"]), scopes=found["scopes"])
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


def require(
    *roles: Role, scope: Scope | None = None
) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A dependency: the caller must be signed in, with one of ``roles`` (any role if none).

    Admins pass every check. A bearer token also needs a scope: ``admin`` for admin-only
    routes, else ``read`` for safe methods and ``write`` for the others (``scope`` overrides
    this, e.g. ``read`` for a query sent by POST).
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
        needed = scope or (
            Scope.admin
            if roles == (Role.admin,)
            else Scope.read
            if request.method in SAFE_METHODS
            else Scope.write
        )
        if not principal.allows(needed):
            held = accounts.format_scopes(principal.scopes or frozenset()) or "none"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this token lacks the '{needed.value}' scope (it has: {held}); "
                f"create one with: rapport token create --scopes {needed.value}",
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
