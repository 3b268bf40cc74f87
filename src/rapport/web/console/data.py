"""What the console reads from the event log and the warehouse, in the shapes pages draw.

The log (brief A) is the source of truth for "what arrived" and the live tail; the warehouse
(brief B) answers filtered, paged and time-bucketed questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rapport.warehouse import queries

#: console pages wait at most this long for a warehouse held by another process (an import)
WAIT_S = 3.0


@dataclass(frozen=True)
class EventRow:
    offset: int | None
    source: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    timestamp: Any
    received_at: Any
    message_id: str
    payload: Any

    @property
    def who(self) -> str:
        return self.user_id or self.anonymous_id or "—"


def _payload(raw: Any) -> Any:
    if isinstance(raw, bytes | bytearray | str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def tail(ws: Any, after: int | None, limit: int = 50) -> tuple[list[EventRow], int]:
    """The last ``limit`` log records (only those after offset ``after``), newest first.

    Under a burst the tail skips ahead to the newest records rather than falling behind.
    """
    found = [(o, r) for o, r in ws.log.tail(limit) if after is None or o > after]
    rows = [
        EventRow(
            offset=offset,
            source=r.source,
            type=r.type,
            event=r.event,
            user_id=r.user_id,
            anonymous_id=r.anonymous_id,
            timestamp=r.timestamp,
            received_at=r.received_at,
            message_id=r.message_id,
            payload=_payload(r.payload),
        )
        for offset, r in found
    ]
    last = rows[-1].offset if rows else (after if after is not None else ws.log.last_offset())
    return list(reversed(rows)), int(last or 0)


def total_logged(ws: Any) -> int:
    return int(ws.log.count())


def _payloads(ws: Any, offsets: list[int]) -> dict[int, Any]:
    """The log's stored message per offset (the warehouse keeps columns, not the raw payload)."""
    found = {}
    for offset in offsets:
        for got, record in ws.log.read(offset - 1, 1):
            if got == offset:
                found[offset] = _payload(record.payload)
    return found


def events(
    ws: Any,
    *,
    limit: int,
    offset: int,
    event: str | None = None,
    source: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[EventRow], int]:
    """A page of stored events, newest first, and how many match in total."""
    filters: dict[str, Any] = {"event": event, "source": source, "since": since, "until": until}
    with ws.warehouse.connect(wait=WAIT_S) as con:
        found = queries.event_rows(con, limit=limit, offset=offset, **filters)
        total = int(queries.filter_events(con.table("events"), **filters).count().execute())
    payloads = _payloads(ws, [r["log_offset"] for r in found if r.get("log_offset")])
    rows = [
        EventRow(
            offset=r.get("log_offset"),
            source=r["source"],
            type=r["type"],
            event=r["event"],
            user_id=r["user_id"],
            anonymous_id=r["anonymous_id"],
            timestamp=r["ts"],
            received_at=r["received_at"],
            message_id=r["event_id"],
            payload=payloads.get(r.get("log_offset") or 0)
            or {"properties": r.get("properties"), "context": r.get("context")},
        )
        for r in found
    ]
    return rows, total


def event_names(ws: Any, limit: int = 500) -> list[str]:
    """Names for the explorer's filter: planned event types and names seen in the warehouse."""
    with ws.warehouse.connect(wait=WAIT_S) as con:
        table = con.table("events")
        seen = table.filter(table.event.notnull()).select("event").distinct().limit(limit)
        names = {row["event"] for row in seen.to_pyarrow().to_pylist()}
    names.update(e.name for e in plan_events(ws))
    return sorted(names)


def plan_events(ws: Any) -> list[Any]:
    from rapport.catalog import get_plan

    return list(get_plan(ws.db).events)


def count_events(ws: Any, since: datetime | None = None) -> int:
    with ws.warehouse.connect(wait=WAIT_S) as con:
        return int(queries.filter_events(con.table("events"), since=since).count().execute())


def events_per_hour(ws: Any, since: datetime, until: datetime) -> list[tuple[datetime, int]]:
    """One bucket per hour from ``since`` to ``until`` (empty hours included, as zero)."""
    start = since.replace(minute=0, second=0, microsecond=0)
    with ws.warehouse.connect(wait=WAIT_S) as con:
        table = queries.filter_events(con.table("events"), since=start, until=until)
        grouped = table.group_by(hour=table.ts.truncate("h")).aggregate(n=table.count())
        counts = {_utc(row["hour"]): int(row["n"]) for row in grouped.to_pyarrow().to_pylist()}
    hours = []
    while start <= until:
        hours.append((start, counts.get(start, 0)))
        start += timedelta(hours=1)
    return hours


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
