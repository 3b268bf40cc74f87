"""Table layouts of the warehouse, as Ibis schemas (one definition for DuckDB and, later, Spark).

``events`` also grows one typed column per event property declared in the tracking plan,
named ``prop_<name>`` (the prefix keeps a property called ``source`` or ``day`` from colliding
with a fixed column). Undeclared properties stay in the ``properties`` JSON column.
"""

from __future__ import annotations

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.schema as sch

TS = dt.Timestamp(timezone="UTC")

EVENTS = ibis.schema(
    {
        "event_id": "string",  # messageId for collected events; from the mapping for imports
        "source": "string",
        "type": "string",  # track | identify | page | screen | group | alias | import
        "event": "string",
        "user_id": "string",
        "anonymous_id": "string",
        "ts": TS,  # event time
        "day": "date",  # UTC day of ts: the sort / partition key with person_key
        "received_at": TS,
        "log_offset": "int64",  # NULL for batch-imported events
        "import_run_id": "int64",  # NULL for collected events
        "person_key": "int64",  # NULL until identity resolution (next issue)
        "properties": "json",
        "context": "json",
    }
)

PROFILE_SLICES = ibis.schema(
    {
        "slice_key": "string",  # source + record_key: the upsert key
        "source": "string",
        "record_key": "string",
        "identifiers": "json",  # {"mobile": "+86...", "member_id": "..."}
        "properties": "json",
        "fingerprint": "string",  # hash of identifiers + properties: unchanged rows are skipped
        "updated_at": TS,
        "import_run_id": "int64",
    }
)

ITEMS = ibis.schema(
    {
        "item_key": "string",  # item_type + item_id + source: the upsert key
        "item_type": "string",
        "item_id": "string",
        "source": "string",
        "properties": "json",
        "fingerprint": "string",
        "updated_at": TS,
        "import_run_id": "int64",
    }
)

#: Small key/value state, e.g. the log offset the loader has reached.
STATE = ibis.schema({"key": "string", "value": "string"})

TABLES: dict[str, sch.Schema] = {
    "events": EVENTS,
    "profile_slices": PROFILE_SLICES,
    "items": ITEMS,
    "warehouse_state": STATE,
}

#: Tracking-plan data types -> warehouse column types.
PLAN_TYPES: dict[str, dt.DataType] = {
    "string": dt.string,
    "integer": dt.int64,
    "number": dt.float64,
    "boolean": dt.boolean,
    "datetime": TS,
}

PROP_PREFIX = "prop_"


def prop_column(name: str) -> str:
    return PROP_PREFIX + name
