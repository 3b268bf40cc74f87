"""A campaign as the API and console save it, and the errors they answer with."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

STATUSES = ("draft", "planned", "awaiting_approval", "approved", "sending", "sent", "cancelled")
#: statuses in which the definition may still change (a plan is made again after a change)
EDITABLE = ("draft", "planned", "awaiting_approval", "approved", "cancelled")


class CampaignError(ValueError):
    """A request the campaign cannot follow: ``field`` says which part, ``status`` the HTTP
    answer (422 invalid, 409 wrong state)."""

    def __init__(self, message: str, field: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class CampaignForbidden(CampaignError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "approved_by", 403)


class CampaignNotFound(LookupError):
    def __init__(self, ref: int | str) -> None:
        super().__init__(f"no campaign {ref!r}")


class CampaignIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    goal_event: str = Field("", max_length=200, description="the conversion event, e.g. order_paid")
    goal_days: int = Field(7, ge=1, le=90, description="conversion window after the send")
    audience: str | None = Field(None, max_length=100, description="a segment name")
    person_keys: list[int] | None = Field(None, description="an uploaded list instead")
    channel: str = Field(min_length=1, max_length=100)
    content: dict[str, str] = Field(
        description="payload field -> template, e.g. {'text': '{{ nickname }}, your coupon …'}"
    )
    schedule: str = Field(
        "", max_length=200, description="'' (on send), 'at 2026-12-08T09:00+08:00' or recurring"
    )
    holdout_share: float = Field(0.1, ge=0, lt=1)
    cost_per_message: float = Field(0.0, ge=0)
    budget: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_audience(self) -> CampaignIn:
        if (self.audience is None) == (self.person_keys is None):
            raise ValueError("give either an audience or person_keys (an uploaded list)")
        if not self.content:
            raise ValueError("content: at least one field template")
        return self
