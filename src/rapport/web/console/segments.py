"""Segments console: the list of audiences and segmentations, a segment's page (definition,
members, export, refresh, the MECE report of a segmentation), the lifecycle page (stages,
transitions, thresholds, the AARRR funnel) and the audience builder.

The builder (``static/builder.js``) edits a condition tree with pickers fed by the tracking
plan, the tags and the segments (embedded in the page as JSON), and on every edit asks
``/api/conditions/print|validate|parse`` for the text form and ``/api/segments/size`` for the
size, a sample and the overlap with the saved version. The work itself is
``rapport.segments``'; this module reads, calls and draws.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from rapport.accounts import Role, audit
from rapport.catalog import get_plan
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import Condition, from_json
from rapport.conditions.text import to_text
from rapport.conditions.validate import context
from rapport.db import tables
from rapport.segments import audiences, funnel, lifecycle, segmentations
from rapport.segments.live import status as live_status
from rapport.segments.refresh import refresh
from rapport.segments.store import (
    SegmentError,
    SegmentExists,
    SegmentNotFound,
    get_segment,
    list_segments,
    sizes,
)
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require
from rapport.web.console import data
from rapport.web.console.pages import flash, page, problem, render

router = APIRouter(include_in_schema=False)

#: roles that may create and change segments (admins pass every check)
EDITORS = (Role.marketer,)
SAMPLE = 20
STAGE_COLOURS = {
    "new_not_activated": "#94a3b8",
    "retained": "#10b981",
    "silent": "#f59e0b",
    "lost": "#dc2626",
}


def can_edit(principal: Principal) -> bool:
    return principal.role in (Role.admin, *EDITORS)


def _http(exc: Exception) -> HTTPException:
    """``rapport.segments``' refusals as answers that name the field."""
    if isinstance(exc, SegmentNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, SegmentExists):
        return HTTPException(409, str(exc))
    if isinstance(exc, WarehouseBusy):
        return HTTPException(503, str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, ConditionError):
        return HTTPException(422, f"condition: {exc.path}: {exc.message}")
    if isinstance(exc, ValidationError):
        return HTTPException(422, f"condition: {problem(exc)}")
    return HTTPException(422, str(exc))


ERRORS = (SegmentError, SegmentNotFound, ConditionError, ValidationError, WarehouseBusy)


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ERRORS as exc:
        raise _http(exc) from None


def segment_row(ws: Any, name: str) -> dict[str, Any]:
    return _call(get_segment, ws, name)  # type: ignore[no-any-return]


def condition_text(condition: Any) -> str:
    """The readable form of a stored condition JSON (an upload-only list has none)."""
    if condition is None:
        return "(a static list: no condition)"
    return to_text(from_json(condition))


def _bucket_names(definition: dict[str, Any]) -> list[str]:
    return [str(b.get("name")) for b in definition.get("buckets") or [] if b.get("name")]


# -- what the builder's pickers offer ----------------------------------------------------------
def _profile_columns(ws: Any) -> list[str]:
    try:
        with ws.warehouse.connect(wait=data.WAIT_S) as con:
            if "profiles" not in con.list_tables():
                return []
            fixed = ("person_key", "updated_at")
            return [c for c in con.table("profiles").columns if c not in fixed]
    except WarehouseBusy:
        return []


def pickers(ws: Any) -> dict[str, Any]:
    """Events with their properties, item properties, person attributes, tags (with the
    values their last run saw) and segments (with buckets): everything a row can pick."""
    plan = get_plan(ws.db)
    common = [{"name": p.name, "type": p.type.value} for p in plan.common_properties]
    events = [
        {
            "name": e.name,
            "description": e.description,
            "properties": [{"name": p.name, "type": p.type.value} for p in e.properties] + common,
        }
        for e in sorted(plan.events, key=lambda e: e.name)
    ]
    items = sorted({p.name: p.type.value for p in plan.item_properties}.items())
    attrs = {p.name: p.type.value for p in plan.user_properties}
    for column in _profile_columns(ws):
        attrs.setdefault(column, "string")
    with ws.db.connect() as conn:
        tag_rows = conn.execute(
            select(tables.tags.c.id, tables.tags.c.name, tables.tags.c.kind).order_by(
                tables.tags.c.name
            )
        ).all()
        runs = conn.execute(
            select(tables.tag_runs.c.tag_id, tables.tag_runs.c.distribution)
            .where(tables.tag_runs.c.status == "done")
            .order_by(tables.tag_runs.c.id)
        ).all()
    last = {r.tag_id: r.distribution or {} for r in runs}  # the latest run wins
    tags = [
        {"name": t.name, "kind": t.kind, "values": sorted(map(str, last.get(t.id, {})))[:100]}
        for t in tag_rows
    ]
    segments = [
        {"name": s["name"], "kind": s["kind"], "buckets": _bucket_names(s["definition"] or {})}
        for s in list_segments(ws)
    ]
    for s in segments:
        if s["kind"] == "lifecycle" and not s["buckets"]:
            s["buckets"] = list(lifecycle.STAGES)
    return {
        "events": events,
        "items": [{"name": n, "type": t} for n, t in items],
        "attrs": [{"name": n, "type": t} for n, t in sorted(attrs.items())],
        "tags": tags,
        "segments": segments,
    }


