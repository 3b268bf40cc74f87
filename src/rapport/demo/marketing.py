"""The demo's marketing, run after the data are loaded: a coupon campaign with a holdout, a
personalised home banner, and the seed journeys when that feature is installed.

The generated data end at the demo's window end, so a campaign sent "now" could have no
result. The campaign is therefore run as of ``SEND_DAYS`` before the end: its audience is a
snapshot evaluated at that time, it goes to a call list (the only channel that delivers
without a receiver on this machine), the list is exported, and the campaign's outbox rows,
their delivery attempts and its issued coupons are dated at that time. The conversions the
report counts are the data's own ``order_paid`` events in the 7 days after it.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rich.table import Table

from rapport.db.tables import coupon_codes, delivery_attempts, outbox

if TYPE_CHECKING:
    from rich.console import Console

    from rapport.workspace import Workspace

SEND_DAYS = 10
CHANNEL = "spring_call_list"
JOURNEY_CHANNEL = "journeys_call_list"
AUDIENCE = "demo_high_value"
CAMPAIGN = "spring_coupon"
COUPON = "spring10"
APPROVER = "marketing_lead"
PLANNER = "admin"
PLACEMENT = "home_banner"
#: paid at least this much in the 90 days before the send
HIGH_VALUE = {
    "kind": "did",
    "event": "order_paid",
    "agg": "sum",
    "property": "amount",
    "op": ">=",
    "threshold": 5000,
    "window": {"last": {"amount": 90, "unit": "days"}},
}
CONTENT = {
    "name": "{{ name | default('') }}",
    "text": "Spring offer: 10% off with code {{ coupon('" + COUPON + "') }}, "
    "{{ link('https://shop.example.com/spring') }}",
}


def _call_list(ws: Workspace, name: str, description: str) -> str:
    from rapport.delivery.channels import ChannelSpec, create_channel, get_channel

    if get_channel(ws.db, name) is None:
        spec = {"name": name, "kind": "call_list", "description": description}
        create_channel(ws.db, ChannelSpec.model_validate(spec))
    return name


def _audience(ws: Workspace, at: datetime) -> int:
    """High-value customers as of the send: a static snapshot, so later refreshes keep it."""
    from rapport.segments.audiences import create_audience, refresh_audience
    from rapport.segments.store import find_segment

    if find_segment(ws, AUDIENCE) is None:
        create_audience(
            ws, AUDIENCE, HIGH_VALUE, mode="static", description="Paid 5,000+ in 90 days"
        )
    return refresh_audience(ws, AUDIENCE, as_of=at)


def _coupon(ws: Workspace) -> None:
    from rapport.campaigns.coupons import CouponError, CouponIn, create_coupon, get_coupon

    try:
        get_coupon(ws, COUPON)
    except CouponError:
        body = {"name": COUPON, "kind": "generated", "prefix": "SPR-", "value": "10% off"}
        create_coupon(ws, CouponIn.model_validate(body))


def _approver(ws: Workspace) -> str:
    from rapport.accounts import Role, create_user, current_role

    if current_role(ws.db, APPROVER) is None:
        create_user(ws.db, APPROVER, secrets.token_urlsafe(16), Role.marketer)
    return APPROVER


def _backdate(ws: Workspace, cid: int, at: datetime) -> None:
    """Date the campaign's messages, their tries and its coupons at the send time."""
    mine = outbox.c.origin == f"campaign:{cid}"
    times = dict.fromkeys(("created_at", "queued_at", "next_attempt_at"), at)
    with ws.db.begin() as conn:
        conn.execute(sa.update(outbox).where(mine).values(**times))
        conn.execute(
            sa.update(outbox).where(mine, outbox.c.status == "delivered").values(delivered_at=at)
        )
        ids = sa.select(outbox.c.id).where(mine).scalar_subquery()
        conn.execute(
            sa.update(delivery_attempts)
            .where(delivery_attempts.c.message_id.in_(ids))
            .values(at=at)
        )
        conn.execute(
            sa.update(coupon_codes).where(coupon_codes.c.campaign_id == cid).values(issued_at=at)
        )


