"""The FastAPI application: collector (/v1), management API (/api) and console on one port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.sessions import SessionMiddleware

from rapport.settings import Settings
from rapport.web import security
from rapport.web.metrics import RequestMetrics
from rapport.workspace import Workspace


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Each module's start-up hooks in order, their shutdown hooks in reverse, then the stores
    closed (``app.state.startup`` / ``shutdown``: async callables of the app)."""
    for hook in app.state.startup:
        await hook(app)
    try:
        yield
    finally:
        for hook in reversed(app.state.shutdown):
            await hook(app)
        app.state.ws.close()


def create_app(settings: Settings | None = None, workspace: Workspace | None = None) -> FastAPI:
    ws = workspace or Workspace(settings)
    app = FastAPI(
        title="Rapport",
        version="0.1.0",
        description="Customer data platform and CRM lead engine.",
        lifespan=lifespan,
        # served by rapport.web.security behind a sign-in, not in public
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ws = ws
    app.state.startup = []  # async callables(app), run in order at start-up
    app.state.shutdown = []  # and in reverse order at shutdown
    app.add_middleware(
        SessionMiddleware,
        secret_key=ws.settings.signing_key(),
        session_cookie="rapport_session",
        same_site="lax",
        https_only=security.serves_https(ws.settings.public_url),
    )
    security.install(app, ws.settings.public_url)
    app.add_middleware(RequestMetrics)  # outermost: times the whole request
    from rapport.web import routes

    routes.mount(app)
    return app
