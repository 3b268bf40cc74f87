"""Console users: admins list, create and change them (role, disabled, password)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from rapport import accounts
from rapport.accounts import Role
from rapport.db.tables import users
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/users", tags=["users"])

Username = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\s/]+$"),
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=200)]


class UserOut(BaseModel):
    username: str
    role: Role
    disabled: bool
    created_at: datetime

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """The DB keeps naive UTC; the answer says so (RFC 3339 needs an offset)."""
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username = Field(description="Login name; no spaces or slashes.")
    password: Password = Field(description="At least 8 characters.")
    role: Role = Role.viewer


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: bool | None = None
    password: Password | None = None


def list_users(engine: Engine) -> list[UserOut]:
    with engine.connect() as conn:
        rows = conn.execute(select(users).order_by(users.c.username)).mappings().all()
    return [UserOut.model_validate(dict(r)) for r in rows]


def get_user(engine: Engine, username: str) -> UserOut:
    with engine.connect() as conn:
        row = conn.execute(select(users).where(users.c.username == username)).mappings().first()
    if row is None:
        raise HTTPException(404, f"no user named {username!r}")
    return UserOut.model_validate(dict(row))


def add_user(engine: Engine, body: UserCreate, actor: str) -> UserOut:
    try:
        accounts.create_user(engine, body.username, body.password, body.role)
    except IntegrityError:
        raise HTTPException(409, f"username: {body.username!r} is taken") from None
    accounts.audit(engine, actor, "user.create", body.username, role=body.role.value)
    return get_user(engine, body.username)


def change_user(engine: Engine, username: str, body: UserPatch, actor: str) -> UserOut:
    """Apply a patch; refuse one that would leave no enabled admin (nobody could fix it)."""
    before = get_user(engine, username)
    values: dict[str, object] = {}
    if body.role is not None:
        values["role"] = body.role.value
    if body.disabled is not None:
        values["disabled"] = body.disabled
    if body.password is not None:
        values["password_hash"] = accounts.hash_password(body.password)
    if not values:
        return before
    with engine.begin() as conn:
        conn.execute(update(users).where(users.c.username == username).values(**values))
        admins = conn.execute(
            select(func.count())
            .select_from(users)
            .where(users.c.role == Role.admin.value, users.c.disabled.is_(False))
        ).scalar_one()
        if admins == 0:  # raising inside begin() rolls the update back
            raise HTTPException(409, "this change would leave no enabled admin")
    changed = sorted(k if k != "password_hash" else "password" for k in values)
    accounts.audit(engine, actor, "user.update", username, fields=changed)
    return get_user(engine, username)


@router.get("", response_model=list[UserOut])
def api_list(request: Request, _: Principal = Depends(require(Role.admin))) -> list[UserOut]:
    return list_users(request.app.state.ws.db)


@router.post("", response_model=UserOut, status_code=201)
def api_create(
    body: UserCreate, request: Request, who: Principal = Depends(require(Role.admin))
) -> UserOut:
    return add_user(request.app.state.ws.db, body, who.name)


@router.get("/{username}", response_model=UserOut)
def api_get(
    username: str, request: Request, _: Principal = Depends(require(Role.admin))
) -> UserOut:
    return get_user(request.app.state.ws.db, username)


@router.patch("/{username}", response_model=UserOut)
def api_patch(
    username: str, body: UserPatch, request: Request, who: Principal = Depends(require(Role.admin))
) -> UserOut:
    return change_user(request.app.state.ws.db, username, body, who.name)
