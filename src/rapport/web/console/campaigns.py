"""Console pages of campaigns: the list, the wizard (audience → channel and content with a
live preview for a sample person → schedule, holdout, goal and cost) and a campaign's page
(plan summary, approve, send, cancel, and once sent the results with the conversion trend
chart and the uplift over the holdout). Plugged in by ``rapport.web.api_campaigns.setup``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import FormData

from rapport.accounts import Role, audit
from rapport.campaigns import (
    CampaignError,
    CampaignIn,
    approve,
    cancel,
    create_campaign,
    get_campaign,
    list_campaigns,
    plan,
    render_for,
    send,
)
from rapport.campaigns.content import ContentFunctions
from rapport.campaigns.plan import attributes
from rapport.campaigns.results import report as campaign_report
from rapport.db.tables import channels
from rapport.segments.store import list_segments
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require
from rapport.web.console.pages import flash, page, problem, render

router = APIRouter(include_in_schema=False)
EDIT = (Role.marketer,)


def _content(form: FormData) -> dict[str, str]:
    fields = zip(form.getlist("c_field"), form.getlist("c_template"), strict=True)
    return {str(f).strip(): str(t) for f, t in fields if str(f).strip()}


def _from_form(form: FormData) -> CampaignIn:
    keys = str(form.get("person_keys", "")).replace(",", " ").split()
    upload = form.get("audience_kind") == "list"
    if upload and not all(k.isdigit() for k in keys):
        raise HTTPException(422, "person_keys: person keys are whole numbers")
    fields = {
        "name": str(form.get("name", "")).strip(),
        "audience": None if upload else (str(form.get("audience", "")) or None),
        "person_keys": [int(k) for k in keys] if upload else None,
        "channel": str(form.get("channel", "")),
        "content": _content(form),
        "schedule": str(form.get("schedule", "")).strip(),
        "holdout_share": float(str(form.get("holdout_percent") or 10)) / 100,
        "goal_event": str(form.get("goal_event", "")).strip(),
        "goal_days": form.get("goal_days") or 7,
        "cost_per_message": form.get("cost_per_message") or 0,
        "budget": form.get("budget") or None,
    }
    try:
        return CampaignIn.model_validate(fields)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None


def _choices(ws: Any) -> dict[str, Any]:
    with ws.db.connect() as conn:
        names = conn.execute(select(channels.c.name).order_by(channels.c.name)).scalars().all()
    return {"audiences": [s["name"] for s in list_segments(ws, "audience")], "channels": names}


@router.get("/campaigns", response_class=HTMLResponse)
async def campaigns_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    rows = await run_in_threadpool(list_campaigns, request.app.state.ws)
    can_edit = who.role in (Role.admin, *EDIT)
    return render(request, "campaigns/index.html", title="Campaigns", rows=rows, can_edit=can_edit)


@router.get("/campaigns/new", response_class=HTMLResponse)
async def new_campaign(request: Request, _: Principal = Depends(page(*EDIT))) -> HTMLResponse:
    choices = await run_in_threadpool(_choices, request.app.state.ws)
    return render(request, "campaigns/new.html", title="New campaign", **choices)


@router.post("/campaigns/render", response_class=HTMLResponse)
async def live_preview(request: Request, _: Principal = Depends(require(*EDIT))) -> HTMLResponse:
    """The content being typed, rendered for the sample person (a fragment)."""
    form = await request.form()
    person = str(form.get("sample_person", "")).strip()
    context: dict[str, Any] = {"person": person}
    if person.isdigit():
        key = int(person)
        attrs = (await run_in_threadpool(attributes, request.app.state.ws, [key]))[key]
        try:
            preview = ContentFunctions(request.app.state.ws, None, issuing=False)
            context["message"] = render_for(_content(form), key, attrs, preview)
        except CampaignError as exc:
            context["error"] = str(exc)
    return render(request, "campaigns/_preview.html", **context)


@router.post("/campaigns", response_class=HTMLResponse)
async def create(request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    body = _from_form(await request.form())
    ws = request.app.state.ws
    created = await run_in_threadpool(create_campaign, ws, body, who.name)
    audit(ws.db, who.name, "campaign.create", body.name)
    flash(request, f"Campaign {body.name} saved as a draft: plan it next.")
    return Response(status_code=200, headers={"HX-Redirect": f"/campaigns/{created['id']}"})


def trend_chart(report: dict[str, Any]) -> dict[str, Any]:
    """The conversion trend: cumulative rate (%) per day since the clock, treated vs holdout."""
    rows = report["trend"]["rows"]

    def line(name: str, at: int, color: str) -> dict[str, Any]:
        rates = [None if r[at] is None else round(100 * r[at], 2) for r in rows]
        return {"name": name, "type": "line", "data": rates, "itemStyle": {"color": color}}

    return {
        "grid": {"left": 50, "right": 20, "top": 35, "bottom": 30},
        "legend": {"top": 0},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "category", "data": [f"day {r[0]}" for r in rows]},
        "yAxis": {"type": "value", "axisLabel": {"formatter": "{value} %"}},
        "series": [line("treated", 3, "#6366f1"), line("holdout", 6, "#9ca3af")],
    }


def _page_data(
    ws: Any, ref: str, fresh: bool = False
) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """The campaign, its results once messages were enqueued (cached up to a minute, see
    ``campaigns.results.report``), and whether the warehouse was too busy to count
    conversions."""
    found = get_campaign(ws, ref)
    try:
        report = campaign_report(ws, found["id"], fresh=fresh)
    except WarehouseBusy:
        return found, None, True
    return found, report if report["sent"] else None, False


@router.get("/campaigns/{ref}", response_class=HTMLResponse)
async def campaign_page(
    ref: str, request: Request, fresh: bool = False, who: Principal = Depends(page())
) -> HTMLResponse:
    ws = request.app.state.ws
    found, report, busy = await run_in_threadpool(_page_data, ws, ref, fresh)
    return render(
        request,
        "campaigns/show.html",
        title=f"Campaign {found['name']}",
        c=found,
        r=report,
        busy=busy,
        trend=trend_chart(report) if report else None,
        can_edit=who.role in (Role.admin, *EDIT),
        me=who.name,
    )


ACTIONS = {
    "plan": (lambda ws, ref, who: plan(ws, ref, who), "planned"),
    "approve": (lambda ws, ref, who: approve(ws, ref, who), "approved"),
    "send": (lambda ws, ref, who: send(ws, ref), "sent"),
    "cancel": (lambda ws, ref, who: cancel(ws, ref), "cancelled"),
}


@router.post("/campaigns/{ref}/{action}", response_class=HTMLResponse)
async def act(
    ref: str, action: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> Response:
    """The buttons of a campaign's page: plan, approve, send, cancel."""
    if action not in ACTIONS:
        raise HTTPException(404, f"no action {action!r}")
    run, done = ACTIONS[action]
    ws = request.app.state.ws
    await run_in_threadpool(run, ws, ref, who.name)
    audit(ws.db, who.name, f"campaign.{action}", ref)
    flash(request, f"Campaign {done}.")
    return Response(status_code=200, headers={"HX-Redirect": f"/campaigns/{ref}"})
