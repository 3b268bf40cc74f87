"""The ``campaigns`` rows: create, read, change, delete, with the checks a marketer needs at
save time (the channel exists, the templates parse inside the sandbox, the schedule reads)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Connection, select

from rapport.accounts import now
from rapport.campaigns.model import EDITABLE, CampaignError, CampaignIn, CampaignNotFound
from rapport.db.tables import campaigns, channels
from rapport.delivery import DeliveryError
from rapport.delivery.templating import check

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("created_at", "updated_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    return out


def send_at(schedule: str) -> datetime | None:
    """The time of an ``at <ISO time>`` schedule (None for the other forms)."""
    text = schedule.strip()
    if not text.lower().startswith("at "):
        return None
    try:
        at = datetime.fromisoformat(text[3:].strip())
    except ValueError:
        raise CampaignError(
            f"schedule: {text[3:].strip()!r} is not an ISO time (2026-12-08T09:00+08:00)",
            "schedule",
        ) from None
    if at.tzinfo is None:
        raise CampaignError("schedule: the time needs a UTC offset (…+08:00)", "schedule")
    return at


def _validate(conn: Connection, ws: Workspace, body: CampaignIn) -> None:
    if conn.execute(select(channels.c.id).where(channels.c.name == body.channel)).first() is None:
        raise CampaignError(f"channel: no delivery channel named {body.channel!r}", "channel")
    if body.audience is not None:
        from rapport.segments.store import find_segment

        if find_segment(ws, body.audience) is None:
            raise CampaignError(f"audience: no segment named {body.audience!r}", "audience")
    for field, source in body.content.items():
        try:
            check(source, f"content.{field}")
        except DeliveryError as exc:
            raise CampaignError(str(exc), f"content.{field}") from None
    if body.schedule.strip() and send_at(body.schedule) is None:
        from rapport.jobs.schedule import ScheduleError, parse

        try:
            parse(body.schedule)
        except ScheduleError as exc:
            raise CampaignError(f"schedule: {exc}", "schedule") from None


def list_campaigns(ws: Workspace) -> list[dict[str, Any]]:
    cols = [c for c in campaigns.c if c.name != "person_keys"]
    with ws.db.connect() as conn:
        rows = conn.execute(select(*cols).order_by(campaigns.c.id.desc())).all()
    return [_public(r) for r in rows]


def load(conn: Connection, ref: int | str) -> dict[str, Any]:
    """A campaign by id or name."""
    where = campaigns.c.id == int(ref) if str(ref).isdigit() else campaigns.c.name == str(ref)
    row = conn.execute(select(campaigns).where(where)).first()
    if row is None:
        raise CampaignNotFound(ref)
    return _public(row)


def get_campaign(ws: Workspace, ref: int | str) -> dict[str, Any]:
    with ws.db.connect() as conn:
        return load(conn, ref)


def create_campaign(ws: Workspace, body: CampaignIn, owner: str) -> dict[str, Any]:
    at = now()
    with ws.db.begin() as conn:
        _validate(conn, ws, body)
        if conn.execute(select(campaigns.c.id).where(campaigns.c.name == body.name)).first():
            raise CampaignError(f"name: a campaign named {body.name!r} exists", "name", 409)
        new_id = conn.execute(
            sa.insert(campaigns).values(
                **body.model_dump(), owner=owner, status="draft", created_at=at, updated_at=at
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        return load(conn, new_id)


def update_campaign(ws: Workspace, ref: int | str, body: CampaignIn) -> dict[str, Any]:
    """Replace the definition; the plan is void (back to draft, approval cleared)."""
    with ws.db.begin() as conn:
        found = load(conn, ref)
        if found["status"] not in EDITABLE:
            raise CampaignError(
                f"status: a {found['status']} campaign cannot change", "status", 409
            )
        _validate(conn, ws, body)
        conn.execute(
            sa.update(campaigns)
            .where(campaigns.c.id == found["id"])
            .values(
                **body.model_dump(),
                status="draft",
                planned_by=None,
                approved_by=None,
                summary=None,
                updated_at=now(),
            )
        )
        return load(conn, found["id"])


def set_state(conn: Connection, campaign_id: int, **values: Any) -> None:
    conn.execute(
        sa.update(campaigns).where(campaigns.c.id == campaign_id).values(**values, updated_at=now())
    )


def delete_campaign(ws: Workspace, ref: int | str) -> None:
    from rapport.db.tables import campaign_recipients

    with ws.db.begin() as conn:
        found = load(conn, ref)
        if found["status"] == "sending":
            raise CampaignError(
                "status: a campaign that is sending cannot be deleted", "status", 409
            )
        conn.execute(
            sa.delete(campaign_recipients).where(campaign_recipients.c.campaign_id == found["id"])
        )
        conn.execute(sa.delete(campaigns).where(campaigns.c.id == found["id"]))
