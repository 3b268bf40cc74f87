"""The shapes of the tracking plan, as the API, the YAML file and the CRUD functions see them.

Pydantic checks definitions once, when they are written; the hot path uses the compiled plan
(``validate.py``) instead. Each rule is a field validator so that an error names its field.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

#: event, property and item-type names: lower snake_case, as they become warehouse columns
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=100)]
ItemType = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=50)]
AllowedValue = StrictBool | StrictInt | StrictFloat | StrictStr


class DataType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    datetime = "datetime"


class EventKind(StrEnum):
    user = "user"  # initiated by the person (view, click, pay)
    system = "system"  # reported by a back-end (payment failed, risk cancel); server sources only


class Scope(StrEnum):
    event = "event"
    user = "user"
    item = "item"


NUMERIC = frozenset({DataType.integer, DataType.number})


def matches_type(value: Any, data_type: DataType | str) -> bool:
    """Whether ``value`` (decoded JSON) is of ``data_type``; bools are never numbers."""
    kind = type(value)
    if data_type == DataType.string:
        return kind is str
    if data_type == DataType.integer:
        return kind is int
    if data_type == DataType.number:
        return (kind is int or kind is float) and math.isfinite(value)
    if data_type == DataType.boolean:
        return kind is bool
    if data_type == DataType.datetime:
        return kind is str and is_iso_datetime(value)
    return False


def is_iso_datetime(text: str) -> bool:
    """ISO-8601 date or date-time (``2024-05-01``, ``2024-05-01T08:00:00Z``, offsets)."""
    if len(text) < 10:  # fromisoformat also accepts compact forms such as "20240501"
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


class PropertyBody(BaseModel):
    """A property definition (event, user or item property) as sent to the API."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    type: DataType
    description: str = ""
    required: bool = False
    allowed_values: list[AllowedValue] | None = Field(
        default=None, description="The only values accepted (not for boolean/datetime)."
    )
    min: float | None = Field(default=None, description="Lowest value (integer/number only).")
    max: float | None = Field(default=None, description="Highest value (integer/number only).")
    pii: bool = Field(default=False, description="Personal data: masked for non-admin roles.")

    @field_validator("allowed_values")
    @classmethod
    def _allowed_match_type(
        cls, values: list[Any] | None, info: ValidationInfo
    ) -> list[Any] | None:
        data_type = info.data.get("type")
        if values is None or data_type is None:
            return values
        if data_type in (DataType.boolean, DataType.datetime):
            raise ValueError(f"allowed values are not supported for type '{data_type.value}'")
        if not values:
            raise ValueError("allowed values must not be empty (omit the field to allow any)")
        for index, value in enumerate(values):
            if not matches_type(value, data_type):
                raise ValueError(f"value #{index + 1} {value!r} is not of type '{data_type.value}'")
        if len(set(values)) != len(values):
            raise ValueError("allowed values contain duplicates")
        return values

    @field_validator("min", "max")
    @classmethod
    def _range_is_numeric(cls, bound: float | None, info: ValidationInfo) -> float | None:
        data_type = info.data.get("type")
        if bound is None or data_type is None:
            return bound
        if data_type not in NUMERIC:
            raise ValueError(
                f"{info.field_name} applies to integer and number properties, "
                f"not '{data_type.value}'"
            )
        if not math.isfinite(bound):
            raise ValueError(f"{info.field_name} must be a finite number")
        if (
            info.field_name == "max"
            and info.data.get("min") is not None
            and bound < info.data["min"]
        ):
            raise ValueError(f"max ({bound:g}) is less than min ({info.data['min']:g})")
        return bound


class ItemPropertyBody(PropertyBody):
    item_type: ItemType = Field(description="The kind of item: product, hotel, order...")


class PropertyPatch(BaseModel):
    """Fields to change on a property; what is absent keeps its value (null clears a bound)."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    type: DataType | None = None
    description: str | None = None
    required: bool | None = None
    allowed_values: list[AllowedValue] | None = None
    min: float | None = None
    max: float | None = None
    pii: bool | None = None
    item_type: ItemType | None = None


class EventTypeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: EventKind = EventKind.user
    description: str = ""
    properties: list[PropertyBody] = Field(default_factory=list)

    @field_validator("properties")
    @classmethod
    def _unique_names(cls, props: list[PropertyBody]) -> list[PropertyBody]:
        seen: set[str] = set()
        for prop in props:
            if prop.name in seen:
                raise ValueError(f"property '{prop.name}' is declared twice")
            seen.add(prop.name)
        return props


class EventTypePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    kind: EventKind | None = None
    description: str | None = None


class PropertyOut(PropertyBody):
    model_config = ConfigDict(extra="ignore")

    id: int
    scope: Scope
    event: str | None = Field(default=None, description="Event type; null = common to all events.")
    item_type: str | None = None


class EventTypeOut(BaseModel):
    id: int
    name: str
    kind: EventKind
    description: str
    properties: list[PropertyOut]


class PlanOut(BaseModel):
    """The whole tracking plan."""

    events: list[EventTypeOut]
    common_properties: list[PropertyOut] = Field(
        description="Event properties that every event may carry."
    )
    user_properties: list[PropertyOut]
    item_properties: list[PropertyOut]
