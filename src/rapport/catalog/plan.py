"""Create, change and delete tracking-plan definitions.

Every write runs in one transaction that ends with the plan-wide checks (one type per event
property name, since it becomes one warehouse column), then drops the cached compiled plan and
records who did it in the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from rapport import accounts
from rapport.catalog.cache import invalidate
from rapport.catalog.models import (
    EventTypeBody,
    EventTypeOut,
    EventTypePatch,
    ItemPropertyBody,
    PlanOut,
    PropertyBody,
    PropertyOut,
    PropertyPatch,
    Scope,
)
from rapport.catalog.store import load_plan, property_out
from rapport.db.tables import event_types, properties


class PlanError(Exception):
    """A write the plan refuses; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class NotFound(PlanError):
    status = 404


class Conflict(PlanError):
    status = 409


class Invalid(PlanError):
    status = 422


def invalid_from(exc: ValidationError) -> Invalid:
    """The first pydantic error as an ``Invalid`` naming its field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    return Invalid(message, field)


@contextmanager
def writing(
    engine: Engine, actor: str, action: str, target: str, **detail: Any
) -> Iterator[Connection]:
    """One write: plan-wide checks before the commit, then the cache dropped and the audit."""
    with engine.begin() as conn:
        yield conn
        check_event_property_types(conn)
    invalidate(engine)
    accounts.audit(engine, actor, action, target, **detail)


def check_event_property_types(conn: Connection) -> None:
    """Refuse two event properties of one name with different types (they share a column)."""
    clash = conn.execute(
        select(properties.c.name)
        .where(properties.c.scope == Scope.event.value)
        .group_by(properties.c.name)
        .having(func.count(properties.c.data_type.distinct()) > 1)
        .limit(1)
    ).scalar()
    if clash is None:
        return
    rows = conn.execute(
        select(properties.c.data_type, event_types.c.name)
        .select_from(properties.outerjoin(event_types))
        .where(properties.c.scope == Scope.event.value, properties.c.name == clash)
        .order_by(event_types.c.name)
    ).all()
    where = ", ".join(f"{dtype} on {event or 'all events'}" for dtype, event in rows)
    raise Invalid(
        f"event property '{clash}' would have different types ({where}); one name has one "
        "type across events because it is one column of the events table",
        "type",
    )


# -- reading -----------------------------------------------------------------------------------
def get_plan(engine: Engine) -> PlanOut:
    with engine.connect() as conn:
        return load_plan(conn)


def list_event_types(engine: Engine) -> list[EventTypeOut]:
    return get_plan(engine).events


def get_event_type(engine: Engine, name: str) -> EventTypeOut:
    for event in get_plan(engine).events:
        if event.name == name:
            return event
    raise NotFound(f"no event type '{name}' in the tracking plan")


def get_property(engine: Engine, prop_id: int) -> PropertyOut:
    with engine.connect() as conn:
        return _property(conn, prop_id)


def _property(conn: Connection, prop_id: int) -> PropertyOut:
    row = conn.execute(select(properties).where(properties.c.id == prop_id)).mappings().first()
    if row is None:
        raise NotFound(f"no property with id {prop_id}")
    event = None
    if row["event_type_id"] is not None:
        event = conn.execute(
            select(event_types.c.name).where(event_types.c.id == row["event_type_id"])
        ).scalar()
    return property_out(row, event)


def _event_id(conn: Connection, name: str) -> int:
    found = conn.execute(select(event_types.c.id).where(event_types.c.name == name)).scalar()
    if found is None:
        raise NotFound(f"no event type '{name}' in the tracking plan")
    return int(found)


# -- event types -------------------------------------------------------------------------------
def create_event_type(engine: Engine, body: EventTypeBody, actor: str = "system") -> EventTypeOut:
    """A new event type with its properties; 409 if the name is taken."""
    with writing(engine, actor, "plan.event.create", body.name, kind=body.kind.value) as conn:
        if conn.execute(select(event_types.c.id).where(event_types.c.name == body.name)).first():
            raise Conflict(f"event type '{body.name}' already exists", "name")
        now = accounts.now()
        event_id = conn.execute(
            insert(event_types).values(
                name=body.name,
                kind=body.kind.value,
                description=body.description,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        for index, prop in enumerate(body.properties):
            insert_property(conn, prop, Scope.event, event_id, None, field=f"properties.{index}")
    return get_event_type(engine, body.name)


def update_event_type(
    engine: Engine, name: str, patch: EventTypePatch, actor: str = "system"
) -> EventTypeOut:
    """Rename an event type or change its kind or description."""
    changes = patch.model_dump(exclude_unset=True, exclude_none=True)
    with writing(engine, actor, "plan.event.update", name, **changes) as conn:
        event_id = _event_id(conn, name)
        new_name = changes.get("name", name)
        if (
            new_name != name
            and conn.execute(select(event_types.c.id).where(event_types.c.name == new_name)).first()
        ):
            raise Conflict(f"event type '{new_name}' already exists", "name")
        conn.execute(
            update(event_types)
            .where(event_types.c.id == event_id)
            .values(**changes, updated_at=accounts.now())
        )
    return get_event_type(engine, new_name)


def delete_event_type(engine: Engine, name: str, actor: str = "system") -> None:
    """Delete an event type and its properties."""
    with writing(engine, actor, "plan.event.delete", name) as conn:
        event_id = _event_id(conn, name)
        conn.execute(delete(properties).where(properties.c.event_type_id == event_id))
        conn.execute(delete(event_types).where(event_types.c.id == event_id))


# -- properties --------------------------------------------------------------------------------
def property_values(prop: PropertyBody) -> dict[str, Any]:
    return {
        "name": prop.name,
        "data_type": prop.type.value,
        "description": prop.description,
        "required": prop.required,
        "allowed_values": prop.allowed_values,
        "min_value": prop.min,
        "max_value": prop.max,
        "pii": prop.pii,
    }


def find_property(
    conn: Connection, scope: Scope, event_id: int | None, item_type: str | None, name: str
) -> int | None:
    """The id of the property with this key, if any (NULLs compared as equal, unlike UNIQUE)."""
    return conn.execute(
        select(properties.c.id).where(
            properties.c.scope == scope.value,
            properties.c.event_type_id.is_(None)
            if event_id is None
            else properties.c.event_type_id == event_id,
            properties.c.item_type.is_(None)
            if item_type is None
            else properties.c.item_type == item_type,
            properties.c.name == name,
        )
    ).scalar()


def insert_property(
    conn: Connection,
    prop: PropertyBody,
    scope: Scope,
    event_id: int | None,
    item_type: str | None,
    field: str = "name",
) -> int:
    if find_property(conn, scope, event_id, item_type, prop.name) is not None:
        raise Conflict(f"property '{prop.name}' is already declared here", field)
    now = accounts.now()
    result = conn.execute(
        insert(properties).values(
            scope=scope.value,
            event_type_id=event_id,
            item_type=item_type,
            created_at=now,
            updated_at=now,
            **property_values(prop),
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def add_event_property(
    engine: Engine, event: str | None, body: PropertyBody, actor: str = "system"
) -> PropertyOut:
    """Declare a property of event type ``event`` (None: common to every event)."""
    target = f"{event or '*'}.{body.name}"
    with writing(engine, actor, "plan.property.create", target, scope="event") as conn:
        event_id = None if event is None else _event_id(conn, event)
        prop_id = insert_property(conn, body, Scope.event, event_id, None)
    return get_property(engine, prop_id)


def add_user_property(engine: Engine, body: PropertyBody, actor: str = "system") -> PropertyOut:
    with writing(engine, actor, "plan.property.create", body.name, scope="user") as conn:
        prop_id = insert_property(conn, body, Scope.user, None, None)
    return get_property(engine, prop_id)


def add_item_property(engine: Engine, body: ItemPropertyBody, actor: str = "system") -> PropertyOut:
    target = f"{body.item_type}.{body.name}"
    with writing(engine, actor, "plan.property.create", target, scope="item") as conn:
        prop_id = insert_property(conn, body, Scope.item, None, body.item_type)
    return get_property(engine, prop_id)


def update_property(
    engine: Engine, prop_id: int, patch: PropertyPatch, actor: str = "system"
) -> PropertyOut:
    """Change a property; the result is validated as a whole (e.g. a new type vs old bounds)."""
    changes = patch.model_dump(exclude_unset=True)
    with writing(engine, actor, "plan.property.update", str(prop_id), **changes) as conn:
        current = _property(conn, prop_id)
        if "item_type" in changes and current.scope is not Scope.item:
            raise Invalid("only item properties have an item type", "item_type")
        merged = current.model_dump(exclude={"id", "scope", "event"}) | changes
        if current.scope is not Scope.item:
            merged.pop("item_type", None)
        try:
            body = (ItemPropertyBody if current.scope is Scope.item else PropertyBody)(**merged)
        except ValidationError as exc:
            raise invalid_from(exc) from None
        item_type = body.item_type if isinstance(body, ItemPropertyBody) else None
        row = conn.execute(
            select(properties.c.event_type_id).where(properties.c.id == prop_id)
        ).one()
        other = find_property(conn, current.scope, row.event_type_id, item_type, body.name)
        if other is not None and other != prop_id:
            raise Conflict(f"property '{body.name}' is already declared here", "name")
        conn.execute(
            update(properties)
            .where(properties.c.id == prop_id)
            .values(**property_values(body), item_type=item_type, updated_at=accounts.now())
        )
    return get_property(engine, prop_id)


def delete_property(engine: Engine, prop_id: int, actor: str = "system") -> None:
    prop = get_property(engine, prop_id)
    detail = {"name": prop.name, "scope": prop.scope.value, "event": prop.event}
    with writing(engine, actor, "plan.property.delete", str(prop_id), **detail) as conn:
        conn.execute(delete(properties).where(properties.c.id == prop_id))
