"""The plan of a campaign: who gets the message, who is held out, who the send-time guards
would stop, stored per person (``campaign_recipients``, inserted in bulk), and a preview.

The holdout is a hash of (campaign, person) under the share, so planning again keeps the same
control group. Suppression is *predicted* with the dispatcher's own consent and cap logic
(``rapport.delivery.guards.Guards``); the dispatcher still checks again at send time.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pyroaring import BitMap
from sqlalchemy import select

from rapport.accounts import now
from rapport.campaigns.content import ContentFunctions
from rapport.campaigns.model import CampaignError
from rapport.campaigns.store import load, send_at, set_state
from rapport.db.tables import campaign_recipients, channels
from rapport.delivery import DeliveryError
from rapport.delivery.guards import PERSONAL_KINDS, Guards
from rapport.delivery.outbox import Claimed
from rapport.delivery.templating import render_text

if TYPE_CHECKING:
    from rapport.workspace import Workspace

#: persons per guard check / insert / attribute read
CHUNK = 5000
SAMPLES = 3
_SCALE = float(1 << 64)


def in_holdout(campaign_id: int, person_key: int, share: float) -> bool:
    """Deterministic: the same (campaign, person) is always in or always out."""
    digest = hashlib.blake2b(f"{campaign_id}:{person_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE < share


def audience_of(ws: Workspace, campaign: dict[str, Any]) -> BitMap:
    if campaign["person_keys"] is not None:
        return BitMap(int(k) for k in campaign["person_keys"])
    from rapport.segments.store import members

    return members(ws, campaign["audience"])


def attributes(ws: Workspace, persons: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each person's profile attributes (``prop_<name>`` columns under their own name)."""
    out: dict[int, dict[str, Any]] = {p: {} for p in persons}
    if not persons:
        return out
    from rapport.stream.profiles import people

    with ws.warehouse.connect() as con:
        if "profiles" not in con.list_tables():
            return out
        rows = con.table("profiles").join(people(persons), "person_key").to_pyarrow().to_pylist()
    for row in rows:
        attrs = out[row.pop("person_key")]
        row.pop("updated_at", None)
        for name, value in row.items():
            if value is not None:
                attrs[name.removeprefix("prop_")] = value
    return out


def render_for(
    content: dict[str, str],
    person_key: int,
    attrs: dict[str, Any],
    functions: ContentFunctions | None = None,
) -> dict[str, str]:
    """Each content field rendered with the person's attributes (and ``coupon``, ``link``,
    ``qr`` when ``functions`` are given); a missing variable is an error naming the field,
    the variable and the person."""
    context = {**attrs, "person_key": person_key}
    if functions is not None:
        context.update(functions.for_person(person_key))
    out = {}
    for field, source in content.items():
        try:
            out[field] = render_text(source, context, f"content.{field}")
        except DeliveryError as exc:
            raise CampaignError(f"{exc} (person {person_key})", f"content.{field}") from None
    return out


def _kind(ws: Workspace, channel: str) -> str:
    with ws.db.connect() as conn:
        return (
            conn.execute(select(channels.c.kind).where(channels.c.name == channel)).scalar() or ""
        )


def _suppressed(ws: Workspace, campaign: dict[str, Any], persons: list[int]) -> dict[int, str]:
    """Person -> why the guards would stop their message now (unsubscribed, capped)."""
    channel = campaign["channel"]
    kind = _kind(ws, channel)
    if kind not in PERSONAL_KINDS:
        return {}
    s = ws.settings
    guards = Guards(s.delivery_frequency_caps, "", s.timezone)  # quiet hours defer, not stop
    at = now()
    out: dict[int, str] = {}
    for i in range(0, len(persons), CHUNK):
        batch = [Claimed(p, "", channel, p, "", {}, 1, at, at) for p in persons[i : i + CHUNK]]
        for person, result in guards.check(ws.db, batch, {channel: kind}).items():
            if result.status == "suppressed":
                out[person] = result.error or "suppressed"
    return out


