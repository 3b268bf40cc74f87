"""``/api/events``: what the log holds — counts and the live tail for the console."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request

from rapport.log import LogRecord
from rapport.web.auth import Principal, redactor, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/events", tags=["events"])


def event_json(
    offset: int, record: LogRecord, redact: Callable[[Any], Any] = lambda obj: obj
) -> dict[str, Any]:
    """A log record for JSON output, its payload decoded."""
    return {
        "offset": offset,
        "source": record.source,
        "messageId": record.message_id,
        "type": record.type,
        "event": record.event,
        "userId": record.user_id,
        "anonymousId": record.anonymous_id,
        "timestamp": record.timestamp,
        "receivedAt": record.received_at,
        "flags": record.flags,
        "payload": redact(msgspec.json.decode(record.payload)),
    }


@router.get("/tail")
def tail(
    request: Request,
    after: int | None = Query(
        None, ge=0, le=MAX_OFFSET, description="only events after this offset"
    ),
    limit: int = Query(50, ge=1, le=1000),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    """The newest events (or those after ``after``, oldest first) and the last offset."""
    log = request.app.state.ws.log
    rows = log.tail(limit) if after is None else log.read(after, limit)
    last = rows[-1][0] if rows else (after or log.last_offset())
    redact = redactor(request)
    return {"events": [event_json(o, r, redact) for o, r in rows], "last_offset": last}


@router.get("/count")
def count(
    request: Request,
    event: str | None = None,
    source: str | None = None,
    _: Principal = Depends(require()),
) -> dict[str, int]:
    return {"count": request.app.state.ws.log.count(event=event, source=source)}