def _campaign(ws: Workspace, at: datetime) -> dict[str, Any]:
    """Create, plan, approve when large, send, export the call list; the results."""
    from rapport import campaigns
    from rapport.campaigns.results import results
    from rapport.delivery.calllist import take, to_csv

    try:
        cid = campaigns.get_campaign(ws, CAMPAIGN)["id"]
    except campaigns.CampaignNotFound:
        body = {
            "name": CAMPAIGN,
            "goal_event": "order_paid",
            "goal_days": 7,
            "audience": AUDIENCE,
            "channel": CHANNEL,
            "content": CONTENT,
            "holdout_share": 0.1,
            "cost_per_message": 0.5,
        }
        cid = campaigns.create_campaign(ws, campaigns.CampaignIn.model_validate(body), PLANNER)[
            "id"
        ]
    if campaigns.get_campaign(ws, cid)["status"] != "sent":  # a second demo run sends nothing
        summary = campaigns.plan(ws, cid, PLANNER)
        if summary["needs_approval"]:
            campaigns.approve(ws, cid, _approver(ws))
        campaigns.send(ws, cid)
        header, rows = take(ws.db, CHANNEL)
        (ws.settings.home / "demo" / f"{CAMPAIGN}_calls.csv").write_bytes(to_csv(header, rows))
        _backdate(ws, cid, at)
    return results(ws, cid)


def _banner(ws: Workspace) -> dict[str, Any]:
    """A home banner for high-value customers, another for the new-not-activated, a default."""
    from rapport.personalize.errors import PlacementExists
    from rapport.personalize.placements import PlacementIn, create_placement, update_placement

    body = PlacementIn.model_validate(
        {
            "name": PLACEMENT,
            "description": "Home page banner (demo)",
            "default": {"title": "Spring sale", "link": "https://shop.example.com/spring"},
            "variants": [
                {
                    "audience": AUDIENCE,
                    "priority": 20,
                    "content": {"title": "Your spring coupon: 10% off premium fridges"},
                },
                {
                    "audience": "lifecycle",
                    "bucket": "new_not_activated",
                    "priority": 10,
                    "content": {"title": "Welcome: free delivery on your first order"},
                },
            ],
        }
    )
    try:
        return create_placement(ws, body)
    except PlacementExists:
        return update_placement(ws, PLACEMENT, body)


def _journeys(ws: Workspace) -> str:
    """The seed journeys installed (live, sending to their own call list), or why none."""
    try:
        from rapport.journeys.seed import install
    except ImportError:
        return "skipped: rapport.journeys.seed is not installed"
    channel = _call_list(ws, JOURNEY_CHANNEL, "Messages of the seed journeys")
    made = [j["name"] for j in install(ws, channel)]
    return f"{', '.join(made)} (live, to {channel})" if made else "already installed"


def run_marketing(ws: Workspace, end: datetime) -> dict[str, Any]:
    """Everything above, the campaign sent ``SEND_DAYS`` before the data's ``end``."""
    at = end - timedelta(days=SEND_DAYS)
    _call_list(ws, CHANNEL, "Spring coupon calls")
    audience = _audience(ws, at)
    _coupon(ws)
    report = _campaign(ws, at)
    banner = _banner(ws)
    return {
        "audience": audience,
        "campaign": report,
        "placement": banner,
        "journeys": _journeys(ws),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def print_marketing(console: Console, report: dict[str, Any]) -> None:
    """The campaign's numbers, the banner's variants and the journeys, as a table."""
    c = report["campaign"]
    up = c["uplift"]
    table = Table(title="Marketing")
    table.add_column("what", no_wrap=True)
    table.add_column("result")
    table.add_row(
        f"campaign {c['campaign']['name']}",
        f"sent {c['sent']:,} on {(c['sent_at'] or '')[:10]} to {AUDIENCE} "
        f"({report['audience']:,}, holdout {c['holdout']:,}), delivered {c['delivered']:,}, "
        f"converted {c['converted']:,} in {c['goal_days']} days "
        f"({_pct(c['treated_rate'])} vs holdout {_pct(c['holdout_rate'])})",
    )
    uplift = (
        "—"
        if up["absolute"] is None
        else (f"{up['absolute']:+.1%} (95% CI {up['ci_low']:+.1%} to {up['ci_high']:+.1%})")
    )
    table.add_row("uplift vs holdout", uplift)
    p = report["placement"]
    variants = ", ".join(v["name"] for v in p["variants"])
    table.add_row(f"placement {p['name']}", f"variants {variants}, default")
    table.add_row("journeys", report["journeys"])
    console.print(table)
    console.print(
        f"Campaigns page: {c['campaign']['name']} (Results, 7-day conversion trend); "
        f"the run that sent it exported the call list to demo/{CAMPAIGN}_calls.csv."
    )
