"""Reading the tracking plan out of the metadata DB (the writes live in ``plan.py``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, RowMapping, func, select

from rapport.catalog.models import DataType, EventTypeOut, PlanOut, PropertyOut, Scope
from rapport.db.tables import event_types, properties

#: what changes whenever the plan changes: row counts and the latest ``updated_at`` of both tables
Stamp = tuple[Any, ...]


def read_stamp(conn: Connection) -> Stamp:
    """The plan's version stamp: one cheap query, so other processes' writes are noticed."""
    row = conn.execute(
        select(
            select(func.count()).select_from(event_types).scalar_subquery(),
            select(func.max(event_types.c.updated_at)).scalar_subquery(),
            select(func.count()).select_from(properties).scalar_subquery(),
            select(func.max(properties.c.updated_at)).scalar_subquery(),
        )
    ).one()
    return tuple(row)


def property_out(row: RowMapping, event: str | None) -> PropertyOut:
    return PropertyOut.model_construct(
        id=row["id"],
        scope=Scope(row["scope"]),
        event=event,
        item_type=row["item_type"],
        name=row["name"],
        type=DataType(row["data_type"]),
        description=row["description"] or "",
        required=bool(row["required"]),
        allowed_values=row["allowed_values"],
        min=row["min_value"],
        max=row["max_value"],
        pii=bool(row["pii"]),
    )


def load_plan(conn: Connection) -> PlanOut:
    """The whole plan, events and properties in name order."""
    events = conn.execute(select(event_types).order_by(event_types.c.name)).mappings().all()
    names = {row["id"]: row["name"] for row in events}
    by_event: dict[int, list[PropertyOut]] = {row["id"]: [] for row in events}
    common: list[PropertyOut] = []
    users: list[PropertyOut] = []
    items: list[PropertyOut] = []
    query = select(properties).order_by(properties.c.item_type, properties.c.name)
    for row in conn.execute(query).mappings():
        scope = row["scope"]
        if scope == Scope.event:
            event_id = row["event_type_id"]
            if event_id is None:
                common.append(property_out(row, None))
            else:
                by_event[event_id].append(property_out(row, names[event_id]))
        elif scope == Scope.user:
            users.append(property_out(row, None))
        else:
            items.append(property_out(row, None))
    return PlanOut(
        events=[
            EventTypeOut(
                id=row["id"],
                name=row["name"],
                kind=row["kind"],
                description=row["description"] or "",
                properties=by_event[row["id"]],
            )
            for row in events
        ],
        common_properties=common,
        user_properties=users,
        item_properties=items,
    )
