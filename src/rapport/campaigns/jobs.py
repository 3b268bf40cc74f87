"""Scheduled campaigns as jobs (listed in ``rapport.jobs.registry.PROVIDER_MODULES``).

- ``at <time>``: a job checked every minute that sends once the time has come;
- coupon redemptions: every 5 minutes, orders carrying an issued code redeem it;
- a recurring schedule (``daily at 09:00``, cron): each run plans again (a new audience, the
  same holdout) and sends with the occurrence in the idempotency key. A plan above the
  approval threshold waits for an approval like a manual one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from rapport.campaigns.coupons import redeem
from rapport.campaigns.plan import plan
from rapport.campaigns.send import send
from rapport.campaigns.store import load, send_at
from rapport.db.tables import campaigns
from rapport.jobs.registry import Job, register

if TYPE_CHECKING:
    from rapport.workspace import Workspace

READY = ("planned", "approved")


def _once(campaign_id: int) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        with ws.db.connect() as conn:
            found = load(conn, campaign_id)
        when = send_at(found["schedule"])
        if found["status"] not in READY or when is None or at < when:
            return {"skipped": f"campaign {found['name']} is {found['status']}, due {when}"}
        return send(ws, campaign_id)

    return run


def _recurring(campaign_id: int) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        with ws.db.connect() as conn:
            found = load(conn, campaign_id)
        if found["status"] not in (*READY, "sent"):
            return {"skipped": f"campaign {found['name']} is {found['status']}"}
        summary = plan(ws, campaign_id, found["planned_by"] or found["owner"])
        if summary["needs_approval"]:
            return {"skipped": "the new plan awaits approval", **summary}
        return send(ws, campaign_id, occurrence=at.strftime("%Y%m%dT%H%M"))

    return run


def campaign_jobs(ws: Workspace) -> list[Job]:
    """Campaigns with a schedule that were planned (and approved when needed)."""
    with ws.db.connect() as conn:
        rows = conn.execute(
            select(campaigns.c.id, campaigns.c.name, campaigns.c.schedule).where(
                campaigns.c.schedule != "", campaigns.c.status.in_((*READY, "sent"))
            )
        ).all()
    out = []
    for cid, name, schedule in rows:
        if send_at(schedule) is not None:
            out.append(Job(f"campaign:{name}", f"Campaign {name}", "every minute", _once(cid)))
        else:
            out.append(Job(f"campaign:{name}", f"Campaign {name}", schedule, _recurring(cid)))
    return out


def coupon_jobs(ws: Workspace) -> list[Job]:
    return [Job("coupons:redeem", "Coupon redemptions", "every 5 minutes", _redeem)]


def _redeem(ws: Workspace, at: datetime) -> dict[str, Any]:
    return redeem(ws)


register("campaigns", campaign_jobs)
register("coupons", coupon_jobs)
