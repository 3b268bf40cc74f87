"""Approve, send, cancel. A send renders each planned recipient's message and puts it in the
delivery outbox in chunks (``enqueue_many``: one statement and one transaction each, progress
recorded with it), with the key
``campaign:<id>:<person>`` so that running the send again enqueues nothing twice. A
recurring campaign's occurrence is part of the key (``campaign:<id>:<occurrence>:<person>``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from rapport.campaigns.content import ContentFunctions
from rapport.campaigns.model import CampaignError, CampaignForbidden
from rapport.campaigns.plan import CHUNK, attributes, render_for
from rapport.campaigns.store import load, set_state
from rapport.db.tables import campaign_recipients
from rapport.delivery.outbox import enqueue_many

if TYPE_CHECKING:
    from rapport.workspace import Workspace

SENDABLE = ("planned", "approved", "sending")  # "sending": resume a send that stopped


def approve(ws: Workspace, ref: int | str, actor: str) -> dict[str, Any]:
    """A second user approves a large plan (the planner may not approve their own)."""
    with ws.db.begin() as conn:
        campaign = load(conn, ref)
        if campaign["status"] != "awaiting_approval":
            raise CampaignError(
                f"status: the campaign is {campaign['status']}, not awaiting approval",
                "status",
                409,
            )
        if actor == campaign["planned_by"]:
            raise CampaignForbidden(
                f"{actor} planned this campaign: another user must approve a send to "
                f"{campaign['summary']['to_send']} persons (above "
                f"{ws.settings.campaign_approval_threshold})"
            )
        set_state(conn, campaign["id"], status="approved", approved_by=actor)
        return load(conn, campaign["id"])


def cancel(ws: Workspace, ref: int | str) -> dict[str, Any]:
    """Stop: messages already in the outbox still go; no more are enqueued."""
    with ws.db.begin() as conn:
        campaign = load(conn, ref)
        if campaign["status"] == "sent":
            raise CampaignError("status: the campaign was sent", "status", 409)
        set_state(conn, campaign["id"], status="cancelled")
        return load(conn, campaign["id"])


def _recipients(ws: Workspace, campaign_id: int, after: int) -> list[int]:
    with ws.db.connect() as conn:
        return list(
            conn.execute(
                select(campaign_recipients.c.person_key)
                .where(
                    campaign_recipients.c.campaign_id == campaign_id,
                    campaign_recipients.c.role == "send",
                    campaign_recipients.c.person_key > after,
                )
                .order_by(campaign_recipients.c.person_key)
                .limit(CHUNK)
            ).scalars()
        )


def send(ws: Workspace, ref: int | str, occurrence: str = "") -> dict[str, Any]:
    """Enqueue every planned recipient's message; the progress (``enqueued``: new messages,
    ``processed``: recipients done). Stops between chunks when the campaign is cancelled."""
    with ws.db.begin() as conn:
        campaign = load(conn, ref)
        if campaign["status"] not in SENDABLE:
            why = {
                "awaiting_approval": "a second user must approve it",
                "draft": "plan it first",
            }
            raise CampaignError(
                f"status: the campaign is {campaign['status']}: "
                f"{why.get(campaign['status'], 'it cannot be sent')}",
                "status",
                409,
            )
        total = campaign["summary"]["to_send"]
        progress = {"enqueued": 0, "processed": 0, "total": total, "occurrence": occurrence}
        set_state(conn, campaign["id"], status="sending", progress=progress)
    cid, channel, content = campaign["id"], campaign["channel"], campaign["content"]
    prefix = f"campaign:{cid}:{occurrence + ':' if occurrence else ''}"
    functions = ContentFunctions(ws, cid, issuing=True)
    after = -1
    while persons := _recipients(ws, cid, after):
        attrs = attributes(ws, persons)
        functions.chunk(persons)
        messages = [
            {
                "key": f"{prefix}{p}",
                "payload": _payload(render_for(content, p, attrs[p], functions), p, cid, attrs[p]),
                "person_key": p,
                "origin": f"campaign:{cid}",
            }
            for p in persons
        ]
        with ws.db.begin() as conn:
            if load(conn, cid)["status"] == "cancelled":
                return progress
            progress["enqueued"] += enqueue_many(conn, channel=channel, messages=messages)
            progress["processed"] += len(persons)
            set_state(conn, cid, progress=progress)
        after = persons[-1]
    with ws.db.begin() as conn:
        set_state(conn, cid, status="sent", progress=progress)
    return progress


def _payload(
    fields: dict[str, str], person: int, cid: int, attrs: dict[str, Any]
) -> dict[str, Any]:
    """The rendered fields, who and what it is for, and the person's time zone if known (the
    dispatcher's quiet hours are counted in it)."""
    out: dict[str, Any] = {**fields, "person_key": person, "campaign": cid}
    if attrs.get("timezone"):
        out["timezone"] = attrs["timezone"]
    return out
