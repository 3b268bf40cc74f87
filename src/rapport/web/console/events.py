"""Event explorer: filter stored events by type, source and time; page; expand to the payload;
and a live tail of the event log that HTMX polls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rapport.ingest.sources import list_sources
from rapport.web.auth import Principal
from rapport.web.console import data
from rapport.web.console.pages import Pager, form_time, page, render

router = APIRouter(include_in_schema=False)


def _explore(ws: Any, request: Request, pager: Pager) -> dict[str, Any]:
    params = request.query_params
    filters: dict[str, Any] = {
        "event": params.get("event") or None,
        "source": params.get("source") or None,
        "since": form_time("from", params.get("from")),
        "until": form_time("to", params.get("to")),
    }
    rows, total = data.events(ws, limit=pager.per_page, offset=pager.offset, **filters)
    return {
        "rows": rows,
        "pager": pager.with_total(total, len(rows)),
        "form": {k: params.get(k, "") for k in ("event", "source", "from", "to")},
        "event_names": data.event_names(ws),
        "sources": [s["name"] for s in list_sources(ws.db)],
    }


@router.get("/events", response_class=HTMLResponse)
async def explorer(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    pager = Pager.from_request(request)
    found = await run_in_threadpool(_explore, request.app.state.ws, request, pager)
    tail_rows, last = await run_in_threadpool(data.tail, request.app.state.ws, None, 20)
    return render(
        request,
        "events/index.html",
        title="Event explorer",
        tail_rows=tail_rows,
        after=last,
        **found,
    )


@router.get("/events/tail", response_class=HTMLResponse)
async def tail(request: Request, after: int = 0, _: Principal = Depends(page())) -> HTMLResponse:
    """Log records after offset ``after``, newest first, as rows for the top of the tail."""
    rows, _last = await run_in_threadpool(data.tail, request.app.state.ws, after, 100)
    return render(request, "events/_tail_rows.html", tail_rows=rows, fresh=True)
