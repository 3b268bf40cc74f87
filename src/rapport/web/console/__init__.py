"""The web console: server-rendered pages (Jinja2 + HTMX), one router per page.

``setup(app)`` installs what pages need from the app: the sign-in guard and the handlers that
turn "not signed in" into a redirect to ``/login?next=...`` and "wrong role" into an HTML 403.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from rapport.web.console import (
    events,
    identity,
    login,
    overview,
    persons,
    plan,
    quarantine,
    segments,
    sources,
    tags,
    users,
)
from rapport.web.console.pages import LoginRequired, PageForbidden, render

router = APIRouter(include_in_schema=False)
for _module in (
    login,
    overview,
    plan,
    sources,
    events,
    quarantine,
    users,
    persons,
    identity,
    segments,
    tags,
):
    router.include_router(_module.router)


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_url, safe='/')}", status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    needs = ", ".join(r.value for r in exc.needs)
    return render(
        request,
        "error.html",
        status_code=403,
        title="Not allowed",
        message=f"Your role ({exc.principal.role.value}) cannot open this page; it needs: {needs}.",
    )


def setup(app: FastAPI) -> None:
    app.state.login_guard = login.LoginGuard()
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageForbidden, _forbidden)
