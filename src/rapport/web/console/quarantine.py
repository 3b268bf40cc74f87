"""Quarantine: every rejected event or row with its reason; select and replay or discard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from rapport import accounts
from rapport.accounts import Role
from rapport.ingest import quarantine as store
from rapport.ingest.sources import list_sources
from rapport.web.auth import Principal, require
from rapport.web.console.pages import Pager, page, render, toast

router = APIRouter(include_in_schema=False)


def _filters(params: Any) -> dict[str, Any]:
    status = params.get("status", "open")
    if status not in (*store.STATUSES, "all"):
        status = "open"
    return {
        "source": params.get("source") or None,
        "reason": params.get("reason") or None,
        "status": None if status == "all" else status,
    }


def _listing(ws: Any, filters: dict[str, Any], pager: Pager) -> dict[str, Any]:
    entries = store.list_entries(ws.db, limit=pager.per_page, offset=pager.offset, **filters)
    return {
        "entries": entries,
        "pager": pager.with_total(None, len(entries)),
        "filters": filters,
        "reasons": store.counts_by_reason(ws.db),
        "sources": [s["name"] for s in list_sources(ws.db)],
        "statuses": store.STATUSES,
    }


@router.get("/quarantine", response_class=HTMLResponse)
async def quarantine_page(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    pager = Pager.from_request(request)
    filters = _filters(request.query_params)
    found = await run_in_threadpool(_listing, request.app.state.ws, filters, pager)
    return render(request, "quarantine/index.html", title="Quarantine", **found)


async def _selected(request: Request) -> list[int]:
    form = await request.form()
    try:
        ids = [int(str(v)) for v in form.getlist("ids")]
    except ValueError:
        raise HTTPException(422, "ids: every selected id must be a number") from None
    if not ids:
        raise HTTPException(422, "Select at least one entry first.")
    return ids


async def _refreshed(request: Request, message: str, level: str = "ok") -> Response:
    """The list as the page shows it now (the filters travel in the HX-Current-URL)."""
    from urllib.parse import parse_qsl, urlsplit

    current = urlsplit(request.headers.get("hx-current-url", ""))
    params = dict(parse_qsl(current.query))
    pager = Pager(1, 50, None, {k: v for k, v in params.items() if k != "page" and v})
    found = await run_in_threadpool(_listing, request.app.state.ws, _filters(params), pager)
    return toast(render(request, "quarantine/_list.html", **found), message, level)


@router.post("/quarantine/replay", response_class=HTMLResponse)
async def replay(request: Request, who: Principal = Depends(require(Role.admin))) -> Response:
    ids = await _selected(request)
    ws = request.app.state.ws
    summary = await run_in_threadpool(store.replay, ws, ids)
    accounts.audit(ws.db, who.name, "quarantine.replay", f"{len(ids)} entries")
    message = f"Replayed {summary['replayed']}; still failing {summary['still_failing']}."
    reasons = sorted({r["reason"] for r in summary["results"] if r.get("reason")})
    if reasons:
        message += f" Reasons: {', '.join(reasons)}."
    rows = summary.get("rows")
    if isinstance(rows, dict):
        message += f" Rows: {', '.join(f'{k} {v}' for k, v in rows.items())}."
    return await _refreshed(request, message, "ok" if not summary["still_failing"] else "warn")


@router.post("/quarantine/discard", response_class=HTMLResponse)
async def discard(request: Request, who: Principal = Depends(require(Role.admin))) -> Response:
    ids = await _selected(request)
    ws = request.app.state.ws
    changed = await run_in_threadpool(store.discard, ws.db, ids)
    accounts.audit(ws.db, who.name, "quarantine.discard", f"{changed} entries")
    return await _refreshed(request, f"Discarded {changed} entr{'y' if changed == 1 else 'ies'}.")
