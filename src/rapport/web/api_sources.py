"""``/api/sources``: list, create, change and delete sources. Secret keys are shown to admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from rapport.accounts import Role, audit
from rapport.ingest import sources
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/sources", tags=["sources"])


class SourceIn(BaseModel):
    name: str = Field(description="letters, digits, '_', '-', '.'")
    kind: str = Field("client", description="client | server | file | sql")
    validation_mode: str = Field("lenient", description="lenient | strict")
    allowed_events: list[str] | None = Field(None, description="only these track events")
    description: str = ""


class SourcePatch(BaseModel):
    description: str | None = None
    validation_mode: str | None = None
    allowed_events: list[str] | None = None
    priority: int | None = None


def _shown(source: dict[str, Any], principal: Principal) -> dict[str, Any]:
    if principal.role is not Role.admin:
        source = {**source, "secret_key": None if source["secret_key"] is None else "***"}
    return source


def _invalid(exc: sources.SourceError) -> HTTPException:
    code = status.HTTP_409_CONFLICT if isinstance(exc, sources.SourceExists) else 422
    return HTTPException(code, f"{exc.field}: {exc.message}")


@router.get("")
def list_sources(request: Request, who: Principal = Depends(require())) -> list[dict[str, Any]]:
    return [_shown(s, who) for s in sources.list_sources(request.app.state.ws.db)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_source(
    body: SourceIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    db = request.app.state.ws.db
    try:
        created = sources.create_source(db, **body.model_dump())
    except sources.SourceError as exc:
        raise _invalid(exc) from None
    audit(db, who.name, "source.create", body.name, kind=body.kind)
    return created


def _found(request: Request, name: str) -> dict[str, Any]:
    found = sources.get_source(request.app.state.ws.db, name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source named {name!r}")
    return found


@router.get("/{name}")
def get_source(name: str, request: Request, who: Principal = Depends(require())) -> dict[str, Any]:
    return _shown(_found(request, name), who)


@router.patch("/{name}")
def update_source(
    name: str, body: SourcePatch, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    _found(request, name)
    db = request.app.state.ws.db
    changes = body.model_dump(exclude_unset=True)
    try:
        updated = sources.update_source(db, name, **changes)
    except sources.SourceError as exc:
        raise _invalid(exc) from None
    audit(db, who.name, "source.update", name, **changes)
    assert updated is not None
    return updated


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_source(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    db = request.app.state.ws.db
    if not sources.delete_source(db, name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source named {name!r}")
    audit(db, who.name, "source.delete", name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
