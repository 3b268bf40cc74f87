"""Tracking plan page: event types with their properties, user and item properties; create,
edit and delete them through HTMX forms; YAML export and import.

Every write goes through ``rapport.catalog`` (validation, audit, cache invalidation) and answers
with the re-rendered plan, so the page always shows what is stored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport import catalog
from rapport.accounts import Role
from rapport.web.auth import Principal, require
from rapport.web.console.pages import page, problem, render, toast

router = APIRouter(include_in_schema=False)


def _context(ws: Any) -> dict[str, Any]:
    return {
        "plan": catalog.get_plan(ws.db),
        "data_types": [t.value for t in catalog.DataType],
        "kinds": [k.value for k in catalog.EventKind],
    }


def _body(request: Request, message: str) -> Response:
    response = render(request, "plan/_body.html", **_context(request.app.state.ws))
    return toast(response, message)


async def _write(request: Request, message: str, fn: Any, *args: Any) -> Response:
    """Run a catalogue write in a thread; its refusals become 4xx answers naming the field."""
    try:
        await run_in_threadpool(fn, *args)
    except catalog.PlanError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return _body(request, message)


def _model(cls: Any, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None


def _typed(raw: str, data_type: str, field: str) -> Any:
    """A form value read as the property's data type."""
    try:
        if data_type == "integer":
            return int(raw)
        if data_type == "number":
            return float(raw)
    except ValueError:
        raise HTTPException(422, f"{field}: {raw!r} is not a {data_type}") from None
    return raw


def _property_fields(form: dict[str, Any]) -> dict[str, Any]:
    """Form fields -> PropertyBody fields (allowed values as a comma-separated list)."""
    data_type = str(form.get("type", "string"))
    allowed_raw = str(form.get("allowed_values", "")).strip()
    allowed = (
        [
            _typed(v.strip(), data_type, "allowed_values")
            for v in allowed_raw.split(",")
            if v.strip()
        ]
        if allowed_raw
        else None
    )
    bounds = {
        key: _typed(str(form[key]).strip(), "number", key)
        if str(form.get(key, "")).strip()
        else None
        for key in ("min", "max")
    }
    return {
        "name": str(form.get("name", "")).strip(),
        "type": data_type,
        "description": str(form.get("description", "")).strip(),
        "required": form.get("required") == "on",
        "pii": form.get("pii") == "on",
        "allowed_values": allowed,
        **bounds,
    }


@router.get("/plan", response_class=HTMLResponse)
async def plan_page(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_context, request.app.state.ws)
    return render(request, "plan/index.html", title="Tracking plan", **found)


@router.get("/plan/export")
async def export(request: Request, _: Principal = Depends(page())) -> Response:
    text = await run_in_threadpool(catalog.export_plan, request.app.state.ws.db)
    return Response(
        text.encode("utf-8"),
        media_type="application/yaml; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="tracking-plan.yaml"'},
    )


@router.post("/plan/import", response_class=HTMLResponse)
async def import_yaml(
    request: Request,
    file: UploadFile = File(...),
    replace: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    raw = await file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(422, f"{file.filename}: not UTF-8 text (byte {exc.start})") from None
    try:
        summary = await run_in_threadpool(
            lambda: catalog.import_plan(
                request.app.state.ws.db, text, replace=replace == "on", actor=who.name
            )
        )
    except catalog.PlanError as exc:
        raise HTTPException(exc.status, f"{file.filename}: {exc}") from None
    counts = summary.model_dump()
    message = (
        f"Imported {file.filename}: events {counts['events_created']} new, "
        f"{counts['events_updated']} changed, {counts['events_deleted']} deleted; properties "
        f"{counts['properties_created']} new, {counts['properties_updated']} changed, "
        f"{counts['properties_deleted']} deleted."
    )
    return _body(request, message)


@router.post("/plan/events", response_class=HTMLResponse)
async def create_event(
    request: Request,
    name: str = Form(""),
    kind: str = Form("user"),
    description: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    body = _model(
        catalog.EventTypeBody, name=name.strip(), kind=kind, description=description.strip()
    )
    ws = request.app.state.ws
    return await _write(
        request,
        f"Event type {body.name} created.",
        catalog.create_event_type,
        ws.db,
        body,
        who.name,
    )


@router.post("/plan/events/{name}", response_class=HTMLResponse)
async def update_event(
    name: str,
    request: Request,
    kind: str = Form("user"),
    description: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    patch = _model(catalog.EventTypePatch, kind=kind, description=description.strip())
    ws = request.app.state.ws
    return await _write(
        request,
        f"Event type {name} saved.",
        catalog.update_event_type,
        ws.db,
        name,
        patch,
        who.name,
    )


@router.post("/plan/events/{name}/delete", response_class=HTMLResponse)
async def delete_event(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    ws = request.app.state.ws
    return await _write(
        request, f"Event type {name} deleted.", catalog.delete_event_type, ws.db, name, who.name
    )


@router.post("/plan/properties", response_class=HTMLResponse)
async def create_property(
    request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    form = dict(await request.form())
    fields = _property_fields(form)
    scope = str(form.get("scope", "event"))
    ws = request.app.state.ws
    if scope == "user":
        body = _model(catalog.PropertyBody, **fields)
        return await _write(
            request,
            f"User property {body.name} added.",
            catalog.add_user_property,
            ws.db,
            body,
            who.name,
        )
    if scope == "item":
        item = _model(
            catalog.ItemPropertyBody, item_type=str(form.get("item_type", "")).strip(), **fields
        )
        return await _write(
            request,
            f"Item property {item.item_type}.{item.name} added.",
            catalog.add_item_property,
            ws.db,
            item,
            who.name,
        )
    event = str(form.get("event", "")) or None
    body = _model(catalog.PropertyBody, **fields)
    return await _write(
        request,
        f"Property {body.name} added to {event or 'all events'}.",
        catalog.add_event_property,
        ws.db,
        event,
        body,
        who.name,
    )


@router.post("/plan/properties/{prop_id}", response_class=HTMLResponse)
async def update_property(
    prop_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    form = dict(await request.form())
    fields = _property_fields(form)
    if "item_type" in form:
        fields["item_type"] = str(form["item_type"]).strip()
    patch = _model(catalog.PropertyPatch, **fields)
    ws = request.app.state.ws
    return await _write(
        request,
        f"Property {patch.name} saved.",
        catalog.update_property,
        ws.db,
        prop_id,
        patch,
        who.name,
    )


@router.post("/plan/properties/{prop_id}/delete", response_class=HTMLResponse)
async def delete_property(
    prop_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    ws = request.app.state.ws
    return await _write(
        request, "Property deleted.", catalog.delete_property, ws.db, prop_id, who.name
    )
