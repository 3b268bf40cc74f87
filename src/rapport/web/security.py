"""Security headers on every answer, and the API documentation behind a sign-in.

The headers come from a plain ASGI middleware (no per-request task or body copy, so the
collector's hot path pays a few list appends). The console's Content-Security-Policy allows
script only from files of this origin: no inline ``<script>``, no ``on*=`` handler, no
``javascript:`` URL and no eval (``Function``, string timers). Templates ask for behaviour with
data attributes that ``static/console.js`` (or a page's own static file) handles, page data
travels in data attributes or ``<script type="application/json">``, and HTMX runs with
``allowEval: false`` (so no ``hx-on``, ``js:`` values or trigger filters); an injected tag
therefore cannot run. Styles keep ``'unsafe-inline'``: templates use ``style=`` attributes and
a few ``<style>`` blocks, and HTMX adds its indicator style; CSS cannot run script. Nothing
comes from another host either: no script, frame, form target or connection. ``/docs`` (Swagger
UI from its CDN, with an inline bootstrap script) gets a policy that also allows that CDN.

HSTS is sent only when the request arrived over https (directly, or ``X-Forwarded-Proto:
https`` from a proxy) or ``public_url`` is https: a plain-http deployment is never told to
refuse http.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rapport.web.auth import current_principal, require

CSP = (
    "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: Swagger UI and ReDoc load their scripts, styles and fonts from jsDelivr / Google Fonts
DOCS_CDN = "https://cdn.jsdelivr.net https://fonts.googleapis.com https://fonts.gstatic.com"
DOCS_CSP = (
    f"default-src 'self'; script-src 'self' 'unsafe-inline' {DOCS_CDN}; "
    f"style-src 'self' 'unsafe-inline' {DOCS_CDN}; img-src 'self' data: https:; "
    f"font-src 'self' data: {DOCS_CDN}; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
PERMISSIONS = "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()"
HSTS = b"max-age=31536000; includeSubDomains"
DOCS_PATHS = ("/docs", "/redoc")


def _common(csp: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"permissions-policy", PERMISSIONS.encode()),
        (b"content-security-policy", csp.encode()),
    ]


class SecurityHeaders:
    """Adds the headers to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.https = https  # public_url is https: every answer carries HSTS
        self.plain = _common(CSP)
        self.docs = _common(DOCS_CSP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs if scope["path"].startswith(DOCS_PATHS) else self.plain
        if self.https or _over_https(scope):
            extra = [*extra, (b"strict-transport-security", HSTS)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in extra if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _over_https(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            return value.split(b",")[0].strip().lower() == b"https"
    return False


def serves_https(public_url: str) -> bool:
    return public_url.strip().lower().startswith("https://")


# -- the API documentation, for signed-in users and bearer tokens only ---------------------------
async def _openapi(request: Request) -> Response:
    await require()(request)  # 401 JSON without credentials, like every /api route
    return JSONResponse(request.app.openapi())


async def _signed_in_or_login(request: Request) -> Response | None:
    if await current_principal(request) is None:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return None


async def _swagger(request: Request) -> Response:
    return await _signed_in_or_login(request) or get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{request.app.title} — API"
    )


async def _redoc(request: Request) -> Response:
    return await _signed_in_or_login(request) or get_redoc_html(
        openapi_url="/openapi.json", title=f"{request.app.title} — API"
    )


def install(app: FastAPI, public_url: str) -> None:
    """The headers middleware, and /openapi.json, /docs and /redoc behind a sign-in (create the
    app with ``openapi_url=None, docs_url=None, redoc_url=None`` so FastAPI's public ones are not
    there)."""
    app.add_middleware(SecurityHeaders, https=serves_https(public_url))
    kwargs: dict[str, Any] = {"include_in_schema": False, "methods": ["GET"]}
    app.add_api_route("/openapi.json", _openapi, **kwargs)
    app.add_api_route("/docs", _swagger, **kwargs)
    app.add_api_route("/redoc", _redoc, **kwargs)
