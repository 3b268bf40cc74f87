"""Campaigns: a message to an audience, planned (holdout, predicted suppressions, a preview
rendered for sample persons), approved by a second user when large, then sent through the
delivery outbox. See docs/campaigns.md."""

from rapport.campaigns.model import CampaignError, CampaignForbidden, CampaignIn, CampaignNotFound
from rapport.campaigns.plan import in_holdout, plan, preview, render_for
from rapport.campaigns.send import approve, cancel, send
from rapport.campaigns.store import (
    create_campaign,
    delete_campaign,
    get_campaign,
    list_campaigns,
    update_campaign,
)

__all__ = [
    "CampaignError",
    "CampaignForbidden",
    "CampaignIn",
    "CampaignNotFound",
    "approve",
    "cancel",
    "create_campaign",
    "delete_campaign",
    "get_campaign",
    "in_holdout",
    "list_campaigns",
    "plan",
    "preview",
    "render_for",
    "send",
    "update_campaign",
]
