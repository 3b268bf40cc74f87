"""``/api/persons``: the 360° profile, the behaviour timeline, lookup by identifier, and the
rights of access (export) and erasure.

Identifier values are personal data: roles outside ``PII_ROLES`` get them masked, like the
payloads of other endpoints. A merged-away id answers ``308 Permanent Redirect`` to its
survivor (the body says so too), so CRM links to an old id keep working.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from rapport.accounts import Role, audit
from rapport.catalog.pii import pii_fields
from rapport.identity import profile
from rapport.ingest.normalize import InvalidValue
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/persons", tags=["persons"])

PREFIX = "/api/persons"


def masker(request: Request, principal: Principal) -> frozenset[str] | None:
    """The personal field names to mask for this caller; None when it may see them."""
    return None if principal.sees_pii else pii_fields(request.app.state.ws.db)


def moved(request: Request, exc: profile.PersonMerged, prefix: str = PREFIX) -> JSONResponse:
    """308 to the same URL with the survivor's id (query kept); the body says why."""
    old = f"{prefix}/{exc.person_id}"
    path = request.url.path
    url = f"{prefix}/{exc.survivor}{path[len(old) :]}" if path.startswith(old) else path
    if request.url.query:
        url += f"?{request.url.query}"
    return JSONResponse(
        {
            "detail": f"person {exc.person_id} was merged into person {exc.survivor}: see {url}",
            "person_id": exc.person_id,
            "merged_into": exc.survivor,
            "url": url,
        },
        status_code=308,
        headers={"Location": url},
    )


def not_found(exc: profile.PersonNotFound) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def busy(exc: WarehouseBusy) -> HTTPException:
    return HTTPException(503, str(exc), headers={"Retry-After": "5"})


def _utc(value: datetime | None) -> datetime | None:
    """Query times without an offset are read as UTC, like the console's."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("/lookup")
def lookup(
    request: Request,
    type_: str = Query(..., alias="type", min_length=1, description="identifier type: mobile"),
    value: str = Query(..., min_length=1, description="the value as typed; it is normalised"),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    """The person holding an identifier value (``/api/persons/lookup?type=mobile&value=...``)."""
    ws = request.app.state.ws
    try:
        found = profile.find_person(ws, type_, value)
    except InvalidValue as exc:
        raise HTTPException(422, f"value: not a usable {type_} ({exc})") from None
    except ValueError as exc:  # the rules' ConfigError: an unknown type
        raise HTTPException(422, str(exc)) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
    if found is None:
        raise HTTPException(
            404,
            f"no person has this {type_}: the value was never seen (after normalising), "
            "is blocked, or its person was erased",
        )
    return {
        "person_id": found,
        "url": f"{PREFIX}/{found}",
        "console_url": f"/persons/{found}",
    }


@router.get("/{person_id}", response_model=None)
def get_person(
    person_id: int, request: Request, who: Principal = Depends(require())
) -> dict[str, Any] | Response:
    """The 360° view: identifiers by type, how they were linked, merged attributes, slices,
    event counts, first and last seen."""
    try:
        view = profile.person_view(request.app.state.ws, person_id)
    except profile.PersonMerged as exc:
        return moved(request, exc)
    except profile.PersonNotFound as exc:
        raise not_found(exc) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
    fields = masker(request, who)
    return view if fields is None else profile.mask_view(view, fields)


@router.get("/{person_id}/events", response_model=None)
def get_events(
    person_id: int,
    request: Request,
    event: str | None = Query(None, description="event name, or the type of unnamed ones"),
    source: str | None = None,
    start: datetime | None = Query(None, description="from (inclusive), ISO-8601; UTC if naive"),
    end: datetime | None = Query(None, description="to (exclusive), ISO-8601; UTC if naive"),
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    who: Principal = Depends(require()),
) -> dict[str, Any] | Response:
    """The person's events, newest first, filtered and paged."""
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start >= end:
        raise HTTPException(422, "start: must be before end")
    ws = request.app.state.ws
    try:
        current = profile.current_person(ws, person_id)
        if current != person_id:
            return moved(request, profile.PersonMerged(person_id, current))
        rows, total = profile.timeline(
            ws,
            person_id,
            event=event or None,
            source=source or None,
            start=start,
            end=end,
            limit=limit,
            offset=offset,
        )
    except profile.PersonNotFound as exc:
        raise not_found(exc) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
    fields = masker(request, who)
    if fields is not None:
        rows = [profile.mask_event(r, fields) for r in rows]
    return {
        "person_id": person_id,
        "total": total,
        "limit": limit,
        "offset": offset,
        "events": rows,
    }


@router.get("/{person_id}/export", response_model=None)
def export(
    person_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    """Everything held about the person, in clear, as a JSON download (right of access)."""
    ws = request.app.state.ws
    try:
        data = profile.export_person(ws, person_id)
    except profile.PersonMerged as exc:
        return moved(request, exc)
    except profile.PersonNotFound as exc:
        raise not_found(exc) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
    audit(ws.db, who.name, "person.export", str(person_id))
    body = orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2)
    return Response(
        body,
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="person-{person_id}.json"'},
    )


@router.delete("/{person_id}/identifiers/{node_id}")
def detach(
    person_id: int,
    node_id: int,
    request: Request,
    reason: str = Query(..., min_length=3, description="why (kept in the history)"),
    who: Principal = Depends(require(Role.admin)),
) -> dict[str, Any]:
    """Take an identifier away from the person: the value is blocked (it links nobody from
    now on) and the person is recomputed; what it alone held together splits off."""
    return detach_or_explain(request.app.state.ws, person_id, node_id, who.name, reason)


def detach_or_explain(
    ws: Any, person_id: int, node_id: int, actor: str, reason: str
) -> dict[str, Any]:
    """``resolve.remove_identifier`` with its failures as HTTP errors (shared with the console)."""
    from rapport.identity.resolve import remove_identifier

    try:
        out = remove_identifier(ws, node_id, actor, reason, person_id=person_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
    audit(ws.db, actor, "person.detach", str(person_id), node_id=node_id, reason=reason)
    return {"person_id": person_id, "node_id": node_id, **out}


@router.delete("/{person_id}")
def erase(
    person_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Erase the person everywhere (right to erasure); the counts deleted per store.

    A merged-away id is refused (409), not redirected: erasing must name the person erased.
    """
    return erase_or_explain(request.app.state.ws, person_id, who.name)


def erase_or_explain(ws: Any, person_id: int, actor: str) -> dict[str, Any]:
    """``profile.erase_person`` with its failures as HTTP errors (shared with the console)."""
    from rapport.segments.bitmaps import forget_person

    try:
        result = profile.erase_person(ws, person_id, actor)
        result["deleted"]["bitmaps"] = {"sets": forget_person(ws, person_id)}
        return result
    except profile.PersonMerged as exc:
        raise HTTPException(
            409,
            f"person {person_id} was merged into person {exc.survivor}; erasing means erasing "
            f"that whole person: DELETE {PREFIX}/{exc.survivor}",
        ) from None
    except profile.PersonNotFound as exc:
        raise not_found(exc) from None
    except WarehouseBusy as exc:
        raise busy(exc) from None
