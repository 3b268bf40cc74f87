"""Tag definitions: the ``tags`` rows of the metadata DB, checked per kind before they are saved.

Definition shapes (``definition`` JSON):

- attribute: ``{"field": "birthday", "transform": "age_band", "bands": [...]}`` or
  ``{"field": "city", "map": {"上海": "tier1", ...}, "default": "other"}``;
- statistical: ``{"event": "order_paid", "agg": "count|sum|avg|max|min|last_date|top_value",
  "property": "amount", "window_days": 30, "bands": [...]}``;
- rule: ``{"condition": <condition JSON>, "value": "yes"}``;
- mined: ``{"model": "rfm" | "kmeans" | "churn" | "category_preference", ...}`` (``mined``);
- manual: ``{"values": ["yes", "no"]}`` (optional: the values allowed; none: any text). Values
  are set per person by people and journeys in the metadata DB (``rapport.tags.manual``); a run
  copies them into the warehouse. Default schedule ``MANUAL_SCHEDULE``.

A band is ``{"label": "18-24", "min": 18, "max": 25}``: ``min`` inclusive, ``max`` exclusive,
either open; a value takes the label of the first band it falls in (none: no value).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from rapport.db.tables import manual_tag_values, tag_runs, tags

KINDS = ("attribute", "statistical", "rule", "mined", "manual")
#: how often a manual tag's values reach the warehouse unless its schedule says otherwise
MANUAL_SCHEDULE = "every 5 minutes"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"


class TagError(ValueError):
    """A definition that cannot be saved; ``field`` names what is wrong (``definition.bands``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TagExists(TagError):
    pass


class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Band(_Def):
    label: str = Field(min_length=1)
    min: int | float | None = None  # int first: 18 stays 18 in the saved JSON
    max: int | float | None = None

    @model_validator(mode="after")
    def _order(self) -> Band:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"band {self.label!r}: min must be below max")
        return self


class AttributeDef(_Def):
    field: str = Field(min_length=1, description="a profile attribute")
    transform: Literal["age", "age_band", "date", "lower", "upper", "number"] | None = None
    map: dict[str, str] | None = Field(None, description="attribute value -> tag value")
    default: str | None = Field(None, description="value when `map` has no entry")
    bands: list[Band] | None = None

    @model_validator(mode="after")
    def _shape(self) -> AttributeDef:
        if self.transform == "age_band" and not self.bands:
            raise ValueError("`age_band` needs `bands`")
        if self.map is not None and self.bands:
            raise ValueError("use either `map` or `bands`, not both")
        if self.default is not None and self.map is None:
            raise ValueError("`default` goes with `map`")
        return self


StatAgg = Literal["count", "sum", "avg", "max", "min", "last_date", "top_value"]


class StatisticalDef(_Def):
    event: str = Field(min_length=1)
    agg: StatAgg = "count"
    property: str | None = None
    window_days: int | None = Field(None, gt=0, le=3650)
    bands: list[Band] | None = None

    @model_validator(mode="after")
    def _shape(self) -> StatisticalDef:
        if self.agg in ("sum", "avg", "max", "min", "top_value") and not self.property:
            raise ValueError(f"`{self.agg}` needs the `property` it aggregates")
        if self.bands and self.agg in ("last_date", "top_value"):
            raise ValueError(f"`bands` do not apply to `{self.agg}`")
        return self


class RuleDef(_Def):
    condition: dict[str, Any]
    value: str = Field("yes", min_length=1)

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: dict[str, Any]) -> dict[str, Any]:
        from rapport.conditions.model import from_json, to_json

        return to_json(from_json(value))


class MinedDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)


class ManualDef(_Def):
    values: list[str] | None = Field(None, description="the values allowed; none: any text")

    @field_validator("values")
    @classmethod
    def _values(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("list at least one value, or leave `values` out to allow any")
        for v in values:
            if not v.strip() or len(v) > 200:
                raise ValueError(f"{v!r}: a value is 1 to 200 characters, not blank")
        if len(set(values)) != len(values):
            raise ValueError("a value is listed twice")
        return values


DEFINITIONS: dict[str, type[BaseModel]] = {
    "attribute": AttributeDef,
    "statistical": StatisticalDef,
    "rule": RuleDef,
    "mined": MinedDef,
    "manual": ManualDef,
}


class TagIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="letters, digits and '_'")
    kind: Literal["attribute", "statistical", "rule", "mined", "manual"]
    description: str = ""
    owner: str = ""
    value_type: Literal["string", "number", "date", "boolean"] = "string"
    multi: bool = False
    schedule: str | None = Field(None, max_length=50, description="daily, hourly, cron text")
    definition: dict[str, Any] = Field(default_factory=dict)


class TagPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    owner: str | None = None
    value_type: Literal["string", "number", "date", "boolean"] | None = None
    multi: bool | None = None
    schedule: str | None = None
    definition: dict[str, Any] | None = None


def checked_definition(kind: str, definition: dict[str, Any]) -> dict[str, Any]:
    """The definition in its canonical form, or ``TagError`` naming the field at fault."""
    model = DEFINITIONS.get(kind)
    if model is None:
        raise TagError("kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        parsed = model.model_validate(definition)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in ("definition", *err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        raise TagError(where, message) from None
    return parsed.model_dump(mode="json", exclude_none=True)


def parse(kind: str, definition: dict[str, Any]) -> Any:
    """The typed definition of a saved tag."""
    return DEFINITIONS[kind].model_validate(definition)


def _row(row: Any) -> dict[str, Any]:
    return dict(row)


def list_tags(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(select(tags).order_by(tags.c.name)).mappings()]


def get_tag(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(tags).where(tags.c.name == name)).mappings().first()
    return _row(row) if row else None


def checked_schedule(text: str | None) -> str | None:
    """The schedule as given, or ``TagError`` on "schedule" (a typo caught at save time, not
    as a failed run at night)."""
    from rapport.jobs.schedule import ScheduleError, parse

    if text is None or not text.strip():
        return None
    try:
        parse(text)
    except ScheduleError as exc:
        raise TagError("schedule", str(exc)) from None
    return text.strip()


def create_tag(engine: Engine, body: TagIn) -> dict[str, Any]:
    values = body.model_dump()
    values["definition"] = checked_definition(body.kind, body.definition)
    values["schedule"] = checked_schedule(body.schedule)
    if body.kind == "manual":
        if body.multi:
            raise TagError("multi", "a manual tag holds one value per person")
        if values["schedule"] is None:  # its values reach the warehouse by themselves
            values["schedule"] = MANUAL_SCHEDULE
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(insert(tags).values(**values, created_at=now, updated_at=now))
    except IntegrityError:
        raise TagExists("name", f"a tag named {body.name!r} exists") from None
    found = get_tag(engine, body.name)
    assert found is not None
    return found


def update_tag(engine: Engine, name: str, patch: TagPatch) -> dict[str, Any] | None:
    found = get_tag(engine, name)
    if found is None:
        return None
    changes = patch.model_dump(exclude_unset=True)
    if "definition" in changes:
        if changes["definition"] is None:
            raise TagError("definition", "cannot be empty")
        changes["definition"] = checked_definition(found["kind"], changes["definition"])
    if "schedule" in changes:
        changes["schedule"] = checked_schedule(changes["schedule"])
    if found["kind"] == "manual" and changes.get("multi"):
        raise TagError("multi", "a manual tag holds one value per person")
    if changes:
        with engine.begin() as conn:
            conn.execute(
                update(tags)
                .where(tags.c.name == name)
                .values(**changes, updated_at=datetime.now(UTC))
            )
    return get_tag(engine, name)


def upsert_tag(engine: Engine, body: TagIn) -> dict[str, Any]:
    """Create the tag, or bring an existing one to ``body`` (demo and seed definitions)."""
    if get_tag(engine, body.name) is None:
        return create_tag(engine, body)
    patch = TagPatch(**body.model_dump(exclude={"name", "kind"}))
    updated = update_tag(engine, body.name, patch)
    assert updated is not None
    return updated


def delete_tag(engine: Engine, name: str) -> bool:
    """Delete the definition and its runs (values: ``store.delete_values``)."""
    with engine.begin() as conn:
        tid = conn.execute(select(tags.c.id).where(tags.c.name == name)).scalar()
        if tid is None:
            return False
        conn.execute(delete(tag_runs).where(tag_runs.c.tag_id == tid))
        conn.execute(delete(manual_tag_values).where(manual_tag_values.c.tag_id == tid))
        conn.execute(delete(tags).where(tags.c.id == tid))
        return True
