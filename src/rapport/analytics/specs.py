"""What each analysis asks for (the JSON body of ``/api/analytics/<kind>``), and the check of
its names against the tracking plan, the tags and the profile attributes.

The models check shape (pydantic names the field); ``check_names`` checks meaning: an unknown
event or property is an ``AnalyticsError`` naming the field, with the condition language's
"did you mean" (``rapport.conditions.validate``), so analytics and audiences speak alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rapport.conditions.model import Attr, Compare, Duration, EventIs, HasTag, Op, Unit
from rapport.conditions.validate import ValidationContext

Interval = Literal["hour", "day", "week"]


class AnalyticsError(ValueError):
    """A spec that cannot run: ``field`` is where (``steps[1].event``), ``message`` why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Spec):
    """``[start, end)``; a naive time is UTC."""

    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class FunnelStep(_Spec):
    event: str
    where: list[Compare] = Field(default_factory=list)


class Breakdown(_Spec):
    """``property``: of the first step's event (the one that starts the person's funnel);
    ``attribute``: of the person's merged profile."""

    kind: Literal["property", "attribute"]
    name: str


class FunnelSpec(_Range):
    steps: list[FunnelStep] = Field(min_length=2, max_length=10)
    window: Duration = Field(default_factory=lambda: Duration(amount=7, unit=Unit.days))
    breakdown: Breakdown | None = None
    top: int = Field(10, ge=1, le=50, description="breakdown values shown; the rest: (other)")


class RetentionSpec(_Range):
    cohort_event: str
    return_event: str
    period: Literal["day", "week"] = "day"
    periods: int = Field(7, ge=1, le=60)


class TrendsSpec(_Range):
    events: list[str] = Field(min_length=1, max_length=10)
    measure: Literal["events", "persons"] = "events"
    interval: Interval = "day"
    breakdown: str | None = Field(None, description="an event property")
    top: int = Field(5, ge=1, le=20)


class LifecycleSpec(_Range):
    pass


class DistributionSpec(_Spec):
    kind: Literal["tag", "attribute"]
    name: str
    top: int = Field(20, ge=1, le=100)
    bins: int = Field(10, ge=2, le=50, description="numeric attributes: histogram bins")


def check_event(
    ctx: ValidationContext,
    event: str,
    field: str,
    where: list[Compare] | None = None,
    where_field: str = "where",
) -> None:
    """``field`` names the event in the spec, ``where_field`` the list of its filters."""
    for err in ctx.check(EventIs(event=event, where=where or [])):
        if err.path.startswith("$.where"):
            raise AnalyticsError(where_field + err.path.removeprefix("$.where"), err.message)
        raise AnalyticsError(field, err.message)


def check_property(ctx: ValidationContext, event: str, name: str, field: str) -> None:
    for err in ctx.check(EventIs(event=event, where=[Compare(field=name, op=Op.is_set)])):
        raise AnalyticsError(field, err.message)


def _check(ctx: ValidationContext, cond: Attr | HasTag, field: str) -> None:
    for err in ctx.check(cond):
        raise AnalyticsError(field, err.message)


def check_names(ctx: ValidationContext, spec: BaseModel) -> None:
    """Every event, property, attribute and tag ``spec`` names exists (the first that does not
    is raised)."""
    if isinstance(spec, FunnelSpec):
        for i, step in enumerate(spec.steps):
            here = f"steps[{i}]"
            check_event(ctx, step.event, here + ".event", step.where, here + ".where")
        b = spec.breakdown
        if b is not None and b.kind == "property":
            check_property(ctx, spec.steps[0].event, b.name, "breakdown.name")
        elif b is not None:
            _check(ctx, Attr(field=b.name, op=Op.is_set), "breakdown.name")
    elif isinstance(spec, RetentionSpec):
        check_event(ctx, spec.cohort_event, "cohort_event")
        check_event(ctx, spec.return_event, "return_event")
    elif isinstance(spec, TrendsSpec):
        for i, event in enumerate(spec.events):
            check_event(ctx, event, f"events[{i}]")
        if spec.breakdown is not None:
            for event in spec.events:
                check_property(ctx, event, spec.breakdown, "breakdown")
    elif isinstance(spec, DistributionSpec):
        leaf = Attr(field=spec.name, op=Op.is_set) if spec.kind == "attribute" else None
        _check(ctx, leaf or HasTag(tag=spec.name), "name")
