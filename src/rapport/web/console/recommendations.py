"""The Recommendations page: the last model build and offline evaluation, and the four lists
of one person looked up by key or identifier."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rapport.recommend.build import last_runs
from rapport.recommend.model import KINDS
from rapport.web.api_recommend import listing, resolve_person, served_model
from rapport.web.auth import Principal
from rapport.web.console.pages import page, render

router = APIRouter(include_in_schema=False)


def _context(request: Request, person: str) -> dict[str, Any]:
    ws = request.app.state.ws
    found: dict[str, Any] = {"runs": last_runs(ws.warehouse), "person": person, "lists": {}}
    if not person:
        return found
    try:
        model = served_model(request)
        key = resolve_person(ws, model, person)
    except HTTPException as exc:
        return {**found, "error": exc.detail}
    lists = {kind: listing(model, kind, key, None, 10) for kind in KINDS}
    return {**found, "key": key, "lists": lists}


@router.get("/recommendations", response_class=HTMLResponse)
async def recommendations_page(
    request: Request, person: str = "", _: Principal = Depends(page())
) -> HTMLResponse:
    found = await run_in_threadpool(_context, request, person.strip())
    return render(request, "recommend/index.html", title="Recommendations", **found)
