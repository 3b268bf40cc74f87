"""``/api/journeys``: journeys (CRUD, go live, pause), where persons stand, a person's journeys."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from rapport.accounts import Role, audit
from rapport.journeys import store
from rapport.journeys.model import JourneyError
from rapport.web.auth import Principal, require

router = APIRouter(tags=["journeys"])
EDITORS = (Role.marketer,)  # and admins


class JourneyIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    description: str = ""
    definition: dict[str, Any]


class JourneyPatch(BaseModel):
    description: str | None = None
    definition: dict[str, Any]


def _ref(ref: str) -> int | str:
    return int(ref) if ref.isdigit() else ref


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except store.JourneyNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except JourneyError as exc:
        raise HTTPException(422, exc.errors) from None


@router.get("/api/journeys")
def list_all(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    return store.list_all(request.app.state.ws)


@router.post("/api/journeys", status_code=201)
def create(
    request: Request, body: JourneyIn, who: Principal = Depends(require(*EDITORS))
) -> dict[str, Any]:
    ws = request.app.state.ws
    out = _call(store.create, ws, body.name, body.definition, body.description)
    audit(ws.db, who.name, "journey.create", body.name)
    return dict(out)


@router.get("/api/journeys/{ref}")
def get(request: Request, ref: str, _: Principal = Depends(require())) -> dict[str, Any]:
    return dict(_call(store.get, request.app.state.ws, _ref(ref)))


@router.put("/api/journeys/{ref}")
def update(
    request: Request, ref: str, body: JourneyPatch, who: Principal = Depends(require(*EDITORS))
) -> dict[str, Any]:
    ws = request.app.state.ws
    out = _call(store.update_definition, ws, _ref(ref), body.definition, body.description)
    audit(ws.db, who.name, "journey.update", out["name"])
    return dict(out)


@router.delete("/api/journeys/{ref}", status_code=204)
def delete(request: Request, ref: str, who: Principal = Depends(require(*EDITORS))) -> None:
    _call(store.remove, request.app.state.ws, _ref(ref))
    audit(request.app.state.ws.db, who.name, "journey.delete", ref)


@router.post("/api/journeys/{ref}/{action}")
def set_status(
    request: Request, ref: str, action: str, who: Principal = Depends(require(*EDITORS))
) -> dict[str, Any]:
    statuses = {"live": "live", "pause": "paused", "draft": "draft"}
    if action not in statuses:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "actions: live, pause, draft")
    ws = request.app.state.ws
    out = _call(store.set_status, ws, _ref(ref), statuses[action])
    audit(ws.db, who.name, f"journey.{action}", out["name"])
    return dict(out)


@router.get("/api/journeys/{ref}/positions")
def positions(
    request: Request, ref: str, state: str | None = None, _: Principal = Depends(require())
) -> dict[str, Any]:
    return dict(_call(store.positions, request.app.state.ws, _ref(ref), state))


@router.get("/api/persons/{person_key}/journeys")
def of_person(
    request: Request, person_key: int, _: Principal = Depends(require())
) -> list[dict[str, Any]]:
    return store.of_person(request.app.state.ws, person_key)
