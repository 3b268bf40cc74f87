"""People: look a person up by an identifier, list recent persons, and the 360° page —
identifiers and how they were linked (a graph and the history), merged attributes, what each
source says, and the behaviour timeline (filtered and paged through HTMX).

Admins also get the rights of the person: an export of everything as JSON and erasure (with a
confirmation step). Other roles see identifier values masked.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from rapport.accounts import Role
from rapport.catalog.pii import pii_fields
from rapport.db.tables import identifier_types
from rapport.identity import profile
from rapport.ingest.normalize import InvalidValue
from rapport.warehouse import WarehouseBusy
from rapport.web import api_persons
from rapport.web.auth import Principal, require
from rapport.web.console import data
from rapport.web.console.pages import Pager, flash, form_time, page, render

router = APIRouter(include_in_schema=False)

#: one colour per identifier type in the graph (cycled)
PALETTE = ("#6366f1", "#0ea5e9", "#10b981", "#f59e0b", "#8b5cf6", "#14b8a6", "#f97316", "#64748b")
MERGE_COLOUR = "#dc2626"
#: events per page of the timeline
TIMELINE_PAGE = 10


def _fields(ws: Any, principal: Principal) -> frozenset[str] | None:
    return None if principal.sees_pii else pii_fields(ws.db)


def _type_names(ws: Any) -> list[str]:
    """Identifier types for the lookup box, strongest first."""
    with ws.db.connect() as conn:
        rows = conn.execute(
            select(identifier_types.c.name).order_by(
                identifier_types.c.priority.desc(), identifier_types.c.name
            )
        )
        return [r.name for r in rows]


# -- the People page --------------------------------------------------------------------------
def _people(ws: Any, principal: Principal, pager: Pager) -> dict[str, Any]:
    rows, total = profile.recent_persons(
        ws, limit=pager.per_page, offset=pager.offset, wait=data.WAIT_S
    )
    fields = _fields(ws, principal)
    if fields is not None:
        rows = [
            {**r, "first_value": profile.mask_identifier(r["first_type"], r["first_value"], fields)}
            for r in rows
        ]
    return {"persons": rows, "pager": pager.with_total(total, len(rows)), "types": _type_names(ws)}


def _people_page(
    request: Request,
    principal: Principal,
    *,
    error: str | None = None,
    status_code: int = 200,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    pager = Pager.from_request(request, per_page=25)
    try:
        found = _people(request.app.state.ws, principal, pager)
    except WarehouseBusy as exc:
        found = {"persons": [], "pager": pager.with_total(0, 0), "types": []}
        error, status_code = str(exc), 503
    return render(
        request,
        "persons/index.html",
        status_code=status_code,
        title="People",
        error=error,
        form=form or {"type": "mobile", "value": ""},
        **found,
    )


@router.get("/persons", response_class=HTMLResponse)
async def people(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    return await run_in_threadpool(_people_page, request, who)


@router.get("/persons/lookup", response_class=HTMLResponse)
async def lookup(
    request: Request, type: str = "", value: str = "", who: Principal = Depends(page())
) -> Response:
    """Straight to the person's page, or back to the list saying why not."""
    form = {"type": type.strip(), "value": value}
    if not form["type"] or not value.strip():
        message = "Give an identifier type and a value to look up."
        return await run_in_threadpool(
            lambda: _people_page(request, who, error=message, status_code=422, form=form)
        )
    try:
        found = await run_in_threadpool(
            profile.find_person, request.app.state.ws, form["type"], value
        )
    except WarehouseBusy as exc:
        error, status_code = str(exc), 503
    except InvalidValue as exc:
        error, status_code = f"Not a usable {form['type']}: {exc}", 422
    except ValueError as exc:  # the rules' ConfigError: an unknown type
        error, status_code = str(exc), 422
    else:
        if found is not None:
            return RedirectResponse(f"/persons/{found}", status_code=303)
        error = f"No person has this {form['type']} (it was never seen, is blocked or erased)."
        status_code = 404
    return await run_in_threadpool(
        lambda: _people_page(request, who, error=error, status_code=status_code, form=form)
    )


# -- the 360° page ----------------------------------------------------------------------------
def _timeline(
    ws: Any, person_id: int, request: Request, principal: Principal, pager: Pager
) -> dict[str, Any]:
    params = request.query_params
    rows, total = profile.timeline(
        ws,
        person_id,
        event=params.get("event") or None,
        source=params.get("source") or None,
        start=form_time("from", params.get("from")),
        end=form_time("to", params.get("to")),
        limit=pager.per_page,
        offset=pager.offset,
        wait=data.WAIT_S,
    )
    fields = _fields(ws, principal)
    if fields is not None:
        rows = [profile.mask_event(r, fields) for r in rows]
    return {
        "person_id": person_id,
        "rows": rows,
        "pager": pager.with_total(total, len(rows)),
        "form": {k: params.get(k, "") for k in ("event", "source", "from", "to")},
    }


