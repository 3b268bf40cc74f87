"""Coupons page: every coupon with its issued and redeemed counts, a form to create one (a
pool's codes pasted one a line), more codes for a pool, and "Redeem now"."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from rapport.accounts import Role, audit
from rapport.campaigns.coupons import (
    CouponError,
    CouponIn,
    add_codes,
    create_coupon,
    list_coupons,
    redeem,
)
from rapport.campaigns.store import list_campaigns
from rapport.web.auth import Principal, require
from rapport.web.console.pages import flash, page, render

router = APIRouter(include_in_schema=False)
EDIT = (Role.marketer,)


def _lines(text: Any) -> list[str]:
    return [line.strip() for line in str(text or "").splitlines() if line.strip()]


def _coupon_in(fields: dict[str, Any]) -> CouponIn:
    try:
        return CouponIn.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise CouponError(f"{field}: {first['msg']}", field) from None


@router.get("/coupons", response_class=HTMLResponse)
async def coupons_page(request: Request, who: Principal = Depends(page())) -> HTMLResponse:
    ws = request.app.state.ws
    found = await run_in_threadpool(list_coupons, ws)
    names = [c["name"] for c in await run_in_threadpool(list_campaigns, ws)]
    can_edit = who.role in (Role.admin, *EDIT)
    return render(
        request,
        "coupons/index.html",
        title="Coupons",
        coupons=found,
        campaigns=names,
        can_edit=can_edit,
    )


@router.post("/coupons", response_class=HTMLResponse)
async def create(request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    form = await request.form()
    body = _coupon_in(
        {
            "name": str(form.get("name", "")).strip(),
            "kind": form.get("kind"),
            "campaign": form.get("campaign") or None,
            "prefix": str(form.get("prefix", "")).strip(),
            "value": str(form.get("value", "")).strip(),
            "valid_until": form.get("valid_until") or None,
            "codes": _lines(form.get("codes")),
        }
    )
    ws = request.app.state.ws
    await run_in_threadpool(create_coupon, ws, body)
    audit(ws.db, who.name, "coupon.create", body.name, kind=body.kind, codes=len(body.codes))
    flash(request, f"Coupon {body.name} created.")
    return Response(status_code=200, headers={"HX-Redirect": "/coupons"})


@router.post("/coupons/{name}/codes", response_class=HTMLResponse)
async def upload(name: str, request: Request, who: Principal = Depends(require(*EDIT))) -> Response:
    ws = request.app.state.ws
    added = await run_in_threadpool(
        add_codes, ws, name, _lines((await request.form()).get("codes"))
    )
    audit(ws.db, who.name, "coupon.codes", name, added=added)
    flash(request, f"{added} codes added to {name}.")
    return Response(status_code=200, headers={"HX-Redirect": "/coupons"})


@router.post("/coupons/redeem", response_class=HTMLResponse)
async def redeem_now(request: Request, _: Principal = Depends(require(*EDIT))) -> Response:
    done = await run_in_threadpool(redeem, request.app.state.ws)
    flash(request, f"{done['redeemed']} codes redeemed by orders ({done['open']} were open).")
    return Response(status_code=200, headers={"HX-Redirect": "/coupons"})