def _store(ws: Workspace, campaign_id: int, rows: Iterable[dict[str, Any]]) -> None:
    where = campaign_recipients.c.campaign_id == campaign_id
    with ws.db.begin() as conn:
        conn.execute(sa.delete(campaign_recipients).where(where))
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK:
                conn.execute(sa.insert(campaign_recipients), batch)
                batch = []
        if batch:
            conn.execute(sa.insert(campaign_recipients), batch)


def plan(ws: Workspace, ref: int | str, actor: str) -> dict[str, Any]:
    """Plan the campaign now; its summary (counts, cost, samples). Above the approval
    threshold the campaign then awaits a second user's approval."""
    with ws.db.connect() as conn:
        campaign = load(conn, ref)
    recurring = bool(campaign["schedule"].strip()) and send_at(campaign["schedule"]) is None
    if campaign["status"] == "sending" or (campaign["status"] == "sent" and not recurring):
        raise CampaignError(f"status: the campaign is {campaign['status']}", "status", 409)
    cid, share = campaign["id"], campaign["holdout_share"]
    members = audience_of(ws, campaign)
    holdout = BitMap(p for p in members if in_holdout(cid, p, share))
    rest = list(members - holdout)
    stopped = _suppressed(ws, campaign, rest)
    to_send = [p for p in rest if p not in stopped]
    functions = ContentFunctions(ws, cid, issuing=False)
    samples = {
        p: render_for(campaign["content"], p, a, functions)
        for p, a in attributes(ws, to_send[:SAMPLES]).items()
    }
    _store(
        ws,
        cid,
        (
            {"campaign_id": cid, "person_key": p, "role": role, "reason": stopped.get(p)}
            for p, role in _roles(members, holdout, stopped)
        ),
    )
    reasons = Counter(stopped.values())
    cost = round(len(to_send) * campaign["cost_per_message"], 2)
    summary = {
        "audience": len(members),
        "holdout": len(holdout),
        "suppressed": len(stopped),
        "suppressed_by_reason": dict(reasons.most_common()),
        "to_send": len(to_send),
        "estimated_cost": cost,
        "over_budget": campaign["budget"] is not None and cost > campaign["budget"],
        "needs_approval": len(to_send) > ws.settings.campaign_approval_threshold,
        "samples": [{"person_key": p, "message": m} for p, m in samples.items()],
        "planned_at": datetime.now(UTC).isoformat(),
    }
    status = "awaiting_approval" if summary["needs_approval"] else "planned"
    with ws.db.begin() as conn:
        set_state(conn, cid, status=status, planned_by=actor, approved_by=None, summary=summary)
    return summary


def _roles(members: BitMap, holdout: BitMap, stopped: dict[int, str]) -> Iterable[tuple[int, str]]:
    for p in members:
        yield p, "holdout" if p in holdout else "suppressed" if p in stopped else "send"


def preview(ws: Workspace, ref: int | str, person_key: int | None = None) -> dict[str, Any]:
    """The message for one person (default: the first planned recipient) with the saved plan."""
    with ws.db.connect() as conn:
        campaign = load(conn, ref)
        if person_key is None:
            person_key = conn.execute(
                select(campaign_recipients.c.person_key)
                .where(
                    campaign_recipients.c.campaign_id == campaign["id"],
                    campaign_recipients.c.role == "send",
                )
                .order_by(campaign_recipients.c.person_key)
                .limit(1)
            ).scalar()
    if person_key is None:
        first = next(iter(audience_of(ws, campaign)), None)
        if first is None:
            raise CampaignError("audience: the audience is empty", "audience")
        person_key = first
    attrs = attributes(ws, [person_key])[person_key]
    return {
        "person_key": person_key,
        "attributes": attrs,
        "message": render_for(
            campaign["content"],
            person_key,
            attrs,
            ContentFunctions(ws, campaign["id"], issuing=False),
        ),
        "plan": campaign["summary"],
    }