# -- the list ----------------------------------------------------------------------------------
@router.get("/segments", response_class=HTMLResponse)
async def segments_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    rows = await run_in_threadpool(list_segments, request.app.state.ws)
    return render(
        request,
        "segments/index.html",
        title="Segments",
        audiences=[r for r in rows if r["kind"] == "audience"],
        segmentations=[r for r in rows if r["kind"] != "audience"],
        can_edit=can_edit(who),
    )


# -- the builder -------------------------------------------------------------------------------
def _builder(ws: Any, name: str | None) -> dict[str, Any]:
    found = {"options": pickers(ws), "segment": None, "condition": None}
    if name is not None:
        row = segment_row(ws, name)
        if row["kind"] != "audience":
            raise HTTPException(
                409, f"{name!r} is a {row['kind']}: the builder edits audiences only"
            )
        found["segment"] = row
        found["condition"] = (row["definition"] or {}).get("condition")
    return found


@router.get("/segments/new", response_class=HTMLResponse)
async def new_audience(request: Request, who: Principal = Depends(page(*EDITORS))) -> HTMLResponse:
    found = await run_in_threadpool(_builder, request.app.state.ws, None)
    return render(request, "segments/builder.html", title="New audience", **found)


@router.get("/segments/{name}/edit", response_class=HTMLResponse)
async def edit_audience(
    name: str, request: Request, who: Principal = Depends(page(*EDITORS))
) -> HTMLResponse:
    found = await run_in_threadpool(_builder, request.app.state.ws, name)
    return render(request, "segments/builder.html", title=f"Edit {name}", **found)


@router.get("/segments/builder/options")
async def builder_options(request: Request, _: Principal = Depends(page())) -> JSONResponse:
    """The pickers' data as JSON (the builder page embeds the same at load)."""
    return JSONResponse(await run_in_threadpool(pickers, request.app.state.ws))


def _condition(ws: Any, raw: Any) -> Condition:
    """The builder's condition, refused (422, every problem with its path) when it names an
    event, property, tag or segment that does not exist."""
    cond: Condition = _call(from_json, raw)
    problems = context(ws).check(cond)
    if problems:
        raise HTTPException(422, "; ".join(f"{p.path}: {p.message}" for p in problems))
    return cond


def save_audience(ws: Any, body: dict[str, Any], actor: str) -> str:
    """Create an audience from the builder (or replace the one being edited) and refresh it,
    so the list shows its size at once; its name."""
    name = str(body.get("name") or "").strip()
    original = str(body.get("original") or "").strip() or None
    mode = str(body.get("mode") or "dynamic")
    description = str(body.get("description") or "")
    if not name:
        raise HTTPException(422, "name: give the audience a name")
    if original is not None and name != original:
        raise HTTPException(422, "name: an audience keeps its name (save a copy under a new one)")
    cond = _condition(ws, body.get("condition"))
    if original is None:
        _call(audiences.create_audience, ws, name, cond, mode, description)
        audit(ws.db, actor, "segment.create", name, kind="audience", via="builder")
    else:
        if segment_row(ws, name)["kind"] != "audience":
            raise HTTPException(409, f"{name!r} is not an audience")
        _call(audiences.update_audience, ws, name, cond, mode=mode, description=description)
        audit(ws.db, actor, "segment.update", name, via="builder")
    _call(refresh, ws, name)
    return name


@router.post("/segments/save")
async def builder_save(
    request: Request,
    body: dict[str, Any] = Body(...),
    who: Principal = Depends(require(*EDITORS)),
) -> JSONResponse:
    name = await run_in_threadpool(save_audience, request.app.state.ws, body, who.name)
    flash(request, f"Audience {name} saved.")
    return JSONResponse({"name": name, "url": f"/segments/{name}"})


# -- one segment -------------------------------------------------------------------------------
def _members(ws: Any, name: str, limit: int = SAMPLE) -> list[dict[str, Any]]:
    with ws.warehouse.connect(wait=data.WAIT_S) as con:
        t = con.table("segment_members")
        rows = (
            t.filter(t.segment == name)
            .select("person_key", "bucket")
            .order_by("person_key")
            .limit(limit)
        )
        return list(rows.to_pyarrow().to_pylist())


