"""``/api/jobs``: the scheduled jobs with their next and last runs, a job's history, run now.

Admins only: a job recomputes shared data (tags, audiences) and the lifecycle emits events.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rapport.accounts import Role, audit
from rapport.jobs.registry import find
from rapport.jobs.runner import JobBusy, JobNotFound, history, overview, run_now
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ADMIN = require(Role.admin)


def _error(status: int, detail: str, field: str = "key") -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code=status)


@router.get("")
async def list_jobs(request: Request, _: Principal = Depends(ADMIN)) -> list[dict[str, Any]]:
    """Every job: key, title, schedule, next run (UTC), running, last run."""
    return await run_in_threadpool(overview, request.app.state.ws)


@router.get("/runs")
async def runs(
    request: Request,
    key: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    _: Principal = Depends(ADMIN),
) -> list[dict[str, Any]]:
    """The latest runs, newest first (``?key=`` for one job)."""
    return await run_in_threadpool(history, request.app.state.ws, key, limit)


@router.get("/{key}", response_model=None)
async def one(key: str, request: Request, _: Principal = Depends(ADMIN)) -> Any:
    ws = request.app.state.ws
    if await run_in_threadpool(find, ws, key) is None:
        return _error(404, f"no job with key {key!r}")
    rows = await run_in_threadpool(overview, ws)
    job = next(r for r in rows if r["key"] == key)
    return {**job, "runs": await run_in_threadpool(history, ws, key, 50)}


@router.post("/{key}/run", response_model=None)
async def run(key: str, request: Request, who: Principal = Depends(ADMIN)) -> Any:
    """Run the job now and wait for it; the run's record (status ``failed`` with its error when
    the job failed: the request itself succeeded). 409 when it is running elsewhere."""
    ws = request.app.state.ws
    try:
        record = await run_in_threadpool(run_now, ws, key)
    except JobNotFound as exc:
        return _error(404, str(exc))
    except JobBusy as exc:
        return _error(409, str(exc))
    audit(ws.db, who.name, "job.run", key, status=record["status"])
    return record
