"""Leads in the console: the sales inbox (filter, claim, status, notes), a lead's page
(evidence, person link, history), the lead rules with their editor, and teams & routes.

Every action goes through the same functions as ``/api/leads``, with the same role checks
and the same masking of personal data (``api_leads.masked``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport.accounts import Role, audit
from rapport.conditions.validate import context
from rapport.leads import records, routing, rules
from rapport.web.api_leads import masked, masked_sample
from rapport.web.auth import Principal, require
from rapport.web.console.pages import Pager, form_time, page, problem, render, toast

router = APIRouter(include_in_schema=False)
RULE_EDITORS = (Role.marketer,)  # and admins


def _ws(request: Request) -> Any:
    return request.app.state.ws


def _lead_or_404(request: Request, lead_id: int) -> dict[str, Any]:
    try:
        return records.get_lead(_ws(request).db, lead_id)
    except records.LeadNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _failed(exc: Exception) -> HTTPException:
    if isinstance(exc, records.LeadNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, records.LeadError):
        return HTTPException(exc.status, f"{exc.field}: {exc.message}")
    if isinstance(exc, rules.RuleError):
        first = exc.errors[0]
        where = f" {first['path']}" if first["path"] not in ("", "$") else ""
        return HTTPException(422, f"{first['field']}{where}: {first['message']}")
    if isinstance(exc, routing.RoutingError | routing.RoutingNotFound):
        return HTTPException(422 if isinstance(exc, routing.RoutingError) else 404, str(exc))
    raise exc


# -- the inbox ----------------------------------------------------------------------------------
def _filters(request: Request, who: Principal) -> dict[str, Any]:
    q = request.query_params
    owner = q.get("owner", "me" if who.role is Role.sales else "")
    return {
        "status": q.get("status", ""),
        "type": q.get("type", ""),
        "owner": owner,
        "team": q.get("team", ""),
        "since": q.get("since", ""),
        "until": q.get("until", ""),
    }


def _inbox(request: Request, who: Principal) -> dict[str, Any]:
    form = _filters(request, who)
    pager = Pager.from_request(request)
    owner = who.name if form["owner"] == "me" else form["owner"] or None
    rows, total = records.list_leads(
        _ws(request).db,
        status=form["status"] or None,
        lead_type=form["type"] or None,
        owner=owner,
        team=form["team"] or None,
        since=form_time("since", form["since"]),
        until=form_time("until", form["until"]),
        limit=pager.per_page,
        offset=pager.offset,
    )
    return {
        "leads": [masked(request, who, r) for r in rows],
        "form": form,
        "pager": pager.with_total(total, len(rows)),
        "statuses": records.STATUSES,
        "types": records.lead_types(_ws(request).db),
        "teams": [t["name"] for t in routing.list_teams(_ws(request).db)],
        "can_work": who.role in (Role.sales, Role.admin),
    }


@router.get("/leads", response_class=HTMLResponse)
async def inbox(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_inbox, request, who)
    return render(request, "leads/inbox.html", title="Lead inbox", tab="inbox", **found)


@router.get("/leads/rows", response_class=HTMLResponse)
async def inbox_rows(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_inbox, request, who)
    return render(request, "leads/_rows.html", **found)


@router.post("/leads/{lead_id:int}/claim", response_class=HTMLResponse)
async def claim(
    lead_id: int, request: Request, who: Principal = Depends(require(Role.sales))
) -> Response:
    try:
        await run_in_threadpool(records.claim, _ws(request).db, lead_id, who.name)
    except (records.LeadError, records.LeadNotFound) as exc:
        raise _failed(exc) from None
    lead = masked(request, who, _lead_or_404(request, lead_id))
    row = render(request, "leads/_row.html", lead=lead, can_work=True)
    return toast(row, f"Lead {lead_id} is yours.")


# -- a lead ---------------------------------------------------------------------------------
def _work(request: Request, who: Principal, lead_id: int) -> HTMLResponse:
    lead = masked(request, who, _lead_or_404(request, lead_id))
    mine = who.role is Role.admin or (who.role is Role.sales and lead["owner"] == who.name)
    return render(request, "leads/_work.html", lead=lead, mine=mine, who=who)


@router.get("/leads/{lead_id:int}", response_class=HTMLResponse)
async def detail(lead_id: int, request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    lead = masked(request, who, _lead_or_404(request, lead_id))
    mine = who.role is Role.admin or (who.role is Role.sales and lead["owner"] == who.name)
    return render(
        request,
        "leads/detail.html",
        title=f"Lead {lead_id}",
        tab="inbox",
        lead=lead,
        mine=mine,
        can_work=who.role in (Role.sales, Role.admin),
        who=who,
    )


@router.post("/leads/{lead_id:int}/status", response_class=HTMLResponse)
async def change_status(
    lead_id: int,
    request: Request,
    status: str = Form(...),
    note: str = Form(""),
    who: Principal = Depends(require(Role.sales)),
) -> Response:
    try:
        await run_in_threadpool(
            records.change_status,
            _ws(request).db,
            lead_id,
            status,
            who.name,
            note=note.strip() or None,
            owner_only=who.name if who.role is Role.sales else None,
        )
    except (records.LeadError, records.LeadNotFound) as exc:
        raise _failed(exc) from None
    return toast(_work(request, who, lead_id), f"Lead {lead_id} is {status} now.")


@router.post("/leads/{lead_id:int}/notes", response_class=HTMLResponse)
async def add_note(
    lead_id: int,
    request: Request,
    body: str = Form(""),
    who: Principal = Depends(require(Role.sales)),
) -> Response:
    try:
        await run_in_threadpool(records.add_note, _ws(request).db, lead_id, who.name, body)
    except (records.LeadError, records.LeadNotFound) as exc:
        raise _failed(exc) from None
    return toast(_work(request, who, lead_id), "Note added.")


# -- rules ----------------------------------------------------------------------------------
@router.get("/leads/rules", response_class=HTMLResponse)
async def rules_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(rules.list_rules, _ws(request).db)
    return render(
        request,
        "leads/rules.html",
        title="Lead rules",
        tab="rules",
        rules=found,
        can_edit=who.role in (Role.admin, *RULE_EDITORS),
    )


def _editor(request: Request, who: Principal, rule: dict[str, Any] | None) -> HTMLResponse:
    ws = _ws(request)
    return render(
        request,
        "leads/rule_edit.html",
        title=f"Lead rule {rule['name']}" if rule else "New lead rule",
        tab="rules",
        rule=rule,
        versions=rules.versions(ws.db, rule["id"]) if rule else [],
        routes=[r["name"] for r in routing.list_routes(ws.db)],
        can_edit=who.role in (Role.admin, *RULE_EDITORS),
    )


@router.get("/leads/rules/new", response_class=HTMLResponse)
async def new_rule(request: Request, who: Principal = Depends(page(*RULE_EDITORS))) -> Response:
    return _editor(request, who, None)


@router.get("/leads/rules/{name}", response_class=HTMLResponse)
async def edit_rule(name: str, request: Request, who: Principal = Depends(page())) -> Response:
    try:
        rule = rules.get_rule(_ws(request).db, name)
    except rules.RuleNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _editor(request, who, rule)


def _rule_form(form: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in ("lead_type", "description", "trigger", "conditions", "suppression", "route"):
        if key in form:
            text = str(form[key]).strip()
            values[key] = text or (None if key in ("conditions", "suppression") else "")
    if form.get("cooldown"):
        values["cooldown"] = str(form["cooldown"]).strip()
    for key in ("score", "priority"):
        if form.get(key):
            try:
                values[key] = int(str(form[key]))
            except ValueError:
                raise HTTPException(422, f"{key}: {form[key]!r} is not a whole number") from None
    values["mode"] = str(form.get("mode") or "realtime")
    values["schedule"] = str(form.get("schedule") or "").strip() or None
    return values


@router.post("/leads/rules", response_class=HTMLResponse)
async def create_rule(
    request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> Response:
    form = await request.form()
    values = _rule_form(form)
    try:
        body = rules.RuleIn(name=str(form.get("name", "")).strip(), owner=who.name, **values)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    ws = _ws(request)
    try:
        await run_in_threadpool(rules.create_rule, ws.db, body, context(ws), who.name)
    except rules.RuleError as exc:
        raise _failed(exc) from None
    audit(ws.db, who.name, "lead_rule.create", body.name)
    return Response(status_code=200, headers={"HX-Redirect": f"/leads/rules/{body.name}"})


@router.post("/leads/rules/{name}", response_class=HTMLResponse)
async def save_rule(
    name: str, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> Response:
    form = await request.form()
    try:
        patch = rules.RulePatch(**_rule_form(form))
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    ws = _ws(request)
    try:
        saved = await run_in_threadpool(
            rules.update_rule, ws.db, name, patch, context(ws), who.name
        )
    except (rules.RuleError, rules.RuleNotFound) as exc:
        if isinstance(exc, rules.RuleNotFound):
            raise HTTPException(404, str(exc)) from None
        raise _failed(exc) from None
    audit(ws.db, who.name, "lead_rule.update", name, version=saved["version"])
    return toast(_editor(request, who, saved), f"Saved: version {saved['version']}.")


@router.post("/leads/rules/{name}/status", response_class=HTMLResponse)
async def rule_status(
    name: str,
    request: Request,
    status: str = Form(...),
    who: Principal = Depends(require(*RULE_EDITORS)),
) -> Response:
    try:
        saved = rules.set_status(_ws(request).db, name, status)
    except rules.RuleError as exc:
        raise _failed(exc) from None
    except rules.RuleNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    audit(_ws(request).db, who.name, f"lead_rule.{status}", name)
    return toast(_editor(request, who, saved), f"Rule {name} is {status}.")


def backtest_chart(daily: list[dict[str, Any]]) -> dict[str, Any]:
    """Leads per day, as bars."""
    return {
        "grid": {"left": 50, "right": 20, "top": 15, "bottom": 30},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "category", "data": [d["day"] for d in daily]},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [{"name": "leads", "type": "bar", "data": [d["leads"] for d in daily]}],
    }


@router.post("/leads/rules/{name}/backtest", response_class=HTMLResponse)
async def backtest_rule(
    name: str, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> Response:
    """The backtest card's result: ``start``/``end`` (a backtest) or ``hours`` (a dry-run)."""
    from rapport.leads import backtest

    form = await request.form()
    ws = _ws(request)
    try:
        with ws.db.connect() as conn:
            rule = rules.load(conn, name)
    except rules.RuleNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    goal = str(form.get("goal") or backtest.GOAL_EVENT).strip()
    try:
        days = int(str(form.get("days") or backtest.GOAL_DAYS))
        hours = float(str(form["hours"])) if form.get("hours") else None
    except ValueError:
        raise HTTPException(422, "days and hours are numbers") from None
    end = form_time("end", str(form.get("end") or "")) or datetime.now(UTC)
    try:
        if hours is not None:
            result = await run_in_threadpool(
                backtest.dry_run, ws, rule, hours, end, goal=goal, days=days
            )
        else:
            start = form_time("start", str(form.get("start") or "")) or end - timedelta(days=7)
            result = await run_in_threadpool(
                backtest.backtest, ws, rule, start, end, goal=goal, days=days
            )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    result = masked_sample(ws, who, result)
    return render(
        request,
        "leads/_backtest.html",
        result=result,
        chart_option=backtest_chart(result["daily"]),
    )


