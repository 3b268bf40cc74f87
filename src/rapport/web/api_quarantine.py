"""``/api/quarantine``: see rejected records with their reasons, replay or discard them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from rapport.accounts import Role, audit
from rapport.ingest import quarantine
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/quarantine", tags=["quarantine"])


class Selection(BaseModel):
    ids: list[int] | None = Field(None, description="entries to act on")
    source: str | None = Field(None, description="or: every open entry of this source")


def _ids(request: Request, body: Selection) -> list[int]:
    if body.ids is not None:
        return body.ids
    if body.source is None:
        raise HTTPException(422, "ids: give a list of ids, or a source for all its open entries")
    return quarantine.open_ids(request.app.state.ws.db, body.source)


@router.get("")
def list_quarantine(
    request: Request,
    source: str | None = None,
    reason: str | None = None,
    status_: str = Query("open", alias="status", description="open | replayed | discarded | all"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    db = request.app.state.ws.db
    if status_ not in (*quarantine.STATUSES, "all"):
        raise HTTPException(422, f"status: unknown status {status_!r}")
    entries = quarantine.list_entries(
        db, source, reason, None if status_ == "all" else status_, limit, offset
    )
    return {"entries": entries, "counts": quarantine.counts_by_reason(db)}


@router.post("/replay")
def replay(
    body: Selection, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    ids = _ids(request, body)
    summary = quarantine.replay(request.app.state.ws, ids)
    audit(request.app.state.ws.db, who.name, "quarantine.replay", body.source or "", ids=ids)
    return summary


@router.post("/discard")
def discard(
    body: Selection, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, int]:
    ids = _ids(request, body)
    db = request.app.state.ws.db
    count = quarantine.discard(db, ids)
    audit(db, who.name, "quarantine.discard", body.source or "", ids=ids)
    return {"discarded": count}


@router.delete("/{entry_id}", status_code=status.HTTP_200_OK)
def discard_one(
    entry_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, int]:
    db = request.app.state.ws.db
    count = quarantine.discard(db, [entry_id])
    if not count:
        raise HTTPException(404, f"no open quarantine entry {entry_id}")
    audit(db, who.name, "quarantine.discard", str(entry_id))
    return {"discarded": count}