def mece_view(report: dict[str, Any]) -> dict[str, Any]:
    """``check_mece``'s report as the page draws it, with the bucket sizes as a bar chart."""
    buckets = report.get("buckets") or []
    names = [str(b["name"]) for b in buckets]
    chart = {
        "grid": {"left": 140, "right": 40, "top": 10, "bottom": 30},
        "tooltip": {"trigger": "axis", "axisPointer": {"type": "shadow"}},
        "xAxis": {"type": "value", "minInterval": 1},
        "yAxis": {"type": "category", "data": list(reversed(names))},
        "series": [
            {
                "name": "persons",
                "type": "bar",
                "data": [int(b["size"]) for b in reversed(buckets)],
                "itemStyle": {"color": "#6366f1", "borderRadius": [0, 3, 3, 0]},
                "label": {"show": True, "position": "right"},
            }
        ],
    }
    uncovered = report.get("uncovered") or {}
    return {
        "ok": bool(report.get("ok")),
        "buckets": buckets,
        "overlaps": report.get("overlaps") or [],
        "uncovered": int(uncovered.get("count") or 0),
        "uncovered_sample": list(uncovered.get("sample") or []),
        "total": report.get("persons"),
        "has_other": bool(report.get("other")),
        "chart": chart,
        "height": max(160, 34 * len(buckets) + 50),
    }


def _detail(ws: Any, name: str) -> dict[str, Any]:
    row = segment_row(ws, name)
    definition = row["definition"] or {}
    found: dict[str, Any] = {"segment": row, "mece": None, "mece_error": None, "buckets": []}
    if row["kind"] == "audience":
        found["text"] = condition_text(definition.get("condition"))
        found["live"] = live_status(ws, row)
    else:
        found["text"] = ""
        found["buckets"] = [
            {"name": b.get("name"), "text": condition_text(b.get("condition"))}
            for b in definition.get("buckets") or []
        ]
    if row["kind"] == "segmentation":
        try:
            found["mece"] = mece_view(segmentations.check_mece(ws, name))
        except ERRORS as exc:
            found["mece_error"] = str(exc)
    try:
        found["members"] = _members(ws, name)
        found["sizes_chart"] = size_chart(row["kind"], sizes(ws, name, last=timedelta(days=90)))
    except WarehouseBusy:
        found["members"], found["sizes_chart"] = [], None
    return found


