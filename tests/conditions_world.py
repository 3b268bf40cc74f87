"""A small warehouse for condition tests: the same data written to DuckDB or Spark through
Ibis and handed to the reference interpreter as ``PersonState``s.

Values are plain Python (profile values as text, event/item properties as JSON-able dicts), so
one ``World`` feeds every path the agreement suite compares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from rapport.conditions.reference import cast_attr
from rapport.stream.state import EventRec, PersonState

AS_OF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ATTR_TYPES = {
    "city": "string",
    "age": "integer",
    "score": "number",
    "vip": "boolean",
    "birthday": "datetime",
    "last_seen": "datetime",
}
#: typed event columns the Spark variant (and some DuckDB examples) carry, as the loader makes
TYPED_PROPS = {"price": pa.float64(), "qty": pa.int64(), "color": pa.string()}


@dataclass
class World:
    profiles: dict[int, dict[str, str | None]] = field(default_factory=dict)
    events: list[tuple[int, str, datetime, dict[str, Any]]] = field(default_factory=list)
    items: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    tags: list[tuple[int, str, str]] = field(default_factory=list)
    segments: list[tuple[str, str | None, int]] = field(default_factory=list)

    # -- as tables ------------------------------------------------------------------------
    def arrow(self, typed_props: bool = False) -> dict[str, pa.Table]:
        attrs = sorted(ATTR_TYPES)
        keys = sorted(self.profiles)
        profiles = {"person_key": pa.array(keys, pa.int64())}
        for a in attrs:
            profiles[a] = pa.array([self.profiles[k].get(a) for k in keys], pa.string())
        events: dict[str, pa.Array] = {
            "person_key": pa.array([e[0] for e in self.events], pa.int64()),
            "event": pa.array([e[1] for e in self.events], pa.string()),
            "ts": pa.array([e[2] for e in self.events], pa.timestamp("us", tz="UTC")),
            "properties": pa.array([json.dumps(e[3]) for e in self.events], pa.string()),
        }
        if typed_props:
            for name, kind in TYPED_PROPS.items():
                values = [e[3].get(name) for e in self.events]
                if pa.types.is_floating(kind):
                    values = [float(v) if isinstance(v, int | float) else None for v in values]
                elif pa.types.is_integer(kind):
                    values = [v if isinstance(v, int) else None for v in values]
                else:
                    values = [v if isinstance(v, str) else None for v in values]
                events[f"prop_{name}"] = pa.array(values, kind)
        return {
            "profiles": pa.table(profiles),
            "events": pa.table(events),
            "items": pa.table(
                {
                    "item_type": pa.array([i[0] for i in self.items], pa.string()),
                    "item_id": pa.array([i[1] for i in self.items], pa.string()),
                    "source": pa.array([i[2] for i in self.items], pa.string()),
                    "properties": pa.array([json.dumps(i[3]) for i in self.items], pa.string()),
                }
            ),
            "tag_values": pa.table(
                {
                    "person_key": pa.array([t[0] for t in self.tags], pa.int64()),
                    "tag": pa.array([t[1] for t in self.tags], pa.string()),
                    "value": pa.array([t[2] for t in self.tags], pa.string()),
                    "run_id": pa.array([1] * len(self.tags), pa.int64()),
                }
            ),
            "segment_members": pa.table(
                {
                    "segment": pa.array([s[0] for s in self.segments], pa.string()),
                    "bucket": pa.array([s[1] for s in self.segments], pa.string()),
                    "person_key": pa.array([s[2] for s in self.segments], pa.int64()),
                }
            ),
        }

    def to_duckdb(self, con: Any, typed_props: bool = False) -> None:
        """Writes the tables (JSON columns as JSON) into a DuckDB Ibis connection.

        Through the DuckDB connection under Ibis: the agreement suite writes hundreds of
        worlds, and a memtable round trip per table costs more than the query under test."""
        raw = con.con
        for name, table in self.arrow(typed_props).items():
            raw.register("__world", table)
            cast = (
                " REPLACE (properties::JSON AS properties)"
                if "properties" in table.column_names
                else ""
            )
            raw.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT *{cast} FROM __world")
            raw.unregister("__world")

    def to_spark(self, session: Any) -> None:
        """Registers the tables as Spark temporary views (JSON columns as text, typed props)."""
        for name, table in self.arrow(typed_props=True).items():
            rows = [tuple(row.values()) for row in table.to_pylist()]
            frame = session.createDataFrame(rows, schema=_spark_schema(table))
            frame.createOrReplaceTempView(name)

    # -- as the reference's states --------------------------------------------------------
    def universe(self) -> set[int]:
        keys = set(self.profiles) | {e[0] for e in self.events}
        return {k for k in keys if k >= 0}

    def states(self) -> list[PersonState]:
        items: dict[str, dict[str, Any]] = {}
        for _type, item_id, _source, props in sorted(self.items, key=lambda i: i[:3]):
            items.setdefault(item_id, props)
        out = []
        for key in sorted(self.universe()):
            raw = self.profiles.get(key, {})
            attrs = {a: cast_attr(raw.get(a), kind) for a, kind in ATTR_TYPES.items()}
            tags: dict[str, set[str]] = {}
            for p, tag, value in self.tags:
                if p == key:
                    tags.setdefault(tag, set()).add(value)
            segments: dict[str, set[str | None]] = {}
            for segment, bucket, p in self.segments:
                if p == key:
                    segments.setdefault(segment, set()).add(bucket)
            events = [
                EventRec(ts, name, props, items.get(str(props.get("item_id"))))
                if "item_id" in props
                else EventRec(ts, name, props, None)
                for p, name, ts, props in self.events
                if p == key
            ]
            out.append(PersonState(key, attrs, tags, segments, events))
        return out


def _spark_schema(table: pa.Table) -> Any:
    from pyspark.sql import types as T

    kinds = {
        pa.int64(): T.LongType(),
        pa.string(): T.StringType(),
        pa.float64(): T.DoubleType(),
        pa.timestamp("us", tz="UTC"): T.TimestampType(),
    }
    return T.StructType([T.StructField(f.name, kinds[f.type], True) for f in table.schema])
