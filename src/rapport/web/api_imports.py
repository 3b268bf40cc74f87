"""Batch imports and data quality over HTTP, and the background log -> warehouse loader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from rapport.accounts import Role, audit
from rapport.ingest import importer
from rapport.ingest.importer import ImportFailed, ImportSpec
from rapport.ingest.mapping import MappingError
from rapport.ingest.quality import quality_report
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

log = logging.getLogger(__name__)
router = APIRouter(tags=["imports"])
#: seconds between two passes of the background loader
LOAD_INTERVAL = 0.5


class ImportRequest(ImportSpec):
    run: bool = True


@router.post("/api/imports", status_code=status.HTTP_201_CREATED)
async def create_import(
    body: ImportRequest, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Save an import definition (by name) and, unless ``run`` is false, run it now.

    ``uri`` is a path on the server or a SQLAlchemy URL. The response is the finished run.
    """
    ws = request.app.state.ws
    spec = ImportSpec.model_validate(body.model_dump(exclude={"run"}))
    audit(ws.db, who.name, "import.save", spec.display_name(), source=spec.source)
    if not body.run:
        import_id = await run_in_threadpool(importer.save_import, ws.db, spec)
        return {"import_id": import_id, "name": spec.display_name()}
    try:
        return await run_in_threadpool(importer.run_import, ws, spec)
    except ImportFailed as exc:
        cause = exc.__cause__
        code = 409 if isinstance(cause, WarehouseBusy) else 422
        if isinstance(cause, MappingError | ValueError):
            code = 422
        raise HTTPException(code, str(exc)) from None


@router.get("/api/imports")
async def list_imports(request: Request, _: Principal = Depends(require())) -> list[dict]:
    return importer.list_imports(request.app.state.ws.db)


@router.post("/api/imports/{name}/run")
async def run_saved(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    ws = request.app.state.ws
    if importer.get_import(ws.db, name) is None:
        raise HTTPException(404, f"no saved import named {name!r}")
    audit(ws.db, who.name, "import.run", name)
    try:
        return await run_in_threadpool(importer.run_saved_import, ws, name)
    except ImportFailed as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/api/imports/runs")
async def list_runs(
    request: Request,
    source: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    _: Principal = Depends(require()),
) -> list[dict]:
    return importer.list_runs(request.app.state.ws.db, source, limit, offset)


@router.get("/api/imports/runs/{run_id}")
async def get_run(run_id: int, request: Request, _: Principal = Depends(require())) -> dict:
    run = importer.get_run(request.app.state.ws.db, run_id)
    if run is None:
        raise HTTPException(404, f"no import run {run_id}")
    return run


@router.get("/api/quality")
async def quality(
    request: Request, source: str | None = None, _: Principal = Depends(require())
) -> dict[str, Any]:
    """Per source and field: fill rate, invalid, duplicates; and cross-source conflicts."""
    try:
        return await run_in_threadpool(quality_report, request.app.state.ws, source)
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None


class LoaderStatus(BaseModel):
    loaded: int = 0
    passes: int = 0
    last_error: str | None = None


def _load_once(app: FastAPI) -> int:
    from rapport.stream.follow import one_pass

    return one_pass(app.state.ws)


async def _loader(app: FastAPI, stopping: asyncio.Event) -> None:
    """Every LOAD_INTERVAL s, move new log records into the warehouse (in a thread)."""
    state: LoaderStatus = app.state.warehouse_loader
    from rapport.stream.follow import PASS_RECORDS

    while not stopping.is_set():
        loaded = 0
        try:
            loaded = await asyncio.to_thread(_load_once, app)
            state.loaded += loaded
            state.last_error = None
        except WarehouseBusy as exc:  # a CLI import holds the file: try again next pass
            state.last_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - keep loading; the error is visible
            state.last_error = repr(exc)
            log.exception("warehouse loader pass failed")
        state.passes += 1
        if loaded >= PASS_RECORDS:  # a full pass: more is waiting
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), LOAD_INTERVAL)


def setup(app: FastAPI) -> None:
    app.state.warehouse_loader = LoaderStatus()
    stopping = asyncio.Event()

    async def start(app: FastAPI) -> None:
        if not app.state.ws.settings.loader_in_process:
            return  # `rapport serve` runs the loader as a process of its own (warehouse.follow)
        stopping.clear()
        app.state.warehouse_loader_task = asyncio.create_task(_loader(app, stopping))

    async def stop(app: FastAPI) -> None:
        """Let the running pass finish (its thread cannot be cancelled) before the stores close."""
        stopping.set()
        task = getattr(app.state, "warehouse_loader_task", None)
        if task is not None:
            await task

    app.state.startup.append(start)
    app.state.shutdown.append(stop)
