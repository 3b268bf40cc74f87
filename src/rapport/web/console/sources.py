"""Sources: list, create (keys shown once, with a copy-paste snippet), detail with import runs
and the data-quality report drawn as charts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from rapport import accounts
from rapport.accounts import Role
from rapport.db.tables import import_runs
from rapport.ingest import sources as store
from rapport.web.auth import Principal, require
from rapport.web.console import charts
from rapport.web.console.pages import Pager, page, render, toast

router = APIRouter(include_in_schema=False)


def _with_counts(ws: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**row, "events": ws.log.count(source=row["name"])} for row in rows]


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/sources", response_class=HTMLResponse)
async def list_page(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    ws = request.app.state.ws
    rows = await run_in_threadpool(lambda: _with_counts(ws, store.list_sources(ws.db)))
    return render(request, "sources/index.html", title="Sources", sources=rows)


@router.post("/sources", response_class=HTMLResponse)
async def create(
    request: Request,
    name: str = Form(""),
    kind: str = Form("client"),
    validation_mode: str = Form("lenient"),
    allowed_events: str = Form(""),
    description: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    ws = request.app.state.ws
    try:
        created = await run_in_threadpool(
            store.create_source,
            ws.db,
            name.strip(),
            kind,
            validation_mode,
            [allowed_events] if allowed_events.strip() else None,
            description.strip(),
        )
    except store.SourceError as exc:
        raise HTTPException(422, str(exc)) from None
    accounts.audit(ws.db, who.name, "source.create", created["name"], kind=kind)
    rows = await run_in_threadpool(lambda: _with_counts(ws, store.list_sources(ws.db)))
    response = render(
        request, "sources/_created.html", source=created, sources=rows, base=_base_url(request)
    )
    return toast(response, f"Source {created['name']} created.")


def _detail(ws: Any, name: str, pager: Pager) -> dict[str, Any]:
    source = store.get_source(ws.db, name)
    if source is None:
        raise HTTPException(404, f"no source named {name!r}")
    with ws.db.connect() as conn:
        where = import_runs.c.source == name
        total = conn.execute(
            select(func.count()).select_from(import_runs).where(where)
        ).scalar_one()
        runs = (
            conn.execute(
                select(import_runs)
                .where(where)
                .order_by(import_runs.c.id.desc())
                .limit(pager.per_page)
                .offset(pager.offset)
            )
            .mappings()
            .all()
        )
    return {
        "source": source,
        "events": ws.log.count(source=name),
        "runs": runs,
        "pager": pager.with_total(total, len(runs)),
        "quality": charts.quality(ws, name),
    }


@router.get("/sources/{name}", response_class=HTMLResponse)
async def detail(name: str, request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    pager = Pager.from_request(request, per_page=20)
    found = await run_in_threadpool(_detail, request.app.state.ws, name, pager)
    return render(request, "sources/detail.html", title=f"Source · {name}", **found)


@router.post("/sources/{name}", response_class=HTMLResponse)
async def update(
    name: str,
    request: Request,
    validation_mode: str = Form("lenient"),
    allowed_events: str = Form(""),
    description: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    ws = request.app.state.ws
    try:
        found = await run_in_threadpool(
            lambda: store.update_source(
                ws.db,
                name,
                validation_mode=validation_mode,
                allowed_events=[allowed_events] if allowed_events.strip() else None,
                description=description.strip(),
            )
        )
    except store.SourceError as exc:
        raise HTTPException(422, str(exc)) from None
    if found is None:
        raise HTTPException(404, f"no source named {name!r}")
    accounts.audit(ws.db, who.name, "source.update", name)
    response = render(request, "sources/_settings.html", source=found)
    return toast(response, f"Source {name} saved.")
