"""Coupons: a ``pool`` of uploaded codes or ``generated`` codes (prefix + random part), issued
one per (coupon, campaign, person) when a campaign's content calls ``{{ coupon("name") }}``.

Issuing is idempotent: the unique (coupon, campaign, person) row is looked up first, so a send
run again hands out the same code. A pool code is claimed with a conditional UPDATE (still
free?), so two sends never give one code twice. An order event whose property ``coupon`` is an
issued code redeems it (``redeem``, a job every few minutes and on demand).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from rapport.accounts import now
from rapport.campaigns.model import CampaignError
from rapport.db.tables import campaigns, coupon_codes, coupons

if TYPE_CHECKING:
    from rapport.workspace import Workspace

#: no 0/O or 1/I/L: codes are read aloud and typed from paper
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
RANDOM_LENGTH = 8
CODE = r"^[A-Za-z0-9_\-]{1,100}$"
CHUNK = 5000


class CouponError(CampaignError):
    """A coupon that cannot be made or issued (unknown, exhausted, expired, bad codes)."""


class CouponIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["pool", "generated"]
    campaign: str | None = Field(None, description="the campaign it is for (optional)")
    prefix: str = Field("", max_length=40, pattern=r"^[A-Za-z0-9_\-]*$")
    value: str = Field("", max_length=200, description="what it is worth, e.g. '10% off'")
    valid_until: datetime | None = None
    codes: list[str] = Field([], description="a pool's codes (more can be uploaded later)")


def _coupon(conn: Connection, name: str) -> dict[str, Any]:
    row = conn.execute(select(coupons).where(coupons.c.name == name)).mappings().first()
    if row is None:
        raise CouponError(f"coupon: there is no coupon {name!r}", "coupon", 404)
    return dict(row)


def create_coupon(ws: Workspace, body: CouponIn) -> dict[str, Any]:
    with ws.db.begin() as conn:
        campaign_id = None
        if body.campaign is not None:
            campaign_id = conn.execute(
                select(campaigns.c.id).where(campaigns.c.name == body.campaign)
            ).scalar()
            if campaign_id is None:
                raise CouponError(f"campaign: no campaign {body.campaign!r}", "campaign")
        if conn.execute(select(coupons.c.id).where(coupons.c.name == body.name)).first():
            raise CouponError(f"name: a coupon {body.name!r} exists", "name", 409)
        values = body.model_dump(exclude={"campaign", "codes"})
        values["campaign_id"] = campaign_id
        conn.execute(sa.insert(coupons).values(**values, created_at=now()))
    if body.codes:
        add_codes(ws, body.name, body.codes)
    return get_coupon(ws, body.name)


def add_codes(ws: Workspace, name: str, codes: Iterable[str]) -> int:
    """Upload codes to a pool; the number added. A code used before is an error naming it."""
    wanted = list(dict.fromkeys(c.strip() for c in codes if c.strip()))
    bad = [c for c in wanted if not re.match(CODE, c)]
    if bad:
        raise CouponError(f"codes: {bad[0]!r} is not a code (letters, digits, - and _)", "codes")
    with ws.db.begin() as conn:
        coupon = _coupon(conn, name)
        if coupon["kind"] != "pool":
            raise CouponError(f"codes: coupon {name!r} generates its codes", "codes")
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            taken = (
                conn.execute(
                    select(coupon_codes.c.code).where(coupon_codes.c.code.in_(chunk)).limit(5)
                )
                .scalars()
                .all()
            )
            if taken:
                raise CouponError(f"codes: already used: {', '.join(taken)}", "codes", 409)
            conn.execute(
                sa.insert(coupon_codes), [{"code": c, "coupon_id": coupon["id"]} for c in chunk]
            )
    return len(wanted)


def _counts(conn: Connection) -> dict[int, dict[str, int]]:
    c = coupon_codes.c
    query = select(
        c.coupon_id,
        sa.func.count(),
        sa.func.count(c.person_key),
        sa.func.count(c.redeemed_at),
    ).group_by(c.coupon_id)
    return {
        cid: {"codes": total, "issued": issued, "redeemed": redeemed}
        for cid, total, issued, redeemed in conn.execute(query)
    }


def list_coupons(ws: Workspace) -> list[dict[str, Any]]:
    """Every coupon with its codes, issued and redeemed counts (a pool's free codes too)."""
    with ws.db.connect() as conn:
        counts = _counts(conn)
        rows = conn.execute(
            select(coupons, campaigns.c.name.label("campaign"))
            .outerjoin(campaigns, campaigns.c.id == coupons.c.campaign_id)
            .order_by(coupons.c.name)
        ).mappings()
        out = []
        for row in rows:
            n = counts.get(row["id"], {"codes": 0, "issued": 0, "redeemed": 0})
            free = n["codes"] - n["issued"] if row["kind"] == "pool" else None
            out.append(
                {**dict(row), "issued": n["issued"], "redeemed": n["redeemed"], "free": free}
            )
    return out


def get_coupon(ws: Workspace, name: str) -> dict[str, Any]:
    for coupon in list_coupons(ws):
        if coupon["name"] == name:
            return coupon
    raise CouponError(f"coupon: there is no coupon {name!r}", "coupon", 404)


def _issued(
    conn: Connection, coupon_id: int, campaign_id: int, persons: list[int]
) -> dict[int, str]:
    c = coupon_codes.c
    rows = conn.execute(
        select(c.person_key, c.code).where(
            c.coupon_id == coupon_id, c.campaign_id == campaign_id, c.person_key.in_(persons)
        )
    )
    return {int(p): str(code) for p, code in rows}


def _expired(coupon: dict[str, Any]) -> None:
    until = coupon["valid_until"]
    if until is not None and _aware(until) < now():
        raise CouponError(
            f"coupon: coupon {coupon['name']!r} expired on {until:%Y-%m-%d}", "coupon"
        )


def _exhausted(coupon: dict[str, Any]) -> CouponError:
    return CouponError(
        f"coupon: the pool of coupon {coupon['name']!r} is exhausted: upload more codes",
        "coupon",
        409,
    )


def _claim(conn: Connection, coupon: dict[str, Any], campaign_id: int, persons: list[int]) -> None:
    """Give free codes of the pool to the persons; a code another send took meanwhile stays
    with it (the caller reads back who got one)."""
    c = coupon_codes.c
    free = (c.coupon_id == coupon["id"], c.campaign_id.is_(None), c.person_key.is_(None))
    codes = conn.execute(select(c.code).where(*free).limit(len(persons))).scalars().all()
    if len(codes) < len(persons):
        raise _exhausted(coupon)
    at = now()
    conn.execute(
        sa.update(coupon_codes)
        .where(c.code == sa.bindparam("b_code"), *free[1:])
        .values(campaign_id=campaign_id, person_key=sa.bindparam("b_person"), issued_at=at),
        [{"b_code": code, "b_person": p} for code, p in zip(codes, persons, strict=True)],
    )


def _generate(
    conn: Connection, coupon: dict[str, Any], campaign_id: int, persons: list[int]
) -> None:
    at = now()
    rows = [
        {
            "code": coupon["prefix"]
            + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH)),
            "coupon_id": coupon["id"],
            "campaign_id": campaign_id,
            "person_key": p,
            "issued_at": at,
        }
        for p in persons
    ]
    conn.execute(sa.insert(coupon_codes), rows)


