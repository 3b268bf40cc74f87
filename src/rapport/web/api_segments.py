"""``/api/segments``: audiences and segmentations (CRUD, refresh, members, CSV export and
upload, the MECE check), ``POST /api/segments/size`` for the audience builder (called on every
edit: the bitmap index answers when it can), ``/api/lifecycle`` and ``/api/funnel``.

Marketers own audiences and segmentations; anyone signed in may read them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from rapport.accounts import Role, Scope, audit
from rapport.catalog.pii import mask_csv, pii_fields
from rapport.conditions.errors import ConditionError
from rapport.segments import audiences, funnel, lifecycle, segmentations
from rapport.segments.refresh import refresh
from rapport.segments.store import (
    SegmentError,
    SegmentExists,
    SegmentNotFound,
    delete_segment,
    get_segment,
    list_segments,
    members,
    update_segment,
)
from rapport.segments.store import sizes as size_series
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require

router = APIRouter(tags=["segments"])
EDIT = (Role.marketer,)


class SegmentIn(BaseModel):
    name: str
    kind: str = Field("audience", description="audience | segmentation")
    mode: str = Field("dynamic", description="dynamic | static (audiences)")
    description: str = ""
    condition: dict[str, Any] | str | None = Field(
        None, description="audience: the condition, as JSON or in the text form"
    )
    definition: dict[str, Any] | None = Field(
        None, description='segmentation: {"dimension", "buckets": [{"name", "condition"}], "other"}'
    )


class SegmentPatch(BaseModel):
    description: str | None = None
    mode: str | None = None
    condition: dict[str, Any] | str | None = None
    definition: dict[str, Any] | None = None


class SizeIn(BaseModel):
    condition: dict[str, Any] | str
    previous: dict[str, Any] | str | None = Field(
        None, description="the version before the edit: the answer then includes the overlap"
    )
    as_of: datetime | None = None
    sample: int = Field(10, ge=0, le=100)


class LifecycleSettings(BaseModel):
    # none would make "activated" a constant the warehouse query cannot aggregate
    activation_events: list[str] | None = Field(None, min_length=1)
    retained_days: int | None = None
    lost_days: int | None = None


def _invalid(exc: Exception) -> HTTPException:
    if isinstance(exc, SegmentNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, SegmentExists):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, WarehouseBusy):
        return HTTPException(503, str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, ConditionError):
        return HTTPException(422, {"message": exc.message, "path": exc.path})
    return HTTPException(422, str(exc))


ERRORS = (SegmentError, SegmentNotFound, ConditionError, WarehouseBusy)


def _as_of(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/api/segments")
def list_all(
    request: Request, kind: str | None = None, _: Principal = Depends(require())
) -> list[dict[str, Any]]:
    return list_segments(request.app.state.ws, kind)


@router.post("/api/segments", status_code=status.HTTP_201_CREATED)
def create(
    body: SegmentIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    try:
        if body.kind == "audience":
            created = audiences.create_audience(
                ws, body.name, body.condition, body.mode, body.description
            )
        elif body.kind == "segmentation":
            created = segmentations.create_segmentation(
                ws, body.name, body.definition or {}, body.description
            )
        else:
            raise SegmentError("kind", "create an audience or a segmentation")
    except ERRORS as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "segment.create", body.name, kind=body.kind)
    return created


@router.post("/api/segments/size")
def size(
    body: SizeIn, request: Request, _: Principal = Depends(require(scope=Scope.read))
) -> dict[str, Any]:
    """Size, whether the bitmap index alone answered, milliseconds and a sample of persons;
    with ``previous``, the overlap with the version before the edit."""
    ws = request.app.state.ws
    when = _as_of(body.as_of)
    try:
        cond = audiences.parse_condition(body.condition)
        before = None if body.previous is None else audiences.parse_condition(body.previous)
        out = audiences.size_of(ws, cond, when, body.sample, previous=before)
    except ERRORS as exc:
        raise _invalid(exc) from None
    out["sample"] = [{"person_key": p, "url": f"/persons/{p}"} for p in out["sample"]]
    return out


@router.get("/api/segments/{name}")
def get_one(name: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    """The segment; an audience also says whether it is kept current per event (``live``)
    and, when it is not, why (``live_reason``)."""
    from rapport.segments.live import status

    ws = request.app.state.ws
    try:
        seg = get_segment(ws, name)
        if seg["kind"] == "audience":
            live = status(ws, seg)
            seg.update(live=live["live"], live_reason=live["reason"])
        return seg
    except ERRORS as exc:
        raise _invalid(exc) from None


@router.patch("/api/segments/{name}")
def update(
    name: str, body: SegmentPatch, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    changes = body.model_dump(exclude_unset=True)
    try:
        kind = get_segment(ws, name)["kind"]
        condition = changes.pop("condition", None)
        definition = changes.pop("definition", None)
        if condition is not None:
            audiences.update_audience(ws, name, condition)
        if definition is not None:
            if kind == "segmentation":
                segmentations.update_segmentation(ws, name, definition)
            else:
                raise SegmentError("definition", f"{name!r} is a {kind}")
        updated = update_segment(ws, name, **changes)
    except ERRORS as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "segment.update", name, fields=sorted(body.model_fields_set))
    return updated


@router.delete("/api/segments/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: str, request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    ws = request.app.state.ws
    try:
        if get_segment(ws, name)["kind"] == "lifecycle":
            raise SegmentError("name", "the lifecycle is built in")
        delete_segment(ws, name)
    except ERRORS as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "segment.delete", name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/api/segments/{name}/refresh")
def refresh_one(
    name: str,
    request: Request,
    as_of: datetime | None = None,
    who: Principal = Depends(require(*EDIT)),
) -> dict[str, Any]:
    ws = request.app.state.ws
    try:
        out = refresh(ws, name, _as_of(as_of))
    except ERRORS as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "segment.refresh", name)
    return out


@router.get("/api/segments/{name}/members")
def list_members(
    name: str,
    request: Request,
    limit: int = Query(100, ge=0, le=10_000),
    bucket: str | None = None,
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    ws = request.app.state.ws
    try:
        get_segment(ws, name)
        found = members(ws, name, bucket)
    except ERRORS as exc:
        raise _invalid(exc) from None
    keys = audiences.first(found, limit)
    return {
        "segment": name,
        "bucket": bucket,
        "size": len(found),
        "members": [{"person_key": p, "url": f"/persons/{p}"} for p in keys],
    }


@router.get("/api/segments/{name}/sizes")
def size_history(
    name: str,
    request: Request,
    since: datetime | None = Query(None, description="ISO time (UTC when no offset)"),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    """The segment's size over time: one series for the whole, one per bucket."""
    ws = request.app.state.ws
    try:
        seg = get_segment(ws, name)
        series = size_series(ws, name, None if since is None else _as_of(since))
    except ERRORS as exc:
        raise _invalid(exc) from None
    return {"segment": name, "kind": seg["kind"], "series": series}