def graph_chart(graph: dict[str, Any]) -> dict[str, Any]:
    """ECharts force graph: identifiers as nodes (coloured by type), an edge per pair of
    identifiers records carried together (width: how many records; red: it merged persons)."""
    types = sorted({n["id_type"] for n in graph["nodes"]})
    index = {n["node_id"]: i for i, n in enumerate(graph["nodes"])}
    names: set[str] = set()
    nodes = []
    for n in graph["nodes"]:
        name = f"{n['id_type']}: {n['value']}"
        if name in names:  # ECharts needs unique names; masked values may collide
            name += f" #{n['node_id']}"
        names.add(name)
        records = int(n.get("records") or 0)
        nodes.append(
            {
                "name": name,
                "value": records,
                "category": types.index(n["id_type"]),
                "symbolSize": 14 + min(18, 4 * math.log2(1 + records)),
            }
        )
    links = [
        {
            "source": index[e["a"]],
            "target": index[e["b"]],
            "value": e["records"],
            "lineStyle": {
                "width": 1 + min(5.0, math.log2(max(1, e["records"]))),
                "color": MERGE_COLOUR if e["merge"] else "#94a3b8",
            },
        }
        for e in graph["edges"]
        if e["a"] in index and e["b"] in index
    ]
    return {
        "color": list(PALETTE),
        "tooltip": {},
        "legend": [{"data": types, "top": 0}],
        "series": [
            {
                "type": "graph",
                "layout": "force",
                "top": 40,
                "roam": True,
                "draggable": True,
                "categories": [{"name": t} for t in types],
                "data": nodes,
                "links": links,
                "label": {"show": True, "position": "right", "formatter": "{b}"},
                "force": {"repulsion": 260, "edgeLength": [60, 140]},
                "lineStyle": {"opacity": 0.8, "curveness": 0.08},
                "emphasis": {"focus": "adjacency"},
            }
        ],
    }


def _profile(ws: Any, person_id: int, request: Request, principal: Principal) -> dict[str, Any]:
    view = profile.person_view(ws, person_id, wait=data.WAIT_S)
    fields = _fields(ws, principal)
    if fields is not None:
        view = profile.mask_view(view, fields)
    pager = Pager.from_request(request, per_page=TIMELINE_PAGE)
    sources = {s["source"] for s in view["events"]["by_source"]}
    sources |= {s["source"] for s in view["slices"]}
    return {
        "view": view,
        "sources": sorted(sources),
        "graph": graph_chart(view["graph"]),
        "timeline": _timeline(ws, person_id, request, principal, pager),
    }


def _unavailable(request: Request, exc: Exception, status_code: int) -> HTMLResponse:
    return render(
        request,
        "error.html",
        status_code=status_code,
        title="No such person" if status_code in (404, 410) else "Try again",
        message=str(exc),
    )


@router.get("/persons/{person_id}", response_class=HTMLResponse)
async def person(person_id: int, request: Request, who: Principal = Depends(page())) -> Response:
    ws = request.app.state.ws
    try:
        found = await run_in_threadpool(_profile, ws, person_id, request, who)
    except profile.PersonMerged as exc:
        flash(request, f"Person {exc.person_id} was merged into person {exc.survivor}.")
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/persons/{exc.survivor}{query}", status_code=308)
    except profile.PersonNotFound as exc:
        return _unavailable(request, exc, exc.status)
    except WarehouseBusy as exc:
        return _unavailable(request, exc, 503)
    return render(request, "persons/detail.html", title=f"Person {person_id}", **found)


@router.get("/persons/{person_id}/timeline", response_class=HTMLResponse)
async def timeline(
    person_id: int, request: Request, who: Principal = Depends(page())
) -> HTMLResponse:
    """The timeline fragment (filters and paging swap it in place)."""
    pager = Pager.from_request(request, per_page=TIMELINE_PAGE)
    try:
        found = await run_in_threadpool(
            _timeline, request.app.state.ws, person_id, request, who, pager
        )
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc)) from None
    return render(request, "persons/_timeline.html", timeline=found)


@router.post("/persons/{person_id}/identifiers/{node_id}/detach")
async def detach(
    person_id: int,
    node_id: int,
    request: Request,
    reason: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    """Detach an identifier (blocked from now on); the person splits if it held parts together."""
    if len(reason.strip()) < 3:
        raise HTTPException(422, "reason: say why the identifier is taken away (kept in history)")
    out = await run_in_threadpool(
        api_persons.detach_or_explain,
        request.app.state.ws,
        person_id,
        node_id,
        who.name,
        reason.strip(),
    )
    flash(
        request,
        f"Identifier #{node_id} detached and blocked; {out['splits']} part(s) split off, "
        f"{out['records']} records re-resolved.",
    )
    target = f"/persons/{person_id}"
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.post("/persons/{person_id}/erase")
async def erase(
    person_id: int,
    request: Request,
    confirm: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    """Erase after the admin typed the person's id; back to the People page with the counts."""
    if confirm.strip() != str(person_id):
        raise HTTPException(422, f"confirm: type the person id {person_id} to confirm the erasure")
    result = await run_in_threadpool(
        api_persons.erase_or_explain, request.app.state.ws, person_id, who.name
    )
    wh = result["deleted"]["warehouse"]
    flash(
        request,
        f"Person {person_id} erased: {wh['events']} events, {wh['profile_slices']} profile "
        f"slices, {wh['identity_nodes']} identifiers, "
        f"{result['deleted']['event_log']['events']} log records.",
    )
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": "/persons"})
    return RedirectResponse("/persons", status_code=303)
