"""The mapping of an import: which source columns are identifiers, properties, items or events.

Written by people in YAML or JSON, so every error names the path of the mistake
(``identifiers.tel: unknown identifier type 'phone' ...``) rather than a pydantic dump.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rapport.ingest.normalize import IdentifierType

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CUSTOM_PREFIX = "custom:"


class Target(StrEnum):
    profiles = "profiles"
    items = "items"
    events = "events"


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the path and what is wrong."""


def identifier_name(id_type: str) -> str:
    """The key under which an identifier is stored: the type, or NAME for ``custom:NAME``."""
    return id_type[len(CUSTOM_PREFIX) :] if id_type.startswith(CUSTOM_PREFIX) else id_type


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventSpec(_Strict):
    """Where an imported row's event comes from."""

    name: str | None = Field(None, description="constant event name, e.g. order_paid")
    name_column: str | None = Field(None, description="or: the column holding the event name")
    time: str | None = Field(None, description="event-time column (default: the import time)")
    id: str | None = Field(
        None, description="column with a unique event id (default: a hash of the whole row)"
    )
    user_id: str | None = Field(None, description="column copied to the events' user_id")

    @model_validator(mode="after")
    def _one_name(self) -> EventSpec:
        if (self.name is None) == (self.name_column is None):
            raise ValueError("give exactly one of 'name' (a constant) or 'name_column'")
        return self


class ItemSpec(_Strict):
    type: str | None = Field(None, description="constant item type, e.g. product")
    type_column: str | None = None
    id: str = Field(description="column with the item id")

    @model_validator(mode="after")
    def _one_type(self) -> ItemSpec:
        if (self.type is None) == (self.type_column is None):
            raise ValueError("give exactly one of 'type' (a constant) or 'type_column'")
        return self


class Mapping(_Strict):
    target: Target
    #: record key column(s) of a profile row (default: the first identifier column)
    key: list[str] = Field(default_factory=list)
    #: column -> identifier type (mobile, email, ..., or custom:NAME)
    identifiers: dict[str, str] = Field(default_factory=dict)
    #: column -> property name (a list means same names)
    properties: dict[str, str] = Field(default_factory=dict)
    #: when the source says the record last changed (profiles and items)
    updated_at: str | None = None
    event: EventSpec | None = None
    item: ItemSpec | None = None

    @field_validator("key", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("properties", mode="before")
    @classmethod
    def _props_dict(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {str(v): str(v) for v in value}
        return value

    @field_validator("identifiers")
    @classmethod
    def _id_types(cls, value: dict[str, str]) -> dict[str, str]:
        known = [t.value for t in IdentifierType]
        seen: dict[str, str] = {}
        for column, id_type in value.items():
            if id_type.startswith(CUSTOM_PREFIX):
                if not _NAME.match(identifier_name(id_type)):
                    raise ValueError(f"{column}: custom identifier needs a name: custom:NAME")
            elif id_type not in known:
                raise ValueError(
                    f"{column}: unknown identifier type {id_type!r} "
                    f"(expected one of {', '.join(known)}, or custom:NAME)"
                )
            name = identifier_name(id_type)
            if name in seen:
                raise ValueError(f"{column}: columns {seen[name]!r} and {column!r} are both {name}")
            seen[name] = column
        return value

    @field_validator("properties")
    @classmethod
    def _prop_names(cls, value: dict[str, str]) -> dict[str, str]:
        for column, name in value.items():
            if not _NAME.match(name):
                raise ValueError(f"{column}: property name {name!r} is not an identifier")
        return value

    @model_validator(mode="after")
    def _target_parts(self) -> Mapping:
        if self.target is Target.events and self.event is None:
            raise ValueError("target 'events' needs an 'event' section (name or name_column)")
        if self.target is Target.items and self.item is None:
            raise ValueError("target 'items' needs an 'item' section (type and id)")
        if self.target is Target.profiles and not (self.key or self.identifiers):
            raise ValueError("target 'profiles' needs 'identifiers' or a 'key' column")
        return self

    def columns(self) -> dict[str, str]:
        """Every source column the mapping reads -> the mapping path that names it."""
        used: dict[str, str] = {}
        for column in self.key:
            used[column] = "key"
        for column in self.identifiers:
            used[column] = f"identifiers.{column}"
        for column in self.properties:
            used[column] = f"properties.{column}"
        if self.updated_at:
            used[self.updated_at] = "updated_at"
        if self.event:
            for part in ("name_column", "time", "id", "user_id"):
                if getattr(self.event, part):
                    used[getattr(self.event, part)] = f"event.{part}"
        if self.item:
            used[self.item.id] = "item.id"
            if self.item.type_column:
                used[self.item.type_column] = "item.type_column"
        return used


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``path: message``."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{prefix}{path}: {message}" if path else f"{prefix}{message}")
    return "; ".join(lines)


def parse_mapping(data: Any) -> Mapping:
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise MappingError("invalid mapping: " + format_errors(exc)) from None


def load_mapping(path: str | Path) -> Mapping:
    """A mapping from a YAML or JSON file (JSON is YAML, but JSON errors read better as JSON)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot parse: {exc}") from None
    try:
        return parse_mapping(data)
    except MappingError as exc:
        raise MappingError(f"{path}: {exc}") from None
