"""Identity: the rules of OneID (identifier types, blocklist, survivorship) and the review
queue of probable matches, one tab each.

Writes go through the same functions as ``/api/identity`` (validation, audit) and answer with
the re-rendered tab, so the page always shows what is stored.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport import accounts
from rapport.accounts import Role
from rapport.catalog.pii import pii_fields
from rapport.identity import config as cfg
from rapport.identity import matching
from rapport.web import api_identity as api
from rapport.web.auth import Principal, require
from rapport.web.console.pages import Pager, page, problem, render, toast

router = APIRouter(include_in_schema=False)

TABS = (
    ("types", "Identifier types"),
    ("blocklist", "Blocklist"),
    ("survivorship", "Survivorship"),
    ("review", "Review queue"),
)
PER_PAGE = 20


# -- what each tab shows --------------------------------------------------------------------
def _types(ws: Any) -> dict[str, Any]:
    return {"types": api.types_list(ws.db), "normalisers": cfg.NORMALISERS}


def _blocklist(ws: Any, principal: Principal) -> dict[str, Any]:
    return {
        "blocks": api.blocklist(ws.db, principal.sees_pii),
        "type_names": sorted(t.name for t in cfg.load(ws.db).types),
    }


def _rules(ws: Any) -> dict[str, Any]:
    view = api.rules_view(ws)
    return {
        "rules": {r["property"]: r for r in view["rules"]},
        "properties": view["properties"],
        "available": view["available"],
        "default": view["default"],
    }


def _review(ws: Any, principal: Principal, pager: Pager) -> dict[str, Any]:
    rows, total = matching.list_candidates(ws.db, "pending", pager.per_page, pager.offset)
    personal = pii_fields(ws.db)
    return {
        "candidates": [api.shown_candidate(r, principal.sees_pii, personal) for r in rows],
        "pager": pager.with_total(total, len(rows)),
        "fields": matching.COMPARED,
    }


def _tab(ws: Any, tab: str, principal: Principal, pager: Pager) -> dict[str, Any]:
    if tab == "types":
        return _types(ws)
    if tab == "blocklist":
        return _blocklist(ws, principal)
    if tab == "survivorship":
        return _rules(ws)
    return _review(ws, principal, pager)


@router.get("/identity", response_class=HTMLResponse)
async def identity_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    tab = request.query_params.get("tab", "types")
    if tab not in dict(TABS):
        tab = "types"
    pager = Pager.from_request(request, per_page=PER_PAGE)
    found = await run_in_threadpool(_tab, request.app.state.ws, tab, who, pager)
    return render(request, "identity/index.html", title="Identity", tab=tab, tabs=TABS, **found)


# -- identifier types ---------------------------------------------------------------------
def _int_or_none(raw: str, field: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(422, f"{field}: {raw!r} is not a whole number") from None


@router.post("/identity/types/{name}", response_class=HTMLResponse)
async def save_type(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    form = await request.form()

    def text(key: str) -> str:
        return str(form.get(key) or "")

    name = (text("name") or name).strip()
    priority = _int_or_none(text("priority"), "priority")
    try:
        body = api.TypeIn(
            priority=priority if priority is not None else 0,
            max_per_person=_int_or_none(text("max_per_person"), "max_per_person"),
            merge=text("merge") == "true",
            normaliser=text("normaliser") or "trim",
            pattern=text("pattern").strip() or None,
            paths=[p.strip() for p in text("paths").split(",") if p.strip()],
            scope_path=text("scope_path").strip() or None,
            shared_after=_int_or_none(text("shared_after"), "shared_after"),
            description=text("description").strip(),
        )
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    ws = request.app.state.ws
    await run_in_threadpool(api.save_type, ws.db, name, body)
    accounts.audit(ws.db, who.name, "identity.type", name)
    response = render(request, "identity/_types.html", **_types(ws))
    return toast(response, f"Identifier type {name} saved.")


# -- blocklist ------------------------------------------------------------------------------
@router.post("/identity/blocklist", response_class=HTMLResponse)
async def add_block(request: Request, who: Principal = Depends(require(Role.admin))) -> Response:
    form = await request.form()
    kind = str(form.get("kind") or "value")
    entered = str(form.get("entry") or "").strip()
    if not entered:
        raise HTTPException(422, "entry: give the value or the pattern to block")
    try:
        body = api.BlockIn(
            reason=str(form.get("reason") or "").strip(),
            id_type=str(form.get("id_type") or "") or None,
            value=entered if kind == "value" else None,
            pattern=entered if kind == "pattern" else None,
        )
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    ws = request.app.state.ws
    entry = await run_in_threadpool(api.add_block, ws, body, who.name)
    accounts.audit(ws.db, who.name, "identity.block", str(entry["id"]), reason=body.reason)
    response = render(request, "identity/_blocklist.html", **_blocklist(ws, who))
    detached = entry["detached"]
    suffix = f"; {detached} known value(s) detached" if detached else ""
    return toast(response, f"Blocked{suffix}.")


@router.post("/identity/blocklist/{block_id}/delete", response_class=HTMLResponse)
async def remove_block(
    block_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    ws = request.app.state.ws
    if await run_in_threadpool(cfg.remove_block, ws.db, block_id) is None:
        raise HTTPException(404, f"no blocklist entry {block_id}")
    accounts.audit(ws.db, who.name, "identity.unblock", str(block_id))
    response = render(request, "identity/_blocklist.html", **_blocklist(ws, who))
    return toast(response, "Unblocked: new records link through it again.")


# -- survivorship ---------------------------------------------------------------------------
@router.post("/identity/survivorship", response_class=HTMLResponse)
async def save_rule(request: Request, who: Principal = Depends(require(Role.admin))) -> Response:
    form = await request.form()
    prop = str(form.get("property") or "").strip()
    sources = [s.strip() for s in str(form.get("sources") or "").split(",") if s.strip()]
    try:
        rule = api.RuleIn(property=prop, rule=str(form.get("rule") or ""), sources=sources)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    ws = request.app.state.ws
    await run_in_threadpool(api.save_rules, ws.db, [rule])
    accounts.audit(ws.db, who.name, "identity.survivorship", prop, rule=rule.rule)
    response = render(request, "identity/_rules.html", **await run_in_threadpool(_rules, ws))
    return toast(response, f"{prop}: {rule.rule}. Rebuild the profiles to apply it everywhere.")


@router.get("/identity/conflicts", response_class=HTMLResponse)
async def conflicts(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    """Where sources disagree, per property: loaded after the tab (it reads every value)."""
    from rapport.identity.survivorship import conflict_report

    report = await run_in_threadpool(conflict_report, request.app.state.ws)
    return render(request, "identity/_conflicts.html", conflicts=report)


@router.post("/identity/profiles", response_class=HTMLResponse)
async def rebuild_profiles(
    request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    from rapport.identity.survivorship import build_profiles

    ws = request.app.state.ws
    rows = await run_in_threadpool(build_profiles, ws)
    accounts.audit(ws.db, who.name, "identity.profiles", "", rows=rows)
    return toast(Response(status_code=204), f"Profiles rebuilt: {rows:,} persons.")


# -- review queue ---------------------------------------------------------------------------
@router.post("/identity/candidates/{candidate_id}/{decision}", response_class=HTMLResponse)
async def decide(
    candidate_id: int,
    decision: str,
    request: Request,
    who: Principal = Depends(require(Role.marketer)),
) -> Response:
    if decision not in ("accept", "reject"):
        raise HTTPException(404, f"unknown decision {decision!r}: accept or reject")
    ws = request.app.state.ws
    out = await run_in_threadpool(api.decide, ws, candidate_id, decision == "accept", who.name)
    response = render(request, "identity/_decided.html", decided=out)
    if out["status"] == "accepted":
        return toast(response, f"Linked: person {out['survivor']} now holds both.")
    return toast(response, "Rejected: this pair will not be proposed again.")


@router.post("/identity/match", response_class=HTMLResponse)
async def run_matching(request: Request, who: Principal = Depends(require(Role.admin))) -> Response:
    ws = request.app.state.ws
    summary = await run_in_threadpool(api.run, ws, api.MatchIn(), who.name)
    pager = Pager(1, PER_PAGE, None, {"tab": "review"})
    found = await run_in_threadpool(_review, ws, who, pager)
    response = render(request, "identity/_review.html", **found)
    message = (
        f"Matched {summary['persons']:,} persons: {summary['merged']} linked, "
        f"{summary['queued']} new to review, {summary['refused']} refused."
    )
    return toast(response, message)
