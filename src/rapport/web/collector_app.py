"""The app of ``rapport serve --role collector``: the Segment collector (``/v1``),
``/healthz`` and ``/metrics``, nothing else, so that several of them (ports, machines) can
take events beside one API process, all appending to the shared event log
(``log_backend = "nats"``)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rapport.workspace import Workspace


def create_collector_app(ws: Workspace) -> FastAPI:
    from rapport.web import collector, health
    from rapport.web import metrics as web_metrics
    from rapport.web.app import lifespan

    app = FastAPI(title="Rapport collector", version="0.1.0", lifespan=lifespan)
    app.state.ws = ws
    app.state.startup = []
    app.state.shutdown = []
    for module in (health, collector, web_metrics):
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup(app)
        app.include_router(module.router)
    app.add_middleware(web_metrics.RequestMetrics)
    return app


class _NoCollector:
    """ASGI middleware: ``/v1/*`` is not here (404), the rest goes to the app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            message = "the collector runs in its own processes (rapport serve --role collector)"
            await JSONResponse({"detail": message}, status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def without_collector(app: FastAPI) -> FastAPI:
    """The full app minus ``/v1`` (``--role api``: events go to the collector processes)."""
    app.add_middleware(_NoCollector)
    return app
