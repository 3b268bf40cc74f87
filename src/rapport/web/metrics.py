"""``GET /metrics`` (Prometheus text format) and the request-latency middleware.

Who may scrape: any bearer token or console session with read access, or, while the setting
``metrics_public_loopback`` is on (the default), anyone connecting from this machine's
loopback address without a proxy header: a Prometheus (or agent) beside the server needs no
token, a request relayed by a reverse proxy on the same machine (``X-Forwarded-For``,
``Forwarded``, ``X-Real-IP``) still does.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rapport import metrics
from rapport.web.auth import require

router = APIRouter(tags=["system"])
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
PROXY_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
_reader = require()  # any role; a bearer token needs the read scope


def from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    if host not in LOOPBACK and not host.startswith("127."):
        return False
    return not any(name in PROXY_HEADERS for name, _ in request.scope["headers"])


def render(app: FastAPI) -> bytes:
    """The process's metrics, then the stores' gauges (queried at most every few seconds)."""
    return generate_latest(REGISTRY) + generate_latest(app.state.metrics_registry)


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    """Prometheus metrics of the server: the collector, HTTP, the outbox, lags (see
    docs/operations.md, "Monitoring")."""
    if not (request.app.state.ws.settings.metrics_public_loopback and from_loopback(request)):
        await _reader(request)
    body = await asyncio.to_thread(render, request.app)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: one histogram observation per HTTP request, labelled with the route
    template (``/api/persons/{person_key}``: bounded, unlike paths); ``<unmatched>`` for a
    path no route serves (a 404), so scanners cannot grow the label set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            metrics.HTTP_REQUESTS.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )


def setup(app: FastAPI) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.StoreGauges(app.state.ws))
    app.state.metrics_registry = registry
    metrics.PROCESS.info({"kind": "server"})
