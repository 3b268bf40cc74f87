"""Tags: the list (kind, coverage, last run), a tag's page (distribution chart, definition,
run history) and the create / edit / compute actions for admins and marketers."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from rapport import accounts
from rapport.accounts import Role
from rapport.tags import store
from rapport.tags.definitions import (
    KINDS,
    TagError,
    TagIn,
    TagPatch,
    create_tag,
    delete_tag,
    get_tag,
    list_tags,
    update_tag,
)
from rapport.web.auth import Principal, require
from rapport.web.console.pages import page, problem, render, toast

router = APIRouter(include_in_schema=False)
EDITORS = (Role.marketer,)  # and admins
EXAMPLES = {
    "attribute": {"field": "city", "map": {"上海": "tier 1"}, "default": "other"},
    "statistical": {"event": "order_paid", "agg": "count", "window_days": 30},
    "rule": {"condition": {"kind": "did", "event": "book_hotel"}, "value": "yes"},
    "manual": {"values": ["yes", "no"]},
}


def can_edit(who: Principal) -> bool:
    return who.role in (Role.admin, *EDITORS)


def _rows(ws: Any) -> dict[str, Any]:
    total, covered = store.coverage(ws)
    rows = []
    for tag in list_tags(ws.db):
        persons = covered.get(tag["name"], 0)
        rows.append(
            {
                **tag,
                "persons": persons,
                "share": persons / total if total else None,
                "last_run": store.last_run(ws.db, tag["name"], status=None),
            }
        )
    return {"tags": rows, "total": total}


@router.get("/tags", response_class=HTMLResponse)
async def list_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_rows, request.app.state.ws)
    return render(
        request,
        "tags/index.html",
        title="Tags",
        can_edit=can_edit(who),
        kinds=[k for k in KINDS if k != "mined"],
        examples={k: json.dumps(v, ensure_ascii=False, indent=2) for k, v in EXAMPLES.items()},
        **found,
    )


def _definition(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise HTTPException(422, f"definition: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise HTTPException(422, "definition: must be a JSON object")
    return value


def _back(request: Request, target: str) -> Response:
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.post("/tags")
async def create(
    request: Request,
    name: str = Form(""),
    kind: str = Form("rule"),
    description: str = Form(""),
    schedule: str = Form(""),
    definition: str = Form("{}"),
    who: Principal = Depends(require(*EDITORS)),
) -> Response:
    ws = request.app.state.ws
    try:
        body = TagIn(
            name=name.strip(),
            kind=kind,  # type: ignore[arg-type]
            description=description.strip(),
            owner=who.name,
            schedule=schedule.strip() or None,
            definition=_definition(definition),
        )
        await run_in_threadpool(create_tag, ws.db, body)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    except TagError as exc:
        raise HTTPException(409 if "exists" in exc.message else 422, str(exc)) from None
    accounts.audit(ws.db, who.name, "tag.create", body.name, kind=kind)
    return _back(request, f"/tags/{body.name}")


def _chart(dist: dict[str, int]) -> dict[str, Any]:
    labels = list(dist)
    return {
        "grid": {"left": 150, "right": 60, "top": 10, "bottom": 30},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "minInterval": 1},
        "yAxis": {"type": "category", "data": list(reversed(labels))},
        "series": [
            {
                "name": "persons",
                "type": "bar",
                "data": [dist[v] for v in reversed(labels)],
                "itemStyle": {"color": "#6366f1", "borderRadius": [0, 3, 3, 0]},
                "label": {"show": True, "position": "right"},
            }
        ],
    }


def _detail(ws: Any, name: str) -> dict[str, Any]:
    from rapport.tags import manual

    tag = get_tag(ws.db, name)
    if tag is None:
        raise HTTPException(404, f"no tag named {name!r}")
    current = store.distribution(ws, name)
    dist = current["distribution"]
    bands = tag["definition"].get("bands") or []  # mined models keep bare cut-offs here
    order = {b["label"]: i for i, b in enumerate(bands) if isinstance(b, dict) and "label" in b}
    if order:  # banded values read best in band order
        dist = {v: dist[v] for v in sorted(dist, key=lambda v: order.get(v, len(order)))}
    runs = store.runs(ws.db, name)
    last_done = next((r for r in runs if r["status"] == "done"), None)
    cluster_detail = None
    if last_done and isinstance(last_done.get("detail"), dict):
        cluster_detail = last_done["detail"]
    return {
        "tag": tag,
        "definition_json": json.dumps(tag["definition"], ensure_ascii=False, indent=2),
        "persons": current["persons"],
        "total": current["total"],
        "share": current["persons"] / current["total"] if current["total"] else None,
        "dist_chart": _chart(dist) if dist else None,
        "height": max(200, 26 * len(dist) + 60),
        "runs": runs,
        "last_detail": cluster_detail,
        "manual_values": manual.values(ws.db, name, limit=20) if tag["kind"] == "manual" else [],
    }


@router.get("/tags/{name}", response_class=HTMLResponse)
async def detail(name: str, request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_detail, request.app.state.ws, name)
    return render(
        request, "tags/detail.html", title=f"Tag · {name}", can_edit=can_edit(who), **found
    )


@router.post("/tags/{name}")
async def update(
    name: str,
    request: Request,
    description: str = Form(""),
    schedule: str = Form(""),
    definition: str = Form("{}"),
    who: Principal = Depends(require(*EDITORS)),
) -> Response:
    ws = request.app.state.ws
    try:
        patch = TagPatch(
            description=description.strip(),
            schedule=schedule.strip() or None,
            definition=_definition(definition),
        )
        found = await run_in_threadpool(update_tag, ws.db, name, patch)
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    except TagError as exc:
        raise HTTPException(422, str(exc)) from None
    if found is None:
        raise HTTPException(404, f"no tag named {name!r}")
    accounts.audit(ws.db, who.name, "tag.update", name)
    return toast(_back(request, f"/tags/{name}"), f"Tag {name} saved.")


@router.post("/tags/{name}/compute")
async def compute(
    name: str, request: Request, who: Principal = Depends(require(*EDITORS))
) -> Response:
    from rapport.tags.compute import compute_tag

    ws = request.app.state.ws
    if get_tag(ws.db, name) is None:
        raise HTTPException(404, f"no tag named {name!r}")
    try:
        report = await run_in_threadpool(compute_tag, ws, name)
    except (TagError, ValueError) as exc:
        raise HTTPException(422, f"the run failed: {exc}") from None
    accounts.audit(ws.db, who.name, "tag.compute", name, run=report.get("run_id"))
    return _back(request, f"/tags/{name}")


@router.post("/tags/{name}/values")
async def set_value(
    name: str,
    request: Request,
    person_key: str = Form(""),
    value: str = Form(""),
    who: Principal = Depends(require(*EDITORS)),
) -> Response:
    """A manual tag's value for one person (applied to the warehouse at the tag's next run)."""
    from rapport.tags import manual

    ws = request.app.state.ws
    if not person_key.strip().isdigit():
        raise HTTPException(422, f"person_key: a person key (a whole number), not {person_key!r}")
    try:
        await run_in_threadpool(
            manual.set_values, ws.db, name, [(int(person_key), value)], who.name
        )
    except store.TagNotFound:
        raise HTTPException(404, f"no tag named {name!r}") from None
    except TagError as exc:
        raise HTTPException(422, str(exc)) from None
    accounts.audit(ws.db, who.name, "tag.value.set", name, person_key=int(person_key), value=value)
    message = f"{name} = {value} for person {person_key}: applied at the next run (or Compute now)."
    return toast(_back(request, f"/tags/{name}"), message)


@router.post("/tags/{name}/delete")
async def delete(
    name: str, request: Request, who: Principal = Depends(require(*EDITORS))
) -> Response:
    ws = request.app.state.ws
    if not await run_in_threadpool(delete_tag, ws.db, name):
        raise HTTPException(404, f"no tag named {name!r}")
    await run_in_threadpool(store.delete_values, ws, name)
    accounts.audit(ws.db, who.name, "tag.delete", name)
    return _back(request, "/tags")
