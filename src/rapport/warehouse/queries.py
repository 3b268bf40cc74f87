"""Read-side Ibis expressions over the warehouse tables (the console's explorer uses them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict, Unpack

import ibis.expr.types as ir
import orjson
from ibis.backends.duckdb import Backend

JSON_COLUMNS = ("properties", "context", "identifiers")


class EventFilters(TypedDict, total=False):
    """The event explorer's filters; every one is optional."""

    event: str | None
    source: str | None
    type: str | None
    since: datetime | None
    until: datetime | None


def filter_events(
    events: ir.Table,
    *,
    event: str | None = None,
    source: str | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ir.Table:
    """Events matching every given filter; ``since`` inclusive, ``until`` exclusive."""
    if event is not None:
        events = events.filter(events.event == event)
    if source is not None:
        events = events.filter(events.source == source)
    if type is not None:
        events = events.filter(events.type == type)
    if since is not None:
        events = events.filter(events.ts >= since)
    if until is not None:
        events = events.filter(events.ts < until)
    return events


def rows(expr: ir.Table, limit: int, offset: int) -> list[dict[str, Any]]:
    """Plain dicts with JSON columns decoded, ready for an API response or a template."""
    result = expr.limit(limit, offset=offset).to_pyarrow().to_pylist()
    for row in result:
        for column in JSON_COLUMNS:
            if isinstance(row.get(column), str):
                row[column] = orjson.loads(row[column])
    return result


def event_rows(
    con: Backend, *, limit: int = 100, offset: int = 0, **filters: Unpack[EventFilters]
) -> list[dict]:
    events = filter_events(con.table("events"), **filters)
    return rows(events.order_by([events.ts.desc(), events.event_id.desc()]), limit, offset)


def slice_rows(con: Backend, *, source: str | None, record_key: str | None) -> ir.Table:
    slices = con.table("profile_slices")
    if source is not None:
        slices = slices.filter(slices.source == source)
    if record_key is not None:
        slices = slices.filter(slices.record_key == record_key)
    return slices.drop("slice_key", "fingerprint").order_by(
        [slices.updated_at.desc(), slices.record_key]
    )


def item_rows(con: Backend, *, item_type: str | None, source: str | None) -> ir.Table:
    items = con.table("items")
    if item_type is not None:
        items = items.filter(items.item_type == item_type)
    if source is not None:
        items = items.filter(items.source == source)
    return items.drop("item_key", "fingerprint").order_by([items.item_type, items.item_id])
