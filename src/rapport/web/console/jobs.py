"""Scheduled jobs (admins): each job's schedule, next run and last run with a "Run now"
button, and the run history (of every job, or of one with ``?key=``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rapport import accounts
from rapport.accounts import Role
from rapport.jobs.runner import JobBusy, JobNotFound, history, overview, run_now
from rapport.settings import Settings
from rapport.web.auth import Principal, require
from rapport.web.console.pages import page, render, toast

router = APIRouter(include_in_schema=False)


def _context(ws: Any, key: str | None) -> dict[str, Any]:
    settings: Settings = ws.settings
    return {
        "jobs": overview(ws),
        "runs": history(ws, key or None, 50),
        "key": key or "",
        "timezone": settings.timezone,
    }


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request, key: str | None = None, _: Principal = Depends(page(Role.admin))
) -> HTMLResponse:
    found = await run_in_threadpool(_context, request.app.state.ws, key)
    return render(request, "jobs/index.html", title="Scheduled jobs", **found)


@router.post("/jobs/{key}/run", response_class=HTMLResponse)
async def run(key: str, request: Request, who: Principal = Depends(require(Role.admin))) -> Any:
    """Run now; answers the refreshed jobs table (and a toast saying how it went)."""
    ws = request.app.state.ws
    try:
        record = await run_in_threadpool(run_now, ws, key)
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except JobBusy as exc:
        raise HTTPException(409, str(exc)) from None
    accounts.audit(ws.db, who.name, "job.run", key, status=record["status"])
    found = await run_in_threadpool(_context, ws, None)
    response = render(request, "jobs/_tables.html", **found)
    if record["status"] == "failed":
        return toast(response, f"{key} failed: {record['error']}", "error")
    return toast(response, f"{key} ran in {record['seconds']:.1f}s.")
