"""Event log -> warehouse ``events``: append what the log holds after the stored offset.

Each batch is inserted and the new offset stored in ONE DuckDB transaction, so a crash between
the two cannot load a batch twice or skip one: re-running resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import ibis
import orjson
import pyarrow as pa

from rapport.warehouse import layout

if TYPE_CHECKING:
    from rapport.warehouse.store import Warehouse

OFFSET_KEY = "log_offset"


class _Record(Protocol):
    source: str
    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: Any
    received_at: Any
    payload: bytes


class _Log(Protocol):
    def read(self, after: int, limit: int) -> Sequence[tuple[int, Any]]: ...


def parse_time(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO string or a datetime (naive means UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def coerce(value: Any, kind: str) -> Any:
    """A property value as its declared plan type, or None when it is not one."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "integer":
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else None
    if kind == "number":
        return float(value) if isinstance(value, int | float) else None
    if kind == "datetime":
        return parse_time(value)
    return None


def records_to_arrow(records: Sequence[tuple[int, Any]], prop_types: dict[str, str]) -> pa.Table:
    """Columns of the ``events`` layout (plus typed property columns) from log records."""
    cols: dict[str, list[Any]] = {name: [] for name in layout.EVENTS.names}
    typed: dict[str, list[Any]] = {name: [] for name in prop_types}
    for offset, rec in records:
        message = orjson.loads(rec.payload) if rec.payload else {}
        props = message.get("properties") or message.get("traits") or {}
        received = parse_time(rec.received_at) or datetime.now(UTC)
        ts = parse_time(rec.timestamp) or received
        cols["event_id"].append(rec.message_id)
        cols["source"].append(rec.source)
        cols["type"].append(rec.type)
        cols["event"].append(rec.event)
        cols["user_id"].append(rec.user_id)
        cols["anonymous_id"].append(rec.anonymous_id)
        cols["ts"].append(ts)
        cols["day"].append(ts.date())
        cols["received_at"].append(received)
        cols["log_offset"].append(offset)
        cols["import_run_id"].append(None)
        cols["person_key"].append(None)
        cols["properties"].append(orjson.dumps(props).decode())
        cols["context"].append(orjson.dumps(message.get("context") or {}).decode())
        for name, kind in prop_types.items():
            typed[name].append(coerce(props.get(name) if isinstance(props, dict) else None, kind))
    arrow_types = {
        "ts": pa.timestamp("us", tz="UTC"),
        "received_at": pa.timestamp("us", tz="UTC"),
        "day": pa.date32(),
        "log_offset": pa.int64(),
        "import_run_id": pa.int64(),
        "person_key": pa.int64(),
    }
    arrays = {
        name: pa.array(values, type=arrow_types.get(name, pa.string()))
        for name, values in cols.items()
    }
    for name, kind in prop_types.items():
        arrays[layout.prop_column(name)] = pa.array(
            typed[name], type=layout.PLAN_TYPES[kind].to_pyarrow()
        )
    return pa.table(arrays)


def load_from_log(wh: Warehouse, log: _Log, batch: int = 50_000, wait: float = 30.0) -> int:
    loaded = 0
    with wh.connect(wait=wait) as con:
        columns = wh.event_prop_columns(con)
        declared = wh.declared_event_properties()
        prop_types = {name: declared[name] for name in columns if name in declared}
        offset = int(wh.get_state(con, OFFSET_KEY) or 0)
        while True:
            records = log.read(offset, batch)
            if not records:
                break
            table = ibis.memtable(records_to_arrow(records, prop_types))
            rows = table.mutate(
                properties=table.properties.cast("json"), context=table.context.cast("json")
            ).order_by(["day", "person_key", "ts"])
            with wh.transaction(con):
                con.insert("events", rows)
                offset = int(records[-1][0])
                wh.set_state(con, OFFSET_KEY, str(offset))
            loaded += len(records)
            if len(records) < batch:
                break
    return loaded
