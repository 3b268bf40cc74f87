"""``/api/placements`` (definitions) and ``GET /api/personalize/{placement}?person=…`` (what a
person sees).

The customer's web or app backend calls ``/api/personalize`` with an API token: any role reads
(a ``viewer`` token is enough), so a leaked token shows banners, not data. It is not public:
the answer tells which audience a person belongs to. Marketers edit placements.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rapport.accounts import Role, audit
from rapport.personalize import (
    PlacementError,
    PlacementIn,
    PlacementNotFound,
    choose,
    create_placement,
    delete_placement,
    get_placement,
    list_placements,
    resolve_person,
    update_placement,
)
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require

router = APIRouter(tags=["personalisation"])
EDIT = (Role.marketer,)
PERSON = Query(
    ...,
    min_length=1,
    max_length=300,
    description="a person key (`123`) or `<identifier type>:<value>` (`user_id:u-42`)",
)


@router.get("/api/placements")
def list_all(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    return list_placements(request.app.state.ws)


@router.post("/api/placements", status_code=status.HTTP_201_CREATED)
def create(
    body: PlacementIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    created = create_placement(ws, body)
    audit(ws.db, who.name, "placement.create", body.name, variants=len(body.variants))
    return created


@router.get("/api/placements/{name}")
def get_one(name: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    return get_placement(request.app.state.ws, name)


@router.put("/api/placements/{name}")
def replace(
    name: str, body: PlacementIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    """Replace the definition (default and every variant)."""
    ws = request.app.state.ws
    saved = update_placement(ws, name, body)
    audit(ws.db, who.name, "placement.update", name, variants=len(body.variants))
    return saved


@router.delete("/api/placements/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: str, request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    ws = request.app.state.ws
    delete_placement(ws, name)
    audit(ws.db, who.name, "placement.delete", name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def person_key(request: Request, person: str) -> int | None:
    """The person key; an identifier is looked up (once a minute) off the event loop."""
    if person.isdigit():
        return int(person)
    try:
        return await run_in_threadpool(resolve_person, request.app.state.ws, person)
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    except ValueError as exc:  # not key nor type:value, an unknown type, an unusable value
        raise HTTPException(422, f"person: {exc}") from None


@router.get(
    "/api/personalize/{placement}",
    responses={200: {"description": "placement, person_key, variant, audience, reason, content"}},
)
async def personalize(
    placement: str, request: Request, person: str = PERSON, _: Principal = Depends(require())
) -> Response:
    """The content of the highest-priority active variant whose audience holds the person,
    else the placement's default; ``variant`` and ``reason`` say which and why."""
    ws = request.app.state.ws
    found = choose(ws, placement, await person_key(request, person))
    return Response(orjson.dumps(found.as_dict()), media_type="application/json")


async def _failed(request: Request, exc: Exception) -> Response:
    if isinstance(exc, PlacementError):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)
    return JSONResponse({"detail": str(exc)}, status_code=404)


def setup(app: FastAPI) -> None:
    """The error answers (for the API and the console) and the console pages."""
    from rapport.web.console import placements as console_placements

    app.add_exception_handler(PlacementNotFound, _failed)
    app.add_exception_handler(PlacementError, _failed)
    app.include_router(console_placements.router)
