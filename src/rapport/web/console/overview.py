"""The home page: how much data is flowing, and whether anything needs attention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from rapport.db.tables import import_runs, quarantine, sources
from rapport.web.auth import Principal
from rapport.web.console import data
from rapport.web.console.pages import page, render

router = APIRouter(include_in_schema=False)


def _summary(ws: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    with ws.db.connect() as conn:
        n_sources = conn.execute(select(func.count()).select_from(sources)).scalar_one()
        n_quarantine = conn.execute(
            select(func.count()).select_from(quarantine).where(quarantine.c.status == "open")
        ).scalar_one()
        runs = (
            conn.execute(select(import_runs).order_by(import_runs.c.id.desc()).limit(5))
            .mappings()
            .all()
        )
    hours = data.events_per_hour(ws, now - timedelta(hours=23), now)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = data.count_events(ws, since=midnight)
    return {
        "n_sources": n_sources,
        "n_quarantine": n_quarantine,
        "runs": runs,
        "today": today,
        "hour_chart": _hour_chart(hours),
        "total_events": data.total_logged(ws),
    }


def _hour_chart(hours: list[tuple[datetime, int]]) -> dict[str, Any]:
    return {
        "grid": {"left": 48, "right": 16, "top": 24, "bottom": 32},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "category", "data": [h.strftime("%H:00") for h, _ in hours]},
        "yAxis": {"type": "value", "minInterval": 1},
        "series": [
            {
                "name": "events",
                "type": "bar",
                "data": [n for _, n in hours],
                "itemStyle": {"color": "#6366f1", "borderRadius": [3, 3, 0, 0]},
            }
        ],
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    summary = await run_in_threadpool(_summary, request.app.state.ws)
    return render(request, "overview.html", title="Overview", **summary)