def size_chart(kind: str, series: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The "Size over time" chart: the whole audience, or one line per bucket."""
    lines = [s for s in series if (s["bucket"] is None) == (kind == "audience") and s["points"]]
    if not lines:
        return None
    return {
        "grid": {"left": 60, "right": 30, "top": 40 if len(lines) > 1 else 15, "bottom": 30},
        "legend": {"show": len(lines) > 1, "top": 0, "type": "scroll"},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "time"},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [
            {
                "name": s["bucket"] or "persons",
                "type": "line",
                "step": "end",
                "showSymbol": len(s["points"]) < 60,
                "data": s["points"],
            }
            for s in lines
        ],
    }


@router.get("/segments/{name}", response_class=HTMLResponse)
async def segment_page(name: str, request: Request, who: Principal = Depends(page())) -> Response:
    if name == lifecycle.NAME:
        return RedirectResponse("/lifecycle", status_code=303)
    found = await run_in_threadpool(_detail, request.app.state.ws, name)
    return render(request, "segments/detail.html", title=name, can_edit=can_edit(who), **found)


def _back(request: Request, target: str) -> Response:
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.post("/segments/{name}/refresh")
async def refresh_segment(
    name: str, request: Request, who: Principal = Depends(require(*EDITORS))
) -> Response:
    ws = request.app.state.ws
    if name == lifecycle.NAME:  # created with the defaults on first use
        out = await run_in_threadpool(_call, lifecycle.refresh_lifecycle, ws)
    else:
        out = await run_in_threadpool(_call, refresh, ws, name)
    audit(ws.db, who.name, "segment.refresh", name, via="console")
    size = out.get("size")
    if size is None and "distribution" in out:
        size = sum(out["distribution"].values())
    flash(
        request,
        f"{name} refreshed: {size:,} persons." if size is not None else f"{name} refreshed.",
    )
    return _back(request, "/lifecycle" if name == lifecycle.NAME else f"/segments/{name}")


def _add_other(ws: Any, name: str) -> None:
    row = segment_row(ws, name)
    if row["kind"] != "segmentation":
        raise HTTPException(409, f"{name!r} is not a segmentation")
    _call(segmentations.update_segmentation, ws, name, {**row["definition"], "other": True})
    _call(refresh, ws, name)


@router.post("/segments/{name}/other")
async def add_other_bucket(
    name: str, request: Request, who: Principal = Depends(require(*EDITORS))
) -> Response:
    """Let an "other" bucket take everyone the named buckets leave out, then refresh."""
    ws = request.app.state.ws
    await run_in_threadpool(_add_other, ws, name)
    audit(ws.db, who.name, "segment.update", name, other=True)
    flash(request, f"{name}: an “other” bucket now takes the uncovered persons.")
    return _back(request, f"/segments/{name}")


# -- lifecycle ---------------------------------------------------------------------------------
def lifecycle_charts(summary: dict[str, Any]) -> dict[str, Any]:
    """A doughnut of the stages and a from → to heatmap of the last refresh's transitions."""
    stages = list(summary["stages"])
    distribution = summary["distribution"]
    pie = {
        "tooltip": {"trigger": "item", "formatter": "{b}: {c} ({d}%)"},
        "legend": {"bottom": 0},
        "series": [
            {
                "type": "pie",
                "radius": ["40%", "70%"],
                # empty stages stay in the legend and the table, not as slivers with labels
                "data": [
                    {
                        "name": s,
                        "value": distribution[s],
                        "itemStyle": {"color": STAGE_COLOURS.get(s, "#6366f1")},
                    }
                    for s in stages
                    if distribution.get(s)
                ],
                "label": {"formatter": "{b}: {c}"},
            }
        ],
    }
    moves = summary.get("transitions") or []
    heat = {
        "tooltip": {"position": "top"},
        "grid": {"left": 140, "right": 20, "top": 10, "bottom": 80},
        "xAxis": {"type": "category", "data": stages, "name": "to", "splitArea": {"show": True}},
        "yAxis": {"type": "category", "data": stages, "name": "from", "splitArea": {"show": True}},
        "visualMap": {
            "min": 0,
            "max": max([int(m["count"]) for m in moves] or [1]),
            "orient": "horizontal",
            "left": "center",
            "bottom": 0,
            "calculable": True,
        },
        "series": [
            {
                "type": "heatmap",
                "data": [
                    [stages.index(m["to"]), stages.index(m["from"]), int(m["count"])]
                    for m in moves
                    if m["to"] in stages and m["from"] in stages
                ],
                "label": {"show": True},
            }
        ],
    }
    return {"pie": pie, "heat": heat, "stages": [(s, distribution.get(s, 0)) for s in stages]}


def funnel_view(found: dict[str, Any]) -> dict[str, Any]:
    """The AARRR stages as table rows and an ECharts funnel."""
    stages = found.get("stages") or []
    chart = {
        "tooltip": {"trigger": "item", "formatter": "{b}: {c}"},
        "series": [
            {
                "type": "funnel",
                "sort": "none",
                "left": "10%",
                "width": "80%",
                "minSize": "8%",
                "data": [{"name": s["stage"], "value": s["persons"]} for s in stages],
                "label": {"show": True, "position": "inside", "formatter": "{b}: {c}"},
            }
        ],
    }
    return {"rows": stages, "chart": chart, "events": found.get("activation_events") or []}


def _lifecycle(ws: Any) -> dict[str, Any]:
    summary = lifecycle.summary(ws)
    problems: list[str] = []
    funnel_found = None
    try:
        funnel_found = funnel_view(funnel.funnel(ws))
    except WarehouseBusy as exc:
        problems.append(str(exc))
    return {
        "summary": summary,
        "segment": find_lifecycle(ws),
        "settings": summary["settings"],
        "charts": lifecycle_charts(summary),
        "transitions": summary.get("transitions") or [],
        "total": sum(summary["distribution"].values()),
        "funnel": funnel_found,
        "problems": problems,
    }


def find_lifecycle(ws: Any) -> dict[str, Any]:
    return segment_row(ws, lifecycle.NAME)


@router.get("/lifecycle", response_class=HTMLResponse)
async def lifecycle_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    found = await run_in_threadpool(_lifecycle, request.app.state.ws)
    return render(
        request,
        "segments/lifecycle.html",
        title="Lifecycle",
        is_admin=who.role is Role.admin,
        can_edit=can_edit(who),
        **found,
    )


def _settings(form: Any) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in ("retained_days", "lost_days"):
        raw = str(form.get(key, "")).strip()
        if raw:
            try:
                changes[key] = int(raw)
            except ValueError:
                raise HTTPException(422, f"{key}: {raw!r} is not a whole number of days") from None
    raw = str(form.get("activation_events", "")).strip()
    if raw:
        changes["activation_events"] = [e.strip() for e in raw.split(",") if e.strip()]
    return changes


@router.post("/lifecycle/settings")
async def lifecycle_settings(
    request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    """Thresholds (days) and the activation events; they apply from the next refresh."""
    ws = request.app.state.ws
    changes = _settings(await request.form())
    try:
        await run_in_threadpool(lambda: lifecycle.configure(ws, **changes))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    audit(ws.db, who.name, "lifecycle.configure", lifecycle.NAME, via="console")
    flash(request, "Lifecycle settings saved; they apply from the next refresh.")
    return _back(request, "/lifecycle")
