"""The error answers every route may give, declared once so the OpenAPI schema lists them.

Clients generated from the schema (and schemathesis, tests/test_fuzz_api.py) then know that a
404 or 409 carries ``{"detail": ...}`` instead of meeting an undocumented status code.
``routes.mount`` passes these to ``include_router``; a route's own ``responses`` win.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)


class ErrorOut(BaseModel):
    """An /api error: ``detail`` is a message, or a list of ``{loc, msg, ...}`` for invalid
    fields (FastAPI's validation errors and the condition checker's), or a structured
    problem; some answers add the offending ``field``."""

    model_config = ConfigDict(extra="allow")
    detail: str | list[Any] | dict[str, Any] = Field(description="What was wrong, and where.")


class CollectorErrorOut(BaseModel):
    """A /v1 collector error, in the shape Segment's libraries log."""

    model_config = ConfigDict(extra="allow")
    success: bool = False
    code: str = Field(description="A stable machine-readable reason, e.g. 'payload_too_large'.")
    message: str = Field(description="What was wrong, and where.")


_API_CODES = {
    400: "The request could not be used (the detail says why).",
    401: "No valid credentials.",
    403: "The caller's role may not do this.",
    404: "No such object.",
    409: "Conflicts with the current state (a duplicate name, an illegal transition).",
    413: "The request body is over a configured limit.",
    422: "A field is invalid (the detail names it).",
    503: "The metadata database is unreachable or busy; retry after Retry-After seconds.",
}
_COLLECTOR_CODES = {
    400: "The body is not valid JSON or not a Segment message (the message says where).",
    401: "No valid write key.",
    403: "The source may not send this.",
    413: "The body or an event is over a configured limit (the message names it).",
    422: "An event was refused by the tracking plan (strict sources).",
    429: "Over the source's rate limit; send the request again after Retry-After seconds.",
    503: "The event log is overloaded; send the request again after Retry-After seconds.",
}

API_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in _API_CODES.items()
}
COLLECTOR_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": CollectorErrorOut, "description": text}
    for code, text in _COLLECTOR_CODES.items()
}


def responses(router: APIRouter) -> dict[int | str, dict[str, Any]]:
    """The error answers to declare for every route of ``router``."""
    paths = [getattr(route, "path", "") for route in router.routes]
    if paths and all(path.startswith("/v1/") for path in paths):
        return COLLECTOR_ERRORS
    return API_ERRORS


def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"a number in the request is out of range (at most {2**63 - 1}): {exc}"},
        status_code=400,
    )


def _metadata_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After, not a 500 with a traceback: the metadata DB is down or restarting
    (PostgreSQL) or busy (SQLite's lock); the engine reconnects by itself (``pool_pre_ping``)."""
    assert isinstance(exc, DBAPIError)
    if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
        raise exc  # a real error of the query, not of the connection
    log.warning("metadata database unavailable on %s: %s", request.url.path, exc.orig)
    message = f"metadata database unavailable ({type(exc.orig).__name__}), retry shortly"
    headers = {"Retry-After": "5"}
    if request.url.path.startswith("/v1/"):
        body = {"success": False, "code": "metadata_unavailable", "message": message}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse({"detail": message}, status_code=503, headers=headers)


def install(app: FastAPI) -> None:
    """Answer 400, not 500, for an integer the metadata DB cannot store (an id or offset of
    2**63 or more: SQLite raises OverflowError when binding it), and 503 when the metadata DB
    cannot be reached."""
    app.add_exception_handler(OverflowError, _out_of_range)
    app.add_exception_handler(DBAPIError, _metadata_unavailable)
