"""Console pages of delivery: the delivery log (filters, a message's tries, Replay) and the
channels (configure, send a test). Plugged in by ``rapport.web.api_delivery.setup``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport import accounts
from rapport.accounts import Role
from rapport.delivery import channels, outbox
from rapport.delivery.errors import DeliveryError
from rapport.web.auth import Principal, redactor, require
from rapport.web.console.pages import Pager, page, problem, render, toast

router = APIRouter(include_in_schema=False)
EDIT = (Role.marketer,)


def _filters(params: Any) -> dict[str, Any]:
    status = params.get("status") or None
    person = params.get("person") or ""
    return {
        "status": status if status in outbox.STATUSES else None,
        "channel": params.get("channel") or None,
        "origin": params.get("origin") or None,
        "person_key": int(person) if person.isdigit() else None,
    }


def _listing(ws: Any, filters: dict[str, Any], pager: Pager) -> dict[str, Any]:
    found = outbox.list_messages(ws.db, limit=pager.per_page, offset=pager.offset, **filters)
    return {
        "messages": found,
        "pager": pager.with_total(None, len(found)),
        "filters": filters,
        "statuses": outbox.STATUSES,
        "channel_names": [c["name"] for c in channels.list_channels(ws.db)],
        "stats": outbox.stats(ws.db),
    }


@router.get("/delivery", response_class=HTMLResponse)
async def log_page(request: Request, _: Principal = Depends(page())) -> HTMLResponse:
    pager = Pager.from_request(request)
    found = await run_in_threadpool(
        _listing, request.app.state.ws, _filters(request.query_params), pager
    )
    mask = redactor(request)
    for m in found["messages"]:
        m["payload"] = mask(m["payload"])
    return render(request, "delivery/index.html", title="Delivery log", **found)


@router.get("/delivery/messages/{message_id}", response_class=HTMLResponse)
async def message_page(
    message_id: int, request: Request, _: Principal = Depends(page())
) -> HTMLResponse:
    found = await run_in_threadpool(outbox.get_message, request.app.state.ws.db, message_id)
    if found is None:
        return render(
            request,
            "error.html",
            status_code=404,
            title="Not found",
            message=f"There is no message {message_id}.",
        )
    found["payload"] = redactor(request)(found["payload"])
    return render(request, "delivery/message.html", title=f"Message {message_id}", m=found)


@router.post("/delivery/messages/{message_id}/replay", response_class=HTMLResponse)
async def replay(
    message_id: int, request: Request, who: Principal = Depends(require(*EDIT))
) -> Response:
    ws = request.app.state.ws
    found = await run_in_threadpool(outbox.replay, ws.db, message_id, who.name)
    accounts.audit(ws.db, who.name, "delivery.replay", str(message_id), channel=found["channel"])
    found["payload"] = redactor(request)(found["payload"])
    response = render(request, "delivery/_message.html", m=found)
    return toast(response, f"Message {message_id} queued again: it will be sent in a moment.")


@router.get("/delivery/channels", response_class=HTMLResponse)
async def channels_page(request: Request, _: Principal = Depends(page(*EDIT))) -> HTMLResponse:
    rows = await run_in_threadpool(channels.list_channels, request.app.state.ws.db)
    return render(
        request,
        "delivery/channels.html",
        title="Channels",
        channels=rows,
        kinds=["webhook", "email", "sms", "push", "wechat_mp", "wecom", "call_list"],
    )


@router.post("/delivery/channels", response_class=HTMLResponse)
async def create_channel(
    request: Request,
    name: str = Form(""),
    kind: str = Form("webhook"),
    description: str = Form(""),
    config: str = Form("{}"),
    secret: str = Form(""),
    rate_per_second: str = Form(""),
    burst: str = Form(""),
    allow_private: bool = Form(False),
    who: Principal = Depends(require(*EDIT)),
) -> Response:
    """Create from the form; the channel's config is JSON text."""
    ws = request.app.state.ws
    if allow_private and who.role is not Role.admin:
        raise DeliveryError("allow_private: only an admin may set it", "allow_private", 403)
    try:
        parsed = orjson.loads(config or "{}")
    except orjson.JSONDecodeError as exc:
        raise DeliveryError(f"config: not valid JSON: {exc}", "config") from None
    fields = {
        "name": name.strip(),
        "kind": kind,
        "description": description.strip(),
        "config": parsed,
        "secret": secret or None,
        "rate_per_second": rate_per_second or None,
        "burst": burst or None,
        "allow_private": allow_private,
    }
    try:
        spec = channels.ChannelSpec.model_validate(fields)
    except ValidationError as exc:
        raise DeliveryError(problem(exc)) from None
    created = await run_in_threadpool(channels.create_channel, ws.db, spec)
    accounts.audit(ws.db, who.name, "channel.create", spec.name, kind=spec.kind)
    rows = await run_in_threadpool(channels.list_channels, ws.db)
    response = render(request, "delivery/_channels.html", channels=rows, created=created)
    return toast(response, f"Channel {spec.name} created.")


@router.post("/delivery/channels/{name}/test", response_class=HTMLResponse)
async def test_channel(
    name: str, request: Request, who: Principal = Depends(require(*EDIT))
) -> Response:
    from rapport.web.api_delivery import test_channel as send_test

    result = await send_test(name, request, None, who)
    if result["ok"]:
        message = f"Test sent to {name}: HTTP {result['http_status']} in {result['ms']} ms."
    else:
        message = f"Test to {name} failed: {result['error']}"
    return toast(Response(status_code=204), message, "ok" if result["ok"] else "error")