def issue_many(ws: Workspace, name: str, campaign_id: int, persons: list[int]) -> dict[int, str]:
    """Each person's code of the coupon for the campaign: the one issued before, or a new one,
    in one transaction per try (a send issues a chunk of persons at once)."""
    persons = list(dict.fromkeys(persons))
    for _ in range(10):  # tried again after a race (the same person, or a generated collision)
        try:
            with ws.db.begin() as conn:
                coupon = _coupon(conn, name)
                found = _issued(conn, coupon["id"], campaign_id, persons)
                missing = [p for p in persons if p not in found]
                if not missing:
                    return found
                _expired(coupon)
                if coupon["kind"] == "generated":
                    _generate(conn, coupon, campaign_id, missing)
                else:
                    _claim(conn, coupon, campaign_id, missing)
        except IntegrityError:
            continue
    raise CouponError(f"coupon: could not issue codes of {name!r}, try again", "coupon", 409)


def issue(ws: Workspace, name: str, campaign_id: int, person: int) -> str:
    """The person's code of the coupon for the campaign (see ``issue_many``)."""
    return issue_many(ws, name, campaign_id, [person])[person]


def check_coupon(ws: Workspace, name: str) -> str:
    """A stand-in code for previews: the coupon must exist, nothing is issued."""
    with ws.db.connect() as conn:
        coupon = _coupon(conn, name)
    return f"{coupon['prefix'] or name.upper()}-PREVIEW"


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def redeem(ws: Workspace) -> dict[str, int]:
    """Mark issued codes redeemed by the first event carrying them in its ``coupon``
    property (an order), made after the code was issued and before the coupon expired."""
    c = coupon_codes.c
    with ws.db.connect() as conn:
        open_codes = {
            code: (_aware(issued), until and _aware(until))
            for code, issued, until in conn.execute(
                select(c.code, c.issued_at, coupons.c.valid_until)
                .join(coupons, coupons.c.id == c.coupon_id)
                .where(c.person_key.is_not(None), c.redeemed_at.is_(None))
            )
        }
    if not open_codes:
        return {"open": 0, "redeemed": 0}
    since = min(issued for issued, _ in open_codes.values())
    with ws.warehouse.connect() as con:
        if "events" not in con.list_tables():
            return {"open": len(open_codes), "redeemed": 0}
        events = con.table("events")
        used = events.select(
            "event_id", "ts", coupon=events.properties["coupon"].unwrap_as("string")
        )
        found = (
            used.filter(used.coupon.notnull(), used.ts >= since)
            .order_by(["ts", "event_id"])
            .to_pyarrow()
            .to_pylist()
        )
    done: dict[str, dict[str, Any]] = {}
    for row in found:
        code, at = row["coupon"], _aware(row["ts"])
        if code in open_codes and code not in done:
            issued, until = open_codes[code]
            if issued <= at and (until is None or at <= until):
                done[code] = {"b_code": code, "b_at": at, "b_event": row["event_id"]}
    if done:
        with ws.db.begin() as conn:
            conn.execute(
                sa.update(coupon_codes)
                .where(c.code == sa.bindparam("b_code"))
                .values(redeemed_at=sa.bindparam("b_at"), order_event_id=sa.bindparam("b_event")),
                list(done.values()),
            )
    return {"open": len(open_codes), "redeemed": len(done)}
