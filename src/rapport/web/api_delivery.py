"""``/api/delivery``: channels (CRUD, test send, call-list export), the delivery log (messages
with their tries, replay) and outbox stats; and the in-process dispatcher.

Admins and marketers configure channels; only an admin may let a channel reach private
addresses (``allow_private``) or edit such a channel. Secrets are write-only: the API shows
them masked. Errors answer ``{"detail": ..., "field": ...}``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rapport.accounts import Role, audit
from rapport.catalog.pii import mask_rows, pii_fields
from rapport.delivery import calllist, channels, http, outbox
from rapport.delivery.adapters import adapter_for
from rapport.delivery.errors import DeliveryError
from rapport.web.auth import Principal, redactor, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/delivery", tags=["delivery"])
EDIT = require(Role.marketer)
CALL_TEAM = require(Role.marketer, Role.sales)


def _guard_private(who: Principal, wants: bool, current: dict[str, Any] | None = None) -> None:
    if who.role is Role.admin:
        return
    if wants or (current is not None and current.get("allow_private")):
        raise DeliveryError(
            "allow_private: only an admin may configure a channel that reaches private addresses",
            "allow_private",
            403,
        )


@router.get("/channels")
async def list_channels(request: Request, _: Principal = Depends(EDIT)) -> list[dict[str, Any]]:
    """Every channel, secrets masked."""
    return await run_in_threadpool(channels.list_channels, request.app.state.ws.db)


@router.post("/channels", status_code=201)
async def create_channel(
    spec: channels.ChannelSpec, request: Request, who: Principal = Depends(EDIT)
) -> dict[str, Any]:
    """Save a channel. A webhook without a ``secret`` gets one generated, returned once as
    ``secret_once``."""
    _guard_private(who, spec.allow_private)
    ws = request.app.state.ws
    found = await run_in_threadpool(channels.create_channel, ws.db, spec)
    audit(ws.db, who.name, "channel.create", spec.name, kind=spec.kind)
    return found


@router.get("/channels/{name}")
async def get_channel(name: str, request: Request, _: Principal = Depends(EDIT)) -> dict[str, Any]:
    found = await run_in_threadpool(channels.get_channel, request.app.state.ws.db, name)
    if found is None:
        raise DeliveryError(f"no channel named {name!r}", "name", 404)
    return found


@router.patch("/channels/{name}")
async def update_channel(
    name: str,
    request: Request,
    changes: dict[str, Any] = Body(..., examples=[{"enabled": False}]),
    who: Principal = Depends(EDIT),
) -> dict[str, Any]:
    """Change some fields (a ``secret`` left out stays as it was)."""
    ws = request.app.state.ws
    current = await get_channel(name, request, who)
    _guard_private(who, bool(changes.get("allow_private")), current)
    found = await run_in_threadpool(channels.update_channel, ws.db, name, changes)
    audit(ws.db, who.name, "channel.update", name, fields=sorted(changes))
    return found


@router.delete("/channels/{name}", status_code=204)
async def delete_channel(name: str, request: Request, who: Principal = Depends(EDIT)) -> Response:
    ws = request.app.state.ws
    current = await get_channel(name, request, who)
    _guard_private(who, False, current)
    await run_in_threadpool(channels.delete_channel, ws.db, name)
    audit(ws.db, who.name, "channel.delete", name)
    return Response(status_code=204)


class TestSend(BaseModel):
    payload: dict[str, Any] = {"test": True, "text": "Rapport test message"}


@router.post("/channels/{name}/test")
async def test_channel(
    name: str, request: Request, body: TestSend | None = None, who: Principal = Depends(EDIT)
) -> dict[str, Any]:
    """Send one message now, outside the outbox (not retried); how it went."""
    ws = request.app.state.ws
    channel = await run_in_threadpool(channels.load_channel, ws.db, name)
    adapter = adapter_for(channel.kind)
    message = outbox.Claimed(
        id=0,
        key=f"test:{uuid.uuid4().hex}",
        channel=name,
        person_key=None,
        origin=f"test:{who.name}",
        payload=(body or TestSend()).payload,
        attempt=1,
        queued_at=outbox.now(),
        created_at=outbox.now(),
    )
    async with http.session() as client:
        sent = await adapter.send(channel, message, client)
    audit(ws.db, who.name, "channel.test", name, ok=sent.ok)
    return {
        "ok": sent.ok,
        "key": message.key,
        "http_status": sent.http_status,
        "ms": sent.ms,
        "error": sent.error,
        "response": sent.response,
    }


async def _call_list(request: Request, name: str, mark: bool, who: Principal) -> Any:
    """The call team (sales, admins) gets the numbers to call and takes the list; anyone else
    (marketers) gets a preview with personal columns masked, which leaves the list waiting."""
    ws = request.app.state.ws
    caller = who.sees_pii or who.role is Role.sales
    mark = mark and caller
    header, rows = await run_in_threadpool(calllist.take, ws.db, name, mark)
    if mark and rows:
        audit(ws.db, who.name, "calllist.export", name, rows=len(rows))
    if not caller:
        rows = mask_rows(header, rows, pii_fields(ws.db))
    return header, rows


@router.get("/channels/{name}/call-list.csv")
async def call_list_csv(
    name: str,
    request: Request,
    mark: bool = Query(True, description="mark the exported messages delivered"),
    who: Principal = Depends(CALL_TEAM),
) -> Response:
    """The waiting call list as CSV (UTF-8 with BOM, for Excel)."""
    header, rows = await _call_list(request, name, mark, who)
    return Response(
        calllist.to_csv(header, rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-call-list.csv"'},
    )


@router.get("/channels/{name}/call-list.xlsx")
async def call_list_xlsx(
    name: str,
    request: Request,
    mark: bool = Query(True, description="mark the exported messages delivered"),
    who: Principal = Depends(CALL_TEAM),
) -> Response:
    header, rows = await _call_list(request, name, mark, who)
    return Response(
        await run_in_threadpool(calllist.to_xlsx, header, rows),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="{name}-call-list.xlsx"'},
    )


@router.get("/messages")
async def list_messages(
    request: Request,
    status: str | None = Query(None, description=" | ".join(outbox.STATUSES)),
    channel: str | None = None,
    origin: str | None = Query(None, description="a prefix, e.g. lead: or lead:42"),
    person_key: int | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    _: Principal = Depends(require()),
) -> list[dict[str, Any]]:
    """The delivery log, newest first (payloads masked for roles that may not see PII)."""
    if status is not None and status not in outbox.STATUSES:
        raise DeliveryError(
            f"status: {status!r} is not one of {', '.join(outbox.STATUSES)}", "status"
        )
    found = await run_in_threadpool(
        outbox.list_messages,
        request.app.state.ws.db,
        status=status,
        channel=channel,
        origin=origin,
        person_key=person_key,
        limit=limit,
        offset=offset,
    )
    masked = redactor(request)
    for m in found:
        m["payload"] = masked(m["payload"])
    return found


@router.get("/messages/{message_id}")
async def get_message(
    message_id: int, request: Request, _: Principal = Depends(require())
) -> dict[str, Any]:
    """A message with every try (``attempts_log``)."""
    found = await run_in_threadpool(outbox.get_message, request.app.state.ws.db, message_id)
    if found is None:
        raise DeliveryError(f"no message {message_id}", "id", 404)
    found["payload"] = redactor(request)(found["payload"])
    return found


@router.post("/messages/{message_id}/replay")
async def replay_message(
    message_id: int, request: Request, who: Principal = Depends(EDIT)
) -> dict[str, Any]:
    """Queue a dead or failed message again now, with a fresh retry budget (audited)."""
    ws = request.app.state.ws
    found = await run_in_threadpool(outbox.replay, ws.db, message_id, who.name)
    audit(ws.db, who.name, "delivery.replay", str(message_id), channel=found["channel"])
    found["payload"] = redactor(request)(found["payload"])
    return found


@router.get("/stats")
async def delivery_stats(request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    """Messages per channel and status, due now, the oldest waiting; the in-process
    dispatcher's counters when it runs here."""
    found = await run_in_threadpool(outbox.stats, request.app.state.ws.db)
    dispatcher = getattr(request.app.state, "dispatcher", None)
    found["dispatcher"] = None if dispatcher is None else vars(dispatcher.counters)
    return found


async def _delivery_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DeliveryError)
    return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status)


def setup(app: FastAPI) -> None:
    """The error handler, the console pages, and the in-process dispatcher (unless
    ``dispatcher_in_process`` is off: then ``rapport delivery dispatch`` runs beside)."""
    from rapport.delivery.dispatcher import Dispatcher
    from rapport.web.console import delivery as console_delivery

    app.add_exception_handler(DeliveryError, _delivery_error)
    app.include_router(console_delivery.router)
    stopping = asyncio.Event()

    async def start(app: FastAPI) -> None:
        ws = app.state.ws
        if not ws.settings.dispatcher_in_process:
            return
        stopping.clear()
        app.state.dispatcher = Dispatcher(ws.db, ws.settings)
        app.state.dispatcher_task = asyncio.create_task(app.state.dispatcher.run(stopping))

    async def stop(app: FastAPI) -> None:
        stopping.set()
        task = getattr(app.state, "dispatcher_task", None)
        if task is not None:
            await task
            await app.state.dispatcher.aclose()

    app.state.startup.append(start)
    app.state.shutdown.append(stop)