@router.get("/api/segments/{name}/export.csv")
def export(
    name: str,
    request: Request,
    attributes: str = Query("", description="comma-separated profile attributes"),
    who: Principal = Depends(require(*EDIT)),
) -> Response:
    ws = request.app.state.ws
    chosen = [a.strip() for a in attributes.split(",") if a.strip()]
    try:
        get_segment(ws, name)
        text = audiences.export_csv(ws, name, chosen)
    except ERRORS as exc:
        raise _invalid(exc) from None
    if not who.sees_pii:  # a marketer's list: the attributes, personal ones masked
        text = mask_csv(text, pii_fields(ws.db))
    audit(ws.db, who.name, "segment.export", name, attributes=chosen)
    return Response(
        text,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@router.post("/api/segments/{name}/upload")
async def upload(
    name: str,
    request: Request,
    replace: bool = True,
    who: Principal = Depends(require(*EDIT)),
) -> dict[str, Any]:
    """The request body is the CSV: ``person_key`` column, or ``type,value`` identifiers."""
    ws = request.app.state.ws
    raw = (await request.body()).decode("utf-8-sig", errors="replace")
    try:
        report = audiences.upload(ws, name, raw, replace=replace)
    except ERRORS as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "segment.upload", name, persons=report.persons)
    return dict(report.__dict__)


@router.get("/api/segments/{name}/mece")
def mece(
    name: str, request: Request, as_of: datetime | None = None, _: Principal = Depends(require())
) -> dict[str, Any]:
    try:
        return segmentations.check_mece(request.app.state.ws, name, _as_of(as_of))
    except ERRORS as exc:
        raise _invalid(exc) from None


@router.get("/api/lifecycle")
def lifecycle_summary(request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    return lifecycle.summary(request.app.state.ws)


@router.patch("/api/lifecycle")
def lifecycle_settings(
    body: LifecycleSettings, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    try:
        out = lifecycle.configure(ws, **body.model_dump(exclude_unset=True))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    audit(ws.db, who.name, "lifecycle.configure", lifecycle.NAME)
    return out


@router.post("/api/lifecycle/refresh")
def lifecycle_refresh(
    request: Request, as_of: datetime | None = None, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    try:
        out = lifecycle.refresh_lifecycle(ws, _as_of(as_of))
    except WarehouseBusy as exc:
        raise _invalid(exc) from None
    audit(ws.db, who.name, "lifecycle.refresh", lifecycle.NAME)
    return out


@router.get("/api/funnel")
def aarrr(
    request: Request, as_of: datetime | None = None, _: Principal = Depends(require())
) -> dict[str, Any]:
    return funnel.funnel(request.app.state.ws, _as_of(as_of))
