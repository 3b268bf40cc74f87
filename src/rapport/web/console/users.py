"""Admins manage console users: create, change role, disable, reset a password."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport.accounts import Role
from rapport.web import api_users
from rapport.web.auth import Principal, require
from rapport.web.console.pages import page, problem, render, toast

router = APIRouter(include_in_schema=False)


def _table(request: Request) -> HTMLResponse:
    rows = api_users.list_users(request.app.state.ws.db)
    return render(request, "users/_table.html", users=rows, roles=list(Role))


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, _: Principal = Depends(page(Role.admin))) -> HTMLResponse:
    rows = api_users.list_users(request.app.state.ws.db)
    return render(request, "users/index.html", title="Users", users=rows, roles=list(Role))


@router.post("/users", response_class=HTMLResponse)
async def create(
    request: Request,
    username: str = Form(""),
    password: str = Form(""),
    role: str = Form("viewer"),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    try:
        body = api_users.UserCreate(username=username, password=password, role=role)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    await run_in_threadpool(api_users.add_user, request.app.state.ws.db, body, who.name)
    return toast(_table(request), f"User {body.username} created ({body.role.value}).")


@router.post("/users/{username}", response_class=HTMLResponse)
async def change(
    username: str,
    request: Request,
    role: str | None = Form(None),
    disabled: str | None = Form(None),
    password: str | None = Form(None),
    who: Principal = Depends(require(Role.admin)),
) -> Response:
    try:
        patch = api_users.UserPatch(
            role=role or None,  # type: ignore[arg-type]
            disabled=None if disabled is None else disabled == "true",
            password=password or None,
        )
    except ValidationError as exc:
        raise HTTPException(422, problem(exc)) from None
    await run_in_threadpool(
        api_users.change_user, request.app.state.ws.db, username, patch, who.name
    )
    return toast(_table(request), f"User {username} updated.")
