"""``/api/analytics/{funnel,retention,trends,lifecycle,distribution}``: run an analysis from a
JSON spec (POST body, or ``?spec=<json>`` on GET so that a link can carry it), as JSON or, with
the ``.csv`` suffix, as the CSV of the very table the JSON carries. Any signed-in role reads.
Errors are 422 naming the field (``steps[1].event: unknown event `veiw`; did you mean …``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from rapport.accounts import Scope, audit
from rapport.analytics import KINDS, AnalyticsError, run, to_csv
from rapport.conditions.errors import ConditionError
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require

router = APIRouter(tags=["analytics"])


def analyse(ws: Any, kind: str, spec: Any) -> dict[str, Any]:
    """Run ``kind`` on ``spec``; refusals as HTTP errors that name the field."""
    if kind not in KINDS:
        raise HTTPException(404, f"unknown analysis {kind!r}; known: {', '.join(KINDS)}")
    try:
        return run(ws, kind, spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        raise HTTPException(422, f"{where}: {err['msg']}") from None
    except (AnalyticsError, ConditionError) as exc:  # a filter the compiler refuses
        raise HTTPException(422, str(exc)) from None
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None


def _spec(raw: str | None) -> dict[str, Any]:
    try:
        spec = json.loads(raw or "{}")
    except ValueError:
        raise HTTPException(422, "spec: not JSON") from None
    if not isinstance(spec, dict):
        raise HTTPException(422, "spec: a JSON object is needed")
    return spec


def csv_response(
    kind: str, result: dict[str, Any], request: Request | None = None, who: Principal | None = None
) -> Response:
    """The CSV download; an export, so audited when the caller is known."""
    if request is not None and who is not None:
        rows = len(result["table"]["rows"])
        audit(request.app.state.ws.db, who.name, "analytics.export", kind, rows=rows)
    return Response(
        to_csv(result),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{kind}.csv"'},
    )


@router.post("/api/analytics/{kind}.csv", response_class=Response)
async def post_csv(
    kind: str,
    request: Request,
    spec: dict[str, Any] = Body(...),
    who: Principal = Depends(require(scope=Scope.read)),
) -> Response:
    result = await run_in_threadpool(analyse, request.app.state.ws, kind, spec)
    return csv_response(kind, result, request, who)


@router.get("/api/analytics/{kind}.csv", response_class=Response)
async def get_csv(
    kind: str,
    request: Request,
    spec: str | None = Query(None, description="the spec as JSON"),
    who: Principal = Depends(require()),
) -> Response:
    result = await run_in_threadpool(analyse, request.app.state.ws, kind, _spec(spec))
    return csv_response(kind, result, request, who)


@router.post("/api/analytics/{kind}")
async def post(
    kind: str,
    request: Request,
    spec: dict[str, Any] = Body(...),
    _: Principal = Depends(require(scope=Scope.read)),
) -> dict[str, Any]:
    return await run_in_threadpool(analyse, request.app.state.ws, kind, spec)


@router.get("/api/analytics/{kind}")
async def get(
    kind: str,
    request: Request,
    spec: str | None = Query(None, description="the spec as JSON"),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    return await run_in_threadpool(analyse, request.app.state.ws, kind, _spec(spec))
