"""Event log -> warehouse ``events``: append what the log holds after the stored offset.

Each batch is inserted and the new offset stored in ONE DuckDB transaction, so a crash between
the two cannot load a batch twice or skip one: re-running resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import ibis
import ibis.expr.types as ir
import pyarrow as pa
from msgspec.structs import astuple

from rapport.conditions.to_ibis import INT_PATTERN, as_number, json_text
from rapport.log.records import LogRecord
from rapport.warehouse import layout

if TYPE_CHECKING:
    from rapport.warehouse.store import Warehouse

OFFSET_KEY = "log_offset"


class _Log(Protocol):
    def read(self, after: int, limit: int) -> Sequence[tuple[int, Any]]: ...


def records_to_arrow(records: Sequence[tuple[int, Any]]) -> pa.Table:
    """The log records' columns as they are: the JSON payload is parsed by DuckDB, not Python."""
    offsets = [offset for offset, _ in records]
    columns = list(zip(*(astuple(rec) for _, rec in records), strict=True))
    arrays = {"log_offset": pa.array(offsets, pa.int64())}
    for name, values in zip(LogRecord.__struct_fields__, columns, strict=True):
        if name == "payload":
            arrays[name] = pa.array(values, pa.binary()).cast(pa.string())
        elif name != "flags":
            arrays[name] = pa.array(values, pa.string())
    return pa.table(arrays)


def typed_value(value: ir.JSONValue, kind: str) -> ir.Value:
    """A JSON property as its declared plan type, read as the conditions read it (so a
    declared property's column can stand alone: ``conditions.to_ibis``): a number is a JSON
    number or text that reads as one, an integer likewise (whole numbers only), text is a
    string or any other value's JSON text; NULL when it is not one (never a failed load)."""
    text = json_text(value, spark=False)
    if kind == "integer":
        whole = text.re_search(INT_PATTERN)
        return ibis.coalesce(
            value.unwrap_as("int64"), whole.ifelse(text.try_cast("int64"), ibis.null("int64"))
        )
    if kind == "number":
        return as_number(text)
    if kind == "boolean":
        return value.unwrap_as("boolean")
    if kind == "datetime":
        return value.unwrap_as("string").try_cast(layout.TS)
    return text


def events_from_log(raw: ir.Table, prop_types: dict[str, str]) -> ir.Table:
    """Log rows -> the ``events`` layout (plus typed property columns), as one expression."""
    payload = raw.payload.cast("json")
    props = ibis.coalesce(payload["properties"], payload["traits"])
    received = raw.received_at.try_cast(layout.TS)
    ts = ibis.coalesce(raw.timestamp.try_cast(layout.TS), received)
    columns: dict[str, Any] = {
        "event_id": raw.message_id,
        "source": raw.source,
        "type": raw.type,
        "event": raw.event,
        "user_id": raw.user_id,
        "anonymous_id": raw.anonymous_id,
        "ts": ts,
        "day": ts.date(),
        "received_at": received,
        "log_offset": raw.log_offset,
        "import_run_id": ibis.null("int64"),
        "person_key": ibis.null("int64"),
        "properties": ibis.coalesce(props, ibis.literal("{}").cast("json")),
        "context": ibis.coalesce(payload["context"], ibis.literal("{}").cast("json")),
    }
    for name, kind in prop_types.items():
        columns[layout.prop_column(name)] = typed_value(props[name], kind)
    return raw.select(**columns)


def load_from_log(
    wh: Warehouse, log: _Log, batch: int = 50_000, wait: float = 30.0, limit: int | None = None
) -> int:
    loaded = 0
    with wh.connect(wait=wait) as con:
        # every typed column, declared now or once: each must hold its property for every
        # event; a newly declared property gets its column (backfilled) here, the one writer
        wh.add_prop_columns(con)
        prop_types = wh.event_prop_types(con)
        offset = int(wh.get_state(con, OFFSET_KEY) or 0)
        while True:
            records = log.read(offset, batch)
            if not records:
                break
            raw = ibis.memtable(records_to_arrow(records))
            rows = events_from_log(raw, prop_types).order_by(["day", "person_key", "ts"])
            with wh.transaction(con):
                con.insert("events", rows)
                offset = int(records[-1][0])
                wh.set_state(con, OFFSET_KEY, str(offset))
            loaded += len(records)
            if len(records) < batch or (limit is not None and loaded >= limit):
                break
    return loaded
