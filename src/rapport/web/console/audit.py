"""The audit log page (admins): who did what, when, filtered by actor, action and time."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from rapport.accounts import Role
from rapport.web import api_audit
from rapport.web.auth import Principal
from rapport.web.console.pages import Pager, form_time, page, render

router = APIRouter(include_in_schema=False)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    actor: str = "",
    action: str = "",
    since: str = "",
    _: Principal = Depends(page(Role.admin)),
) -> HTMLResponse:
    db = request.app.state.ws.db
    when = form_time("since", since)
    pager = Pager.from_request(request, per_page=50)
    args = (db, actor.strip() or None, action.strip() or None, when)
    rows = await run_in_threadpool(api_audit.query, *args, pager.per_page, pager.offset)
    total = await run_in_threadpool(api_audit.count, *args)
    return render(
        request,
        "audit/index.html",
        title="Audit log",
        rows=rows,
        pager=pager.with_total(total, len(rows)),
        actions=await run_in_threadpool(api_audit.actions, db),
        form={"actor": actor, "action": action, "since": since},
    )
