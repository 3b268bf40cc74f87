"""What every console page shares: templates, the signed-in user, flash messages, paging.

Pages are server-rendered; HTMX swaps fragments. Page requests without a session redirect to
the login page (``LoginRequired``); unsafe requests go through ``rapport.web.auth.require``,
which also checks the CSRF token that ``<body hx-headers>`` sends with every HTMX request.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from pydantic import ValidationError

from rapport import accounts
from rapport.accounts import Role
from rapport.web.auth import Principal, csrf_token, redactor

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


class LoginRequired(Exception):
    """Raised by page dependencies when nobody is signed in; answered with a redirect."""

    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class PageForbidden(Exception):
    """Raised when the signed-in role may not open a page; answered with an HTML 403 page."""

    def __init__(self, principal: Principal, needs: tuple[Role, ...]) -> None:
        self.principal = principal
        self.needs = needs


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def _when(value: Any) -> str:
    """Timestamps in UTC, to the second, without the noise of microseconds and offsets."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


@pass_context
def _pretty_json(context: Any, value: Any) -> str:
    """A payload for reading, with personal data masked unless the viewer's role may see it."""
    if isinstance(value, bytes | bytearray):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = {"raw": value}
    value = redactor(context["request"])(value)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


templates = Jinja2Templates(directory=TEMPLATES)
templates.env.filters["number"] = _number
templates.env.filters["when"] = _when
templates.env.filters["pretty_json"] = _pretty_json
templates.env.filters["tojson_attr"] = lambda v: json.dumps(v, ensure_ascii=False, default=str)


def current_user(request: Request) -> Principal | None:
    """The signed-in user, with the role the DB gives now (a disabled user is signed out)."""
    known = getattr(request.state, "principal", None)
    if known is not None:
        return known  # type: ignore[no-any-return]
    user = request.session.get("user")
    if not user:
        return None
    role = accounts.current_role(request.app.state.ws.db, user["name"])
    if role is None:
        request.session.clear()
        return None
    return Principal(user["name"], role, via_session=True)


def page(*roles: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """Dependency for GET pages and fragments: signed in (else redirect), with one of ``roles``."""

    async def dependency(request: Request) -> Principal:
        principal = current_user(request)
        if principal is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise LoginRequired(target)
        if roles and principal.role not in roles and principal.role is not Role.admin:
            raise PageForbidden(principal, roles)
        request.state.principal = principal
        return principal

    return dependency


def flash(request: Request, message: str, level: str = "ok") -> None:
    """A message shown once on the next full page (after a redirect)."""
    request.session.setdefault("flash", []).append({"level": level, "message": message})
    request.session["flash"] = request.session["flash"]  # mark the session modified


def render(
    request: Request,
    name: str,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    user = current_user(request)
    base = {
        "user": user,
        "csrf": csrf_token(request) if "session" in request.scope else "",
        "flashes": request.session.pop("flash", []) if not _is_htmx(request) else [],
        "path": request.url.path,
        "Role": Role,
    }
    return templates.TemplateResponse(
        request, name, {**base, **context}, status_code=status_code, headers=headers
    )


def toast(response: Response, message: str, level: str = "ok") -> Response:
    """Attach a toast to an HTMX response (HX-Trigger event ``flash``, shown by console.js)."""
    response.headers["HX-Trigger"] = json.dumps(
        {"flash": {"level": level, "message": message}}, ensure_ascii=True
    )
    return response


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def problem(exc: Exception) -> str:
    """A user-facing sentence for a validation error, naming the field."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "input"
            parts.append(f"{where}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)


@dataclass(frozen=True)
class Pager:
    """Offset paging with links that keep the page's other query parameters."""

    page: int
    per_page: int
    total: int | None
    query: dict[str, str]
    count_on_page: int = 0

    @classmethod
    def from_request(cls, request: Request, per_page: int = 50) -> Pager:
        try:
            number = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            number = 1
        query = {k: v for k, v in request.query_params.items() if k != "page" and v != ""}
        return cls(number, per_page, None, query)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def with_total(self, total: int | None, count_on_page: int) -> Pager:
        return Pager(self.page, self.per_page, total, self.query, count_on_page)

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        if self.total is None:
            return self.count_on_page >= self.per_page
        return self.page * self.per_page < self.total

    def link(self, page: int) -> str:
        return "?" + urlencode({**self.query, "page": page})


def form_time(field: str, raw: str | None) -> datetime | None:
    """A ``datetime-local`` form value (read as UTC) or ISO-8601 text."""
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"{field}: {raw!r} is not a date-time (YYYY-MM-DDTHH:MM)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
