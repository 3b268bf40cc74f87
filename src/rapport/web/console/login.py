"""Sign-in and sign-out, with a per-IP+username lockout against password guessing.

The error never says whether the user exists: an unknown user, a wrong password and a
disabled account all read the same, and the lockout counts attempts the same way.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from threading import Lock

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from rapport import accounts
from rapport.web.auth import csrf_token
from rapport.web.console.pages import current_user, flash, render

router = APIRouter(include_in_schema=False)

BAD_LOGIN = "Wrong username or password."


class LoginGuard:
    """Counts failed sign-ins per (client IP, username); locks after ``limit`` in ``window``."""

    def __init__(self, limit: int = 10, window_s: float = 600.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def locked_for(self, ip: str, username: str) -> float:
        """Seconds until this pair may try again (0 when not locked)."""
        now = time.monotonic()
        with self._lock:
            times = self._recent((ip, username.lower()), now)
            if len(times) < self.limit:
                return 0.0
            return times[0] + self.window_s - now

    def failed(self, ip: str, username: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent((ip, username.lower()), now).append(now)
            if len(self._failures) > 100_000:  # bound memory under a spray of usernames
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, ip: str, username: str) -> None:
        with self._lock:
            self._failures.pop((ip, username.lower()), None)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: never redirect a user to another host after sign-in."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if current_user(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", next=_safe_next(next), error=None, username="")


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    username: str = Form(""),
    password: str = Form(""),
    next: str = Form("/"),
    csrf_token_field: str = Form("", alias="csrf_token"),
) -> Response:
    guard: LoginGuard = request.app.state.login_guard
    ip = request.client.host if request.client else "-"
    username = username.strip()
    target = _safe_next(next)

    def again(error: str, status_code: int) -> Response:
        return render(
            request,
            "login.html",
            status_code=status_code,
            next=target,
            error=error,
            username=username,
        )

    expected = request.session.get("csrf", "")
    if not expected or not hmac.compare_digest(csrf_token_field, expected):
        return again("Your sign-in form expired; please try again.", 403)
    wait = guard.locked_for(ip, username)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        return again(f"Too many failed attempts. Try again in {minutes} minute(s).", 429)
    user = await run_in_threadpool(
        accounts.authenticate, request.app.state.ws.db, username, password
    )
    if user is None:
        guard.failed(ip, username)
        # the name as typed (it may not exist): failed sign-ins are audited too
        accounts.audit(request.app.state.ws.db, username[:100] or "-", "login.failed", ip)
        return again(BAD_LOGIN, 401)
    guard.succeeded(ip, username)
    request.session.clear()  # a fresh session: no fixation of a pre-login session
    request.session["user"] = {"name": user["username"], "role": user["role"]}
    request.session["csrf"] = secrets.token_urlsafe(24)
    accounts.audit(request.app.state.ws.db, user["username"], "login", ip)
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(
    request: Request, csrf_token_field: str = Form("", alias="csrf_token")
) -> Response:
    expected = csrf_token(request)
    if hmac.compare_digest(csrf_token_field, expected):
        request.session.clear()
        flash(request, "You are signed out.")
    return RedirectResponse("/login", status_code=303)