# -- teams and routes -------------------------------------------------------------------------
def _teams_page(request: Request, who: Principal) -> HTMLResponse:
    ws = _ws(request)
    return render(
        request,
        "leads/teams.html",
        title="Teams & routes",
        tab="teams",
        teams=routing.list_teams(ws.db),
        routes=routing.list_routes(ws.db),
        is_admin=who.role is Role.admin,
    )


@router.get("/leads/teams", response_class=HTMLResponse)
async def teams(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    return _teams_page(request, who)


@router.post("/leads/teams", response_class=HTMLResponse)
async def create_team(
    request: Request,
    name: str = Form(...),
    strategy: str = Form("round_robin"),
    timezone: str = Form("UTC"),
    days: str = Form("1,2,3,4,5"),
    opens: str = Form("09:00"),
    closes: str = Form("18:00"),
    agents: str = Form(""),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    try:
        body = routing.TeamIn(
            name=name.strip(),
            strategy=strategy,  # type: ignore[arg-type]
            timezone=timezone.strip(),
            days=[int(d) for d in days.replace(" ", "").split(",") if d],
            opens=opens,
            closes=closes,
            agents=[a.strip() for a in agents.split(",") if a.strip()],
        )
    except (ValidationError, ValueError) as exc:
        raise HTTPException(422, problem(exc)) from None
    try:
        routing.create_team(_ws(request).db, body)
    except routing.RoutingError as exc:
        raise _failed(exc) from None
    audit(_ws(request).db, who.name, "lead_team.create", body.name)
    return toast(_teams_page(request, who), f"Team {body.name} created.")


@router.post("/leads/routes", response_class=HTMLResponse)
async def create_route(
    request: Request,
    name: str = Form(...),
    position: int = Form(0),
    lead_type: str = Form(""),
    condition: str = Form(""),
    target_kind: str = Form("team"),
    target: str = Form(...),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    try:
        cond = json.loads(condition) if condition.strip() else None
        body = routing.RouteIn(
            name=name.strip(),
            position=position,
            lead_type=lead_type.strip() or None,
            condition=cond,
            target_kind=target_kind,  # type: ignore[arg-type]
            target=target.strip(),
        )
    except (ValidationError, ValueError) as exc:
        raise HTTPException(422, problem(exc)) from None
    try:
        routing.create_route(_ws(request).db, body)
    except routing.RoutingError as exc:
        raise _failed(exc) from None
    audit(_ws(request).db, who.name, "lead_route.create", body.name)
    return toast(_teams_page(request, who), f"Route {body.name} created.")


@router.post("/leads/routes/{name}/delete", response_class=HTMLResponse)
async def delete_route(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    try:
        routing.delete_route(_ws(request).db, name)
    except routing.RoutingNotFound as exc:
        raise _failed(exc) from None
    audit(_ws(request).db, who.name, "lead_route.delete", name)
    return toast(_teams_page(request, who), f"Route {name} deleted.")


@router.post("/leads/teams/{name}/delete", response_class=HTMLResponse)
async def delete_team(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    try:
        routing.delete_team(_ws(request).db, name)
    except routing.RoutingNotFound as exc:
        raise _failed(exc) from None
    audit(_ws(request).db, who.name, "lead_team.delete", name)
    return toast(_teams_page(request, who), f"Team {name} deleted.")
