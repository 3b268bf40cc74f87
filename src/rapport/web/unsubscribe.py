"""The public unsubscribe page of messages to a person: ``/u/{token}`` (no login).

The link (``payload.unsubscribe_url``, ``List-Unsubscribe`` in mail) names the person and the
channel, signed (``delivery.guards.unsubscribe_token``). Opening it shows a button: mail
scanners that follow links must not unsubscribe anyone. The button's POST — or a mail
client's one-click POST (RFC 8058) — records it; the send-time guards then suppress that
channel's messages to the person.
"""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from rapport.delivery import guards
from rapport.delivery.errors import DeliveryError

router = APIRouter(tags=["delivery"])

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font:16px system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status)


def _read(request: Request, token: str) -> tuple[int, str] | HTMLResponse:
    try:
        return guards.read_token(request.app.state.ws.settings.signing_key(), token)
    except DeliveryError:
        return _page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 404)


@router.get("/u/{token}", response_class=HTMLResponse, include_in_schema=False)
async def confirm(token: str, request: Request) -> HTMLResponse:
    found = _read(request, token)
    if isinstance(found, HTMLResponse):
        return found
    _, channel = found
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving messages on <b>{escape(channel)}</b>?</p>"
        f'<form method="post"><button type="submit">Unsubscribe</button></form>',
    )


@router.post("/u/{token}", response_class=HTMLResponse, include_in_schema=False)
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    found = _read(request, token)
    if isinstance(found, HTMLResponse):
        return found
    person, channel = found
    db = request.app.state.ws.db
    await run_in_threadpool(guards.set_consent, db, person, channel, "unsubscribed", "link")
    return _page("Unsubscribed", f"<p>You will get no more messages on {escape(channel)}.</p>")
