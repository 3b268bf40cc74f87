"""Journeys in the console: the list, a journey's page (the visual editor: the graph drawn as
a canvas with the number of persons at each step, a side panel per step, go live / pause, the
JSON definition as an advanced view) and where recent persons stand. The editor
(``static/journey_editor.js``) keeps the definition JSON as its state and saves it through
``/api/journeys``, so the API's checks (errors that name the node) are the editor's checks."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rapport.accounts import Role, audit
from rapport.delivery.channels import list_channels
from rapport.journeys import store
from rapport.journeys.model import JourneyError
from rapport.journeys.seed import definitions
from rapport.leads.rules import list_rules
from rapport.tags.definitions import list_tags
from rapport.web.auth import Principal, require
from rapport.web.console.pages import page, render, toast

router = APIRouter(include_in_schema=False)
EDITORS = (Role.marketer,)  # and admins
ACTIONS = {"live": "live", "pause": "paused", "draft": "draft"}


def _back(request: Request, target: str) -> Response:
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _failed(exc: Exception) -> HTTPException:
    if isinstance(exc, store.JourneyNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, JourneyError):
        return HTTPException(422, str(exc))
    if isinstance(exc, ValueError):  # bad JSON
        return HTTPException(422, f"definition: {exc}")
    raise exc


@router.get("/journeys", response_class=HTMLResponse)
def index(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    ws = request.app.state.ws
    example = json.dumps(definitions()["welcome"], indent=2)
    return render(
        request,
        "journeys/index.html",
        journeys=store.list_all(ws),
        example=example,
        can_edit=who.role in (*EDITORS, Role.admin),
    )


def _editor(
    request: Request, journey: dict[str, Any] | None, counts: dict[str, int], can_edit: bool
) -> str:
    """What the editor script starts from (a ``data-editor`` attribute): the definition, the
    persons per node, and the channels, lead rules and manual tags its pickers offer."""
    ws = request.app.state.ws
    blank = {"entry": {"event": ""}, "entry_rule": "once", "nodes": []}
    config = {
        "id": journey["id"] if journey else None,
        "name": journey["name"] if journey else "",
        "description": journey["description"] if journey else "",
        "status": journey["status"] if journey else "draft",
        "definition": journey["definition"] if journey else blank,
        "counts": counts,
        "channels": [{"name": c["name"], "kind": c["kind"]} for c in list_channels(ws.db)],
        "lead_rules": [r["name"] for r in list_rules(ws.db)],
        "manual_tags": [
            {"name": t["name"], "values": (t.get("definition") or {}).get("values") or []}
            for t in list_tags(ws.db)
            if t.get("kind") == "manual"
        ],
        "can_edit": can_edit,
    }
    return json.dumps(config)


@router.get("/journeys/new", response_class=HTMLResponse)
def new(request: Request, who: Principal = Depends(page(*EDITORS))) -> HTMLResponse:
    """An empty canvas: the journey is created (as a draft) by the editor's first save."""
    return render(
        request,
        "journeys/detail.html",
        journey=None,
        nodes=[],
        counts={},
        statuses={},
        positions=[],
        editor=_editor(request, None, {}, True),
        definition_json="",
        can_edit=True,
    )


@router.get("/journeys/{ref}", response_class=HTMLResponse)
def detail(request: Request, ref: str, who: Principal = Depends(page())) -> HTMLResponse:
    ws = request.app.state.ws
    key: int | str = int(ref) if ref.isdigit() else ref
    try:
        journey = store.get(ws, key)
    except store.JourneyNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    where = store.positions(ws, journey["id"], limit=50)
    can_edit = who.role in (*EDITORS, Role.admin)
    return render(
        request,
        "journeys/detail.html",
        journey=journey,
        nodes=journey["definition"].get("nodes") or [],
        counts=where["nodes"],
        statuses=where["statuses"],
        positions=where["positions"],
        editor=_editor(request, journey, where["nodes"], can_edit),
        definition_json=json.dumps(journey["definition"], indent=2),
        can_edit=can_edit,
    )


@router.post("/journeys")
async def create(
    request: Request,
    name: str = Form(""),
    description: str = Form(""),
    definition: str = Form("{}"),
    who: Principal = Depends(require(*EDITORS)),
) -> Response:
    ws = request.app.state.ws
    try:
        body = json.loads(definition)
        made = await run_in_threadpool(store.create, ws, name.strip(), body, description)
    except (ValueError, LookupError) as exc:
        raise _failed(exc) from None
    audit(ws.db, who.name, "journey.create", made["name"])
    return toast(_back(request, f"/journeys/{made['id']}"), f"Journey {made['name']} created.")


@router.post("/journeys/{jid}")
async def update(
    request: Request,
    jid: int,
    description: str = Form(""),
    definition: str = Form("{}"),
    who: Principal = Depends(require(*EDITORS)),
) -> Response:
    ws = request.app.state.ws
    try:
        body = json.loads(definition)
        saved = await run_in_threadpool(store.update_definition, ws, jid, body, description)
    except (ValueError, LookupError) as exc:
        raise _failed(exc) from None
    audit(ws.db, who.name, "journey.update", saved["name"])
    return toast(_back(request, f"/journeys/{jid}"), f"Journey {saved['name']} saved.")


@router.post("/journeys/{jid}/{action}")
async def set_status(
    request: Request, jid: int, action: str, who: Principal = Depends(require(*EDITORS))
) -> Response:
    if action not in ACTIONS:
        raise HTTPException(404, "actions: live, pause, draft")
    ws = request.app.state.ws
    try:
        saved: dict[str, Any] = await run_in_threadpool(store.set_status, ws, jid, ACTIONS[action])
    except (ValueError, LookupError) as exc:
        raise _failed(exc) from None
    audit(ws.db, who.name, f"journey.{action}", saved["name"])
    return toast(
        _back(request, f"/journeys/{jid}"), f"Journey {saved['name']} is {saved['status']}."
    )
