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
        "person_key": "int64",  # the person (rapport.identity); NULL until resolved
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
        "person_key": "int64",  # the person (rapport.identity); NULL until resolved
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

# -- identity resolution (rapport.identity) ---------------------------------------------------
#: One row per identifier value ever seen; ``node_id`` is dense, in first-seen order, and a
#: person's id is the smallest node id of its component (the earliest-seen identifier).
IDENTITY_NODES = ibis.schema(
    {
        "node_id": "int64",
        "key": "int64",  # keyed hash of (type, normalised value): the lookup key
        "id_type": "string",
        "value": "string",  # normalised value (PII: masked by role when shown)
        "person_id": "int64",  # current person; NULL while blocked or unlinked
        "first_seq": "int64",
        "first_source": "string",
        "first_seen": TS,
    }
)

#: The append-only link log: which identifier values each record carried, in resolution order.
#: It is the input of resolution (decisions are recomputed from it), so a rebuild replays it.
IDENTITY_LINKS = ibis.schema(
    {
        "seq": "int64",  # record sequence: the order records were resolved in
        "source": "string",
        "record_key": "string",  # events.event_id or profile_slices.record_key
        "kind": "string",  # event | slice | match | manual
        "node_id": "int64",
        "ts": TS,
        "removed": "boolean",  # a person took this link away (split); kept for history
    }
)

#: What happened and why: merges, splits, refused links, blocks (the explanation of a person).
IDENTITY_HISTORY = ibis.schema(
    {
        "at": TS,
        "action": "string",  # merge | split | reject | block | rebuild | erase
        "person_id": "int64",  # the survivor / the person concerned
        "other_id": "int64",  # merged-away or split-off person
        "node_id": "int64",  # the identifier that linked (or was refused)
        "seq": "int64",  # the record that caused it
        "source": "string",
        "record_key": "string",
        "reason": "string",
    }
)

# -- tags and segments (rapport.tags, rapport.segments) -----------------------------------------
#: Current tag values, one row per (person, tag, value): a tag may hold several values.
TAG_VALUES = ibis.schema(
    {"person_key": "int64", "tag": "string", "value": "string", "run_id": "int64"}
)
#: Every value a person ever had, with the runs it was valid for (history per person).
TAG_HISTORY = ibis.schema(
    {
        "person_key": "int64",
        "tag": "string",
        "value": "string",
        "from_run": "int64",
        "to_run": "int64",  # NULL while current
        "valid_from": TS,
        "valid_to": TS,
    }
)
#: Current members of audiences (bucket NULL) and of segmentation buckets / lifecycle stages.
SEGMENT_MEMBERS = ibis.schema({"segment": "string", "bucket": "string", "person_key": "int64"})
#: Audience size over time: one row per refresh (or per minute of live changes) for the whole
#: segment (bucket NULL) and one per bucket of a segmentation / lifecycle stage.
SEGMENT_SIZES = ibis.schema({"segment": "string", "bucket": "string", "at": TS, "size": "int64"})
#: Daily per-person rollups: ``n`` events and the sums of declared numeric properties
#: (``sum_<property>`` columns, added as the plan declares them).
PERSON_DAILY = ibis.schema({"person_key": "int64", "day": "date", "event": "string", "n": "int64"})

#: Small key/value state, e.g. the log offset the loader has reached.
STATE = ibis.schema({"key": "string", "value": "string"})

TABLES: dict[str, sch.Schema] = {
    "events": EVENTS,
    "profile_slices": PROFILE_SLICES,
    "items": ITEMS,
    "warehouse_state": STATE,
    "identity_nodes": IDENTITY_NODES,
    "identity_links": IDENTITY_LINKS,
    "identity_history": IDENTITY_HISTORY,
    "tag_values": TAG_VALUES,
    "tag_history": TAG_HISTORY,
    "segment_members": SEGMENT_MEMBERS,
    "segment_sizes": SEGMENT_SIZES,
    "person_daily": PERSON_DAILY,
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
