"""Analytics console pages under ``/analytics``: a form per analysis (GET, so a result is a
link), the chart (ECharts, exported to PNG in the browser) and the table of numbers, with a
"Download CSV" link to ``/api/analytics/<kind>.csv`` carrying the same spec. The numbers are
``rapport.analytics``'; this module turns forms into specs and results into chart options.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from rapport.catalog import current_plan
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import Did
from rapport.conditions.text import parse
from rapport.db.tables import tags
from rapport.segments import lifecycle
from rapport.web.api_analytics import analyse
from rapport.web.auth import Principal
from rapport.web.console.pages import page, render

router = APIRouter(include_in_schema=False)

TITLES = {
    "funnel": "Funnel",
    "retention": "Retention cohorts",
    "trends": "Event trends",
    "lifecycle": "Lifecycle transitions",
    "distribution": "Distributions",
}
BLUE = "#6366f1"


# -- forms -> specs ---------------------------------------------------------------------------
def _where(event: str, text: str, index: int) -> list[dict[str, Any]]:
    """A step's filter in the condition language's text form (``price >= 100 and …``)."""
    if not text.strip():
        return []
    try:
        did = parse(f"did {event} where {text}")
    except ConditionError as exc:
        raise HTTPException(422, f"steps[{index}].where: {exc.message}") from None
    assert isinstance(did, Did)
    return [c.model_dump(mode="json") for c in did.where]


def spec_from_form(kind: str, q: dict[str, list[str]]) -> dict[str, Any] | None:
    """The spec a submitted form asks for; None when the form has not been submitted."""
    one = {k: v[0] for k, v in q.items() if v and v[0] != ""}
    if kind == "distribution":
        return {"kind": one.get("kind", "tag"), "name": one["name"]} if "name" in one else None
    if "start" not in one:
        return None
    spec: dict[str, Any] = {"start": one["start"], "end": one.get("end")}
    if kind == "funnel":
        events = q.get("event", [])
        wheres = q.get("where", []) + [""] * len(events)
        spec["steps"] = [
            {"event": e, "where": _where(e, w, i)}
            for i, (e, w) in enumerate(zip(events, wheres, strict=False))
            if e
        ]
        spec["window"] = {"amount": int(one.get("window", "7")), "unit": "days"}
        if one.get("breakdown"):
            spec["breakdown"] = {
                "kind": one.get("breakdown_kind", "property"),
                "name": one["breakdown"],
            }
    elif kind == "retention":
        spec |= {
            k: one[k] for k in ("cohort_event", "return_event", "period", "periods") if k in one
        }
    elif kind == "trends":
        spec["events"] = [e for e in q.get("event", []) if e]
        spec |= {k: one[k] for k in ("measure", "interval", "breakdown") if k in one}
    return spec


# -- results -> charts ------------------------------------------------------------------------
def chart(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "funnel": _funnel_chart,
        "retention": _retention_chart,
        "trends": _trends_chart,
        "lifecycle": _flows_chart,
        "distribution": _distribution_chart,
    }[kind](result)


def _funnel_chart(r: dict[str, Any]) -> dict[str, Any]:
    groups = [("all", r["steps"])] + [(b["value"], b["steps"]) for b in r["breakdown"]]
    labels = [f"{s['step']}. {s['event']}" for s in r["steps"]]
    return {
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 0},
        "grid": {"left": 50, "right": 20, "top": 40, "bottom": 30},
        "xAxis": {"type": "category", "data": labels},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [
            {
                "name": name,
                "type": "bar",
                "data": [s["persons"] for s in steps],
                "label": {"show": True, "position": "top"},
            }
            for name, steps in groups
        ],
    }


def _retention_chart(r: dict[str, Any]) -> dict[str, Any]:
    cohorts = [c["cohort"] for c in r["cohorts"]]
    data = [
        [n, i, round(100 * rate, 1)]
        for i, c in enumerate(r["cohorts"])
        for n, rate in enumerate(c["rates"])
        if rate is not None
    ]
    return {
        "tooltip": {"position": "top"},
        "grid": {"left": 90, "right": 20, "top": 10, "bottom": 60},
        "xAxis": {
            "type": "category",
            "data": [f"{r['period']} {n}" for n in range(1, r["periods"] + 1)],
        },
        "yAxis": {"type": "category", "data": cohorts, "inverse": True},
        "visualMap": {
            "min": 0,
            "max": 100,
            "calculable": True,
            "orient": "horizontal",
            "left": "center",
            "bottom": 0,
            "inRange": {"color": ["#eef2ff", BLUE]},
        },
        "series": [
            {"type": "heatmap", "data": data, "label": {"show": True, "formatter": "{@[2]}%"}}
        ],
    }


def _trends_chart(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "tooltip": {"trigger": "axis"},
        "legend": {"top": 0, "type": "scroll"},
        "grid": {"left": 50, "right": 20, "top": 40, "bottom": 30},
        "xAxis": {"type": "category", "data": [b[:16].replace("T00:00", "") for b in r["buckets"]]},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [{"name": s["name"], "type": "line", "data": s["data"]} for s in r["series"]],
    }


def _flows_chart(r: dict[str, Any]) -> dict[str, Any]:
    # separate "from" and "to" nodes: a sankey may not loop (retained -> silent -> retained)
    links = [
        {"source": f"from {f['from']}", "target": f"to {f['to']}", "value": f["transitions"]}
        for f in r["flows"]
    ]
    names = sorted({link["source"] for link in links} | {link["target"] for link in links})
    return {
        "tooltip": {"trigger": "item"},
        "series": [
            {
                "type": "sankey",
                "data": [{"name": n} for n in names],
                "links": links,
                "emphasis": {"focus": "adjacency"},
            }
        ],
    }


def _distribution_chart(r: dict[str, Any]) -> dict[str, Any]:
    if r["histogram"]:
        labels = [f"{v['low']:g}–{v['high']:g}" for v in r["values"]]
    else:
        labels = [str(v["value"]) for v in r["values"]]
    return {
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 50, "right": 20, "top": 20, "bottom": 60},
        "xAxis": {"type": "category", "data": labels, "axisLabel": {"rotate": 30}},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [
            {
                "name": "persons",
                "type": "bar",
                "data": [v["persons"] for v in r["values"]],
                "itemStyle": {"color": BLUE},
            }
        ],
    }


# -- pages ------------------------------------------------------------------------------------
def _names(ws: Any) -> dict[str, list[str]]:
    plan = current_plan(ws.db)
    with ws.db.connect() as conn:
        tag_names = list(conn.execute(select(tags.c.name).order_by(tags.c.name)).scalars())
    return {
        "events": sorted(plan.event_names()),
        "attributes": sorted(plan.user_properties()),
        "tags": tag_names,
        "stages": list(lifecycle.STAGES),
    }


@router.get("/analytics", response_class=HTMLResponse)
async def index(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    return render(request, "analytics/index.html", title="Analytics", titles=TITLES)


@router.get("/analytics/{kind}", response_class=HTMLResponse)
async def analysis(kind: str, request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    if kind not in TITLES:
        raise HTTPException(404, f"no analysis {kind!r}")
    ws = request.app.state.ws
    q = {k: request.query_params.getlist(k) for k in request.query_params}
    found: dict[str, Any] = {"result": None, "error": None, "spec": None}
    try:
        spec = spec_from_form(kind, q)
        if spec is not None:
            found["result"] = await run_in_threadpool(analyse, ws, kind, spec)
            found["spec"] = spec
    except HTTPException as exc:
        found["error"] = exc.detail
    if found["result"] is not None:
        found["chart"] = chart(kind, found["result"])
        found["csv"] = f"/api/analytics/{kind}.csv?spec={quote(json.dumps(found['spec']))}"
    today = datetime.now(UTC).date()
    defaults = {"start": str(today - timedelta(days=30)), "end": str(today + timedelta(days=1))}
    return render(
        request,
        f"analytics/{kind}.html",
        title=TITLES[kind],
        kind=kind,
        titles=TITLES,
        q={k: v[0] for k, v in q.items() if v},
        qs=q,
        defaults=defaults,
        names=await run_in_threadpool(_names, ws),
        **found,
    )
