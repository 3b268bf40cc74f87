"""``/api/campaigns``: define, plan, preview, approve, send, cancel (docs/campaigns.md).

Marketers edit and send; any role reads. Planning and sending run in a worker thread: a plan
of a million persons takes seconds, and the event loop keeps serving meanwhile.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from rapport.accounts import Role, audit
from rapport.analytics import to_csv
from rapport.campaigns import (
    CampaignError,
    CampaignIn,
    CampaignNotFound,
    approve,
    cancel,
    create_campaign,
    delete_campaign,
    get_campaign,
    list_campaigns,
    plan,
    preview,
    render_for,
    send,
    update_campaign,
)
from rapport.campaigns.content import ContentFunctions
from rapport.campaigns.plan import attributes
from rapport.campaigns.results import report
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, redactor, require

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])
EDIT = (Role.marketer,)


@router.get("")
def list_all(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    return list_campaigns(request.app.state.ws)


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    body: CampaignIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    created = create_campaign(ws, body, who.name)
    audit(ws.db, who.name, "campaign.create", body.name)
    return created


@router.get("/{ref}")
def get_one(ref: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    return get_campaign(request.app.state.ws, ref)


@router.put("/{ref}")
def replace(
    ref: str, body: CampaignIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    """Replace the definition: the campaign goes back to draft (plan it again)."""
    ws = request.app.state.ws
    saved = update_campaign(ws, ref, body)
    audit(ws.db, who.name, "campaign.update", ref)
    return saved


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete(ref: str, request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    ws = request.app.state.ws
    delete_campaign(ws, ref)
    audit(ws.db, who.name, "campaign.delete", ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{ref}/plan")
async def plan_it(
    ref: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    """Plan now: counts (audience, holdout, suppressed by reason, to send), cost, samples."""
    ws = request.app.state.ws
    summary = await run_in_threadpool(plan, ws, ref, who.name)
    audit(ws.db, who.name, "campaign.plan", ref, to_send=summary["to_send"])
    return redactor(request)(summary)


@router.get("/{ref}/preview")
async def preview_it(
    ref: str, request: Request, person: int | None = None, _: Principal = Depends(require())
) -> dict[str, Any]:
    """The message one person gets (default: the first planned recipient) and the plan;
    personal data masked unless the caller's role may see it."""
    found = await run_in_threadpool(preview, request.app.state.ws, ref, person)
    return redactor(request)(found)


@router.post("/render")
async def render(
    request: Request,
    person: int,
    content: dict[str, str] = Body(..., embed=True),
    _: Principal = Depends(require(*EDIT)),
) -> dict[str, Any]:
    """Unsaved content rendered for a person (the editor's live preview)."""
    ws = request.app.state.ws
    attrs = (await run_in_threadpool(attributes, ws, [person]))[person]
    preview = ContentFunctions(ws, None, issuing=False)  # coupon(), link(), qr(): nothing issued
    message = render_for(content, person, attrs, preview)
    return redactor(request)({"person_key": person, "message": message})


@router.post("/{ref}/approve")
def approve_it(
    ref: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    approved = approve(ws, ref, who.name)
    audit(ws.db, who.name, "campaign.approve", ref)
    return approved


@router.post("/{ref}/send")
async def send_it(
    ref: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    """Enqueue the planned messages now (a scheduled campaign is sent by its job)."""
    ws = request.app.state.ws
    progress = await run_in_threadpool(send, ws, ref)
    audit(ws.db, who.name, "campaign.send", ref, enqueued=progress["enqueued"])
    return progress


@router.post("/{ref}/cancel")
def cancel_it(
    ref: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    cancelled = cancel(ws, ref)
    audit(ws.db, who.name, "campaign.cancel", ref)
    return cancelled


async def _report(request: Request, ref: str, fresh: bool = False) -> dict[str, Any]:
    try:
        return await run_in_threadpool(report, request.app.state.ws, ref, fresh=fresh)
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None


@router.get("/{ref}/results")
async def results_of(
    ref: str, request: Request, fresh: bool = False, _: Principal = Depends(require())
) -> dict[str, Any]:
    """Counts by delivery status, engagement, conversions, revenue, cost, ROI, coupons, the
    7-day conversion trend and the uplift over the holdout (docs/campaigns.md, "Results").
    Served from a cache for up to 60 s while the outbox rows are unchanged (``computed_at``
    says when it was computed); ``?fresh=1`` computes it now."""
    return await _report(request, ref, fresh)


@router.get("/{ref}/results.csv", response_class=Response)
async def results_csv(
    ref: str, request: Request, fresh: bool = False, who: Principal = Depends(require())
) -> Response:
    """The conversion trend: per day since each person's clock, treated vs holdout."""
    report = await _report(request, ref, fresh)
    name = f"campaign-{report['campaign']['id']}-trend.csv"
    audit(
        request.app.state.ws.db, who.name, "campaign.export", ref, rows=len(report["trend"]["rows"])
    )
    return Response(
        to_csv({"table": report["trend"]}),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def _failed(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CampaignError):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status)
    return JSONResponse({"detail": str(exc)}, status_code=404)


def setup(app: FastAPI) -> None:
    """The error answers (for the API and the console) and the console pages."""
    from rapport.web.console import campaigns as console_campaigns

    app.add_exception_handler(CampaignNotFound, _failed)
    app.add_exception_handler(CampaignError, _failed)
    app.include_router(console_campaigns.router)
