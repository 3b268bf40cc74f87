"""``/api/tokens``: admins create, list, rotate and revoke API tokens.

A secret is shown once, in the answer that creates it (or rotates it); the list never carries
hashes or secrets. Every change is audited (``token.create``, ``token.rotate``,
``token.revoke``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Engine, select

from rapport import accounts
from rapport.accounts import Role, Scope
from rapport.db.tables import users
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/tokens", tags=["tokens"])

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    scopes: list[Scope]
    user: str | None = Field(None, description="The user the token acts as, if any.")
    status: str = Field(
        description="active | rotating (old secret in its grace period) | "
        "rotated | revoked | expired"
    )
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_from: int | None


class TokenIssued(TokenOut):
    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name = Field(description="A label, e.g. the system that uses the token.")
    role: Role = Role.viewer
    scopes: list[Scope] | None = Field(
        None, description="ingest, read, write, admin; default: read,write (+admin for admins)"
    )
    expires_in: str | None = Field(None, description="e.g. 90d; default: never")
    user: str | None = Field(None, description="Act as this console user (leads, audit).")


class TokenRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace: str = Field("0", description="How long the old secret keeps working, e.g. 1h.")


def _get(engine: Engine, token_id: int) -> TokenOut:
    try:
        return TokenOut.model_validate(accounts.find_token(engine, token_id))
    except accounts.TokenNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def list_tokens(engine: Engine) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in accounts.list_tokens(engine)]


def create(engine: Engine, body: TokenCreate, actor: str) -> TokenIssued:
    try:
        expires = None
        if body.expires_in:
            expires = accounts.now() + accounts.parse_duration("expires_in", body.expires_in)
        scopes = None if body.scopes is None else accounts.parse_scopes(list(body.scopes))
        user_id = None
        if body.user:
            with engine.connect() as conn:
                user_id = conn.execute(
                    select(users.c.id).where(users.c.username == body.user)
                ).scalar()
            if user_id is None:
                raise ValueError(f"user: no user named {body.user!r}")
        secret, token_id = accounts.issue_token(
            engine, body.role, body.name, user_id, scopes, expires
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    out = _get(engine, token_id)
    accounts.audit(
        engine,
        actor,
        "token.create",
        body.name,
        id=token_id,
        role=out.role.value,
        scopes=[s.value for s in out.scopes],
    )
    return TokenIssued(**out.model_dump(), token=secret)


def rotate(engine: Engine, token_id: int, grace: str, actor: str) -> TokenIssued:
    try:
        delta = accounts.parse_duration("grace", grace)
        secret, new_id = accounts.rotate_token(engine, token_id, delta)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    except accounts.TokenNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except accounts.TokenRejected as exc:
        raise HTTPException(409, str(exc)) from None
    out = _get(engine, new_id)
    accounts.audit(
        engine,
        actor,
        "token.rotate",
        out.name,
        id=token_id,
        new_id=new_id,
        grace_s=int(delta.total_seconds()),
    )
    return TokenIssued(**out.model_dump(), token=secret)


def revoke(engine: Engine, token_id: int, actor: str) -> TokenOut:
    try:
        done = accounts.revoke_token(engine, token_id)
    except accounts.TokenNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    accounts.audit(engine, actor, "token.revoke", done["name"], id=token_id)
    return _get(engine, token_id)


@router.get("", response_model=list[TokenOut])
def api_list(request: Request, _: Principal = Depends(require(Role.admin))) -> list[TokenOut]:
    """Every token, newest first: name, role, scopes, dates and status; never a secret."""
    return list_tokens(request.app.state.ws.db)


@router.post("", response_model=TokenIssued, status_code=201)
def api_create(
    body: TokenCreate, request: Request, who: Principal = Depends(require(Role.admin))
) -> TokenIssued:
    """A new token; its secret is in this answer only."""
    return create(request.app.state.ws.db, body, who.name)


@router.post("/{token_id}/rotate", response_model=TokenIssued)
def api_rotate(
    token_id: int,
    request: Request,
    body: Annotated[TokenRotate | None, Body()] = None,
    who: Principal = Depends(require(Role.admin)),
) -> TokenIssued:
    """A new secret for the token; the old one works for ``grace`` more, then fails with
    "token was rotated"."""
    grace = body.grace if body is not None else "0"
    return rotate(request.app.state.ws.db, token_id, grace, who.name)


@router.delete("/{token_id}", response_model=TokenOut)
def api_revoke(
    token_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> TokenOut:
    """Stop the token now (also the old secret of a rotation still in its grace period)."""
    return revoke(request.app.state.ws.db, token_id, who.name)
