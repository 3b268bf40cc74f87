"""``/api/coupons``: create pool or generated coupons, list them with issued and redeemed
counts, upload a pool's codes, and redeem from order events on demand (docs/campaigns.md).

Marketers edit; any role reads. Codes reach persons only through campaign content.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request, status
from fastapi.concurrency import run_in_threadpool

from rapport.accounts import Role, audit
from rapport.campaigns.coupons import (
    CouponIn,
    add_codes,
    create_coupon,
    get_coupon,
    list_coupons,
    redeem,
)
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/coupons", tags=["campaigns"])
EDIT = (Role.marketer,)


@router.get("")
def list_all(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    return list_coupons(request.app.state.ws)


@router.post("", status_code=status.HTTP_201_CREATED)
def create(
    body: CouponIn, request: Request, who: Principal = Depends(require(*EDIT))
) -> dict[str, Any]:
    ws = request.app.state.ws
    created = create_coupon(ws, body)
    audit(ws.db, who.name, "coupon.create", body.name, kind=body.kind, codes=len(body.codes))
    return created


@router.get("/{name}")
def get_one(name: str, request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    return get_coupon(request.app.state.ws, name)


@router.post("/{name}/codes")
def upload(
    name: str,
    request: Request,
    codes: list[str] = Body(..., embed=True, max_length=1_000_000),
    who: Principal = Depends(require(*EDIT)),
) -> dict[str, Any]:
    """Add codes to a pool (a JSON list; one code a line in the console)."""
    ws = request.app.state.ws
    added = add_codes(ws, name, codes)
    audit(ws.db, who.name, "coupon.codes", name, added=added)
    return {"added": added, **get_coupon(ws, name)}


@router.post("/redeem")
async def redeem_now(request: Request, _: Principal = Depends(require(*EDIT))) -> dict[str, int]:
    """Mark codes redeemed by the order events loaded so far (the job does it every 5 min)."""
    return await run_in_threadpool(redeem, request.app.state.ws)


def setup(app: FastAPI) -> None:
    """The console page (errors answer through the campaigns' ``CampaignError`` handler)."""
    from rapport.web.console import coupons as console_coupons

    app.include_router(console_coupons.router)
