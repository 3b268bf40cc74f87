"""Public tracking routes of campaign links (no login; the signed token is the credential):

- ``GET /r/{token}``: records a click (``?via=qr``: a scan) and redirects (302) to the target
  the campaign stored for the token (never to a URL taken from the request), with ``rt=<token>``
  added to its query for the landing page;
- ``GET /q/{token}.png``: the QR code of ``/r/{token}?via=qr``;
- ``POST /api/track/register`` ``{"token": …}``: a landing page reports that the visitor who
  came through the link registered.

An invalid or tampered token gets a 404 page.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from rapport.campaigns.links import BadToken, Kind, follow, landing_url, qr_png, read_token
from rapport.web.unsubscribe import _page

router = APIRouter(tags=["campaigns"])


def _invalid() -> HTMLResponse:
    return _page("Link not valid", "<p>This link is not valid.</p>", 404)


async def _follow(request: Request, token: str, kind: Kind) -> str | None:
    s = request.app.state.ws
    agent = request.headers.get("user-agent")
    try:
        return await run_in_threadpool(follow, s.db, s.settings.signing_key(), token, kind, agent)
    except BadToken:
        return None


@router.get("/r/{token}", include_in_schema=False)
async def redirect(token: str, request: Request, via: str = "") -> Response:
    target = await _follow(request, token, "scan" if via == "qr" else "click")
    if target is None:
        return _invalid()
    return RedirectResponse(landing_url(target, token), status_code=302)


@router.get("/q/{token}.png", include_in_schema=False)
async def qr(token: str, request: Request) -> Response:
    settings = request.app.state.ws.settings
    try:
        read_token(settings.signing_key(), token)
    except BadToken:
        return _invalid()
    base = settings.public_url.rstrip("/") or str(request.base_url).rstrip("/")
    png = await run_in_threadpool(qr_png, f"{base}/r/{token}?via=qr")
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400"})


class Registered(BaseModel):
    token: str = Field(min_length=1, max_length=200)


@router.post("/api/track/register", status_code=204)
async def register(body: Registered, request: Request) -> Response:
    """Attribute a registration to the campaign of the link the visitor came through."""
    if await _follow(request, body.token, "register") is None:
        return _invalid()
    return Response(status_code=204)
