"""Console pages of personalisation: the placements, the editor (a default and variants, each
for an audience picked from the existing ones) and "preview for a person". Plugged in by
``rapport.web.api_personalize.setup``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from starlette.datastructures import FormData

from rapport.accounts import Role, audit
from rapport.conditions.validate import context
from rapport.personalize import (
    PlacementIn,
    choose,
    create_placement,
    get_placement,
    list_placements,
    resolve_person,
    update_placement,
)
from rapport.web.auth import Principal, require
from rapport.web.console.pages import flash, page, problem, render

router = APIRouter(include_in_schema=False)
EDIT = (Role.marketer,)


def _audiences(ws: Any) -> list[str]:
    """Picker values: every segment, and ``segment/bucket`` for each bucket."""
    out = []
    for name, buckets in sorted(context(ws).segments.items()):
        out.append(name)
        out.extend(f"{name}/{b}" for b in sorted(buckets))
    return out


def _json(field: str, text: str) -> Any:
    try:
        return orjson.loads(text or "{}")
    except orjson.JSONDecodeError as exc:
        raise HTTPException(422, f"{field}: not valid JSON ({exc})") from None


def _from_form(form: FormData, name: str) -> PlacementIn:
    rows = zip(
        form.getlist("v_name"),
        form.getlist("v_audience"),
        form.getlist("v_priority"),
        form.getlist("v_active"),
        form.getlist("v_content"),
        strict=True,
    )
    variants = []
    for i, (v_name, picked, priority, active, content) in enumerate(rows):
        audience, _, bucket = str(picked).partition("/")
        variants.append(
            {
                "name": str(v_name).strip(),
                "audience": audience,
                "bucket": bucket or None,
                "priority": priority or 0,
                "active": active == "yes",
                "content": _json(f"variants[{i}].content", str(content)),
            }
        )
    fields = {
        "name": name,
        "description": str(form.get("description", "")).strip(),
        "default": _json("default", str(form.get("default", ""))),
        "variants": variants,
    }
    try:
        return PlacementIn.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None


@router.get("/placements", response_class=HTMLResponse)
async def placements_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    rows = await run_in_threadpool(list_placements, request.app.state.ws)
    return render(
        request,
        "placements/index.html",
        title="Placements",
        placements=rows,
        can_edit=who.role in (Role.admin, *EDIT),
    )


async def _editor(request: Request, who: Principal, found: dict[str, Any] | None) -> HTMLResponse:
    audiences = await run_in_threadpool(_audiences, request.app.state.ws)
    return render(
        request,
        "placements/edit.html",
        title=f"Placement {found['name']}" if found else "New placement",
        placement=found,
        audiences=audiences,
        can_edit=who.role in (Role.admin, *EDIT),
    )


@router.get("/placements/new", response_class=HTMLResponse)
async def new_placement(request: Request, who: Principal = Depends(page(*EDIT))) -> HTMLResponse:
    return await _editor(request, who, None)


@router.get("/placements/{name}", response_class=HTMLResponse)
async def edit_placement(
    name: str, request: Request, who: Principal = Depends(page())
) -> HTMLResponse:
    found = await run_in_threadpool(get_placement, request.app.state.ws, name)
    return await _editor(request, who, found)


@router.post("/placements", response_class=HTMLResponse)
async def create(request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    form = await request.form()
    body = _from_form(form, str(form.get("name", "")).strip())
    ws = request.app.state.ws
    await run_in_threadpool(create_placement, ws, body)
    audit(ws.db, who.name, "placement.create", body.name, variants=len(body.variants))
    flash(request, f"Placement {body.name} created.")
    return Response(status_code=200, headers={"HX-Redirect": f"/placements/{body.name}"})


@router.post("/placements/{name}", response_class=HTMLResponse)
async def save(name: str, request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    body = _from_form(await request.form(), name)
    ws = request.app.state.ws
    await run_in_threadpool(update_placement, ws, name, body)
    audit(ws.db, who.name, "placement.update", name, variants=len(body.variants))
    flash(request, f"Placement {name} saved.")
    return Response(status_code=200, headers={"HX-Redirect": f"/placements/{name}"})


@router.get("/placements/{name}/preview", response_class=HTMLResponse)
async def preview(
    name: str, request: Request, person: str = "", _: Principal = Depends(page())
) -> HTMLResponse:
    """Which variant the person gets now, as saved (a fragment)."""
    ws = request.app.state.ws
    try:
        key = await run_in_threadpool(resolve_person, ws, person)
    except ValueError as exc:
        raise HTTPException(422, f"person: {exc}") from None
    found = choose(ws, name, key)
    return render(request, "placements/_preview.html", choice=found.as_dict(), person=person)
