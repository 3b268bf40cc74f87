"""``/api/tags``: tag definitions (CRUD), computing a tag, and its current distribution."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from rapport.accounts import Role, audit
from rapport.tags import store
from rapport.tags.definitions import (
    TagError,
    TagExists,
    TagIn,
    TagPatch,
    create_tag,
    delete_tag,
    get_tag,
    list_tags,
    update_tag,
)
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/tags", tags=["tags"])
EDITORS = (Role.marketer,)  # and admins


class ComputeIn(BaseModel):
    as_of: str | None = Field(None, description="ISO date-time (UTC); default now")
    full: bool = Field(False, description="recompute everyone, not only what changed")


def _invalid(exc: TagError) -> HTTPException:
    code = status.HTTP_409_CONFLICT if isinstance(exc, TagExists) else 422
    return HTTPException(code, f"{exc.field}: {exc.message}")


def _found(request: Request, name: str) -> dict[str, Any]:
    found = get_tag(request.app.state.ws.db, name)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tag named {name!r}")
    return found


def _with_last_run(ws: Any, tag: dict[str, Any]) -> dict[str, Any]:
    last = store.last_run(ws.db, tag["name"], status=None)
    return {**tag, "last_run": last}


@router.get("")
def list_all(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    ws = request.app.state.ws
    total, covered = store.coverage(ws)
    return [
        {**_with_last_run(ws, t), "persons": covered.get(t["name"], 0), "total": total}
        for t in list_tags(ws.db)
    ]


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    body: TagIn, request: Request, who: Principal = Depends(require(*EDITORS))
) -> dict[str, Any]:
    db = request.app.state.ws.db
    try:
        created = create_tag(db, body)
    except TagError as exc:
        raise _invalid(exc) from None
    audit(db, who.name, "tag.create", body.name, kind=body.kind)
    return created


@router.get("/{name}")
def get(name: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    ws = request.app.state.ws
    tag = _found(request, name)
    return {**tag, "runs": store.runs(ws.db, name)}


@router.patch("/{name}")
def update(
    name: str, body: TagPatch, request: Request, who: Principal = Depends(require(*EDITORS))
) -> dict[str, Any]:
    _found(request, name)
    db = request.app.state.ws.db
    try:
        updated = update_tag(db, name, body)
    except TagError as exc:
        raise _invalid(exc) from None
    audit(db, who.name, "tag.update", name, fields=sorted(body.model_fields_set))
    assert updated is not None
    return updated


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete(name: str, request: Request, who: Principal = Depends(require(*EDITORS))) -> Response:
    ws = request.app.state.ws
    if not delete_tag(ws.db, name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no tag named {name!r}")
    store.delete_values(ws, name)
    audit(ws.db, who.name, "tag.delete", name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/compute")
async def compute(
    name: str,
    request: Request,
    body: ComputeIn | None = None,
    who: Principal = Depends(require(*EDITORS)),
) -> dict[str, Any]:
    """Compute now (synchronously); the answer is the run's report."""
    from datetime import UTC, datetime

    from rapport.tags.compute import compute_tag

    _found(request, name)
    ws = request.app.state.ws
    body = body or ComputeIn.model_validate({})
    as_of = None
    if body.as_of:
        try:
            as_of = datetime.fromisoformat(body.as_of.replace("Z", "+00:00"))
        except ValueError:
            raise HTTPException(422, f"as_of: {body.as_of!r} is not an ISO date-time") from None
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    try:
        report = await run_in_threadpool(compute_tag, ws, name, as_of, full=body.full)
    except TagError as exc:
        raise _invalid(exc) from None
    except ValueError as exc:  # e.g. a condition the compiler refuses
        raise HTTPException(422, str(exc)) from None
    audit(ws.db, who.name, "tag.compute", name, run=report.get("run_id"))
    return report


@router.get("/{name}/distribution")
def distribution(name: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    """Persons with a value, all persons and {value: persons}, as of the last run."""
    _found(request, name)
    return store.distribution(request.app.state.ws, name)


# -- manual tags: values set per person ---------------------------------------------------------
class ValueIn(BaseModel):
    value: str | int | float | bool


class PersonValueIn(ValueIn):
    person_key: int


def _manual_error(exc: Exception) -> HTTPException:
    if isinstance(exc, store.TagNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    assert isinstance(exc, TagError)
    return _invalid(exc)


@router.get("/{name}/values")
def manual_values(
    name: str, request: Request, limit: int = 1000, _: Principal = Depends(require())
) -> list[dict[str, Any]]:
    """A manual tag's values as set (not yet copied to the warehouse until the next run)."""
    from rapport.tags import manual

    try:
        return manual.values(request.app.state.ws.db, name, limit=limit)
    except store.TagNotFound as exc:
        raise _manual_error(exc) from None


@router.put("/{name}/values/{person_key}")
def set_value(
    name: str,
    person_key: int,
    body: ValueIn,
    request: Request,
    who: Principal = Depends(require(*EDITORS)),
) -> dict[str, Any]:
    """Set the person's value of a manual tag; the next run of the tag (every 5 minutes by
    default, or the compute button) makes it visible to audiences and conditions."""
    from rapport.tags import manual

    db = request.app.state.ws.db
    try:
        [(person, value)] = manual.set_values(db, name, [(person_key, body.value)], who.name)
    except (TagError, store.TagNotFound) as exc:
        raise _manual_error(exc) from None
    audit(db, who.name, "tag.value.set", name, person_key=person, value=value)
    return {"tag": name, "person_key": person, "value": value}


@router.delete("/{name}/values/{person_key}", status_code=status.HTTP_204_NO_CONTENT)
def unset_value(
    name: str, person_key: int, request: Request, who: Principal = Depends(require(*EDITORS))
) -> Response:
    from rapport.tags import manual

    db = request.app.state.ws.db
    try:
        had = manual.unset(db, name, person_key)
    except (TagError, store.TagNotFound) as exc:
        raise _manual_error(exc) from None
    if not had:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"person {person_key} has no {name!r}")
    audit(db, who.name, "tag.value.unset", name, person_key=person_key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/values")
def set_many(
    name: str,
    body: list[PersonValueIn],
    request: Request,
    who: Principal = Depends(require(*EDITORS)),
) -> dict[str, Any]:
    """Set many persons' values at once: all are checked first, none is written if one is
    wrong (the error names its position in the list)."""
    from rapport.tags import manual

    db = request.app.state.ws.db
    tag = _found(request, name)
    for i, item in enumerate(body):
        try:
            manual.check_value(tag, item.value)
            if item.person_key < 0:
                raise TagError("person_key", f"an integer >= 0, not {item.person_key}")
        except TagError as exc:
            raise HTTPException(422, f"[{i}] (person {item.person_key}) {exc}") from None
    try:
        done = manual.set_values(db, name, [(i.person_key, i.value) for i in body], who.name)
    except (TagError, store.TagNotFound) as exc:
        raise _manual_error(exc) from None
    audit(db, who.name, "tag.value.bulk", name, persons=len(done))
    return {"tag": name, "set": len(done)}
