"""Rapport's own events (lifecycle transitions, audience entries and exits) on the event log.

They go through the collector like a server source's events (source ``rapport``), so they are
validated against the tracking plan, deduplicated by message id and loaded into the warehouse
like any other: campaigns trigger on them and rules may read them. Each kind of system event
declares itself with a tracking-plan snippet (``kind: system``) that is imported on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
from pyroaring import BitMap

from rapport.segments import bitmaps

if TYPE_CHECKING:
    from rapport.ingest.sources import Source
    from rapport.workspace import Workspace

SOURCE = "rapport"
#: at most this many messages per collector check (bounded memory on a big refresh)
_CHUNK = 10_000


def system_source(ws: Workspace, events: Iterable[str], plan: str) -> Source:
    """The ``rapport`` server source, allowed to send ``events`` (declared from ``plan``, a
    tracking-plan snippet, when the catalogue lacks one of them)."""
    from rapport.catalog import import_plan, invalidate, list_event_types
    from rapport.ingest.sources import (
        SourceExists,
        create_source,
        source_by_name,
        update_source,
    )

    wanted = set(events)
    if wanted - {e.name for e in list_event_types(ws.db)}:
        import_plan(ws.db, plan, actor=SOURCE)
        invalidate(ws.db)
    with contextlib.suppress(SourceExists):
        create_source(
            ws.db,
            SOURCE,
            kind="server",
            allowed_events=sorted(wanted),
            description="Rapport's own system events (lifecycle, audience entries and exits)",
        )
    source = source_by_name(ws.db, SOURCE)
    assert source is not None
    allowed = source.allowed_events
    if allowed is not None and not wanted <= allowed:
        update_source(ws.db, SOURCE, allowed_events=sorted(allowed | wanted))
        source = source_by_name(ws.db, SOURCE)
        assert source is not None
    return source


def user_ids(ws: Workspace, persons: BitMap) -> dict[int, str]:
    """person -> its member id (the smallest, if several), for the persons that have one."""
    if not persons:
        return {}
    with ws.warehouse.connect() as con:
        nodes = con.table("identity_nodes")
        people = ibis.memtable(bitmaps.persons_table(persons))
        found = nodes.filter(nodes.id_type == "member_id", nodes.person_id.notnull())
        joined = found.join(people, found.person_id == people.person_key)
        rows = joined.group_by("person_key").aggregate(member=joined.value.min()).to_pyarrow()
    return dict(zip(rows["person_key"].to_pylist(), rows["member"].to_pylist(), strict=True))


def stamp(at: datetime) -> str:
    """An event time as the log writes it (UTC, ``Z``): also the time part of message ids."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def message(
    event: str,
    person: int,
    at: datetime,
    message_id: str,
    properties: dict[str, Any],
    member_id: str | None = None,
) -> dict[str, Any]:
    """A track message about ``person`` at event time ``at``. Identity resolution reads the
    person from ``context.rapport`` (it links nothing); the user id is for people reading
    the log and for triggers."""
    return {
        "type": "track",
        "event": event,
        "userId": member_id or f"person:{person}",
        "messageId": message_id,
        "timestamp": stamp(at),
        "properties": properties,
        "context": {"rapport": {"person_key": person}},
    }


def submit(ws: Workspace, source: Source, messages: list[dict[str, Any]]) -> dict[str, int]:
    """Check and append ``messages`` to the log, keeping their event times however far from
    now they are (a refresh ``as_of`` a past date, a stream replay); the tally by status."""
    from rapport.ingest.collector import Collector
    from rapport.ingest.messages import parse_time

    tally = {"accepted": 0, "duplicate": 0, "quarantined": 0}
    if not messages:
        return tally
    collector = Collector(ws)
    received = datetime.now(UTC)
    times = [t for m in messages if (t := parse_time(m["timestamp"])) is not None]
    far = max((abs(received - t) for t in times), default=timedelta(0))
    collector.max_skew = far + timedelta(days=1)
    for start in range(0, len(messages), _CHUNK):
        checked = collector.check(
            source, messages[start : start + _CHUNK], received=received, path="$"
        )
        for result in collector.submit_sync(checked):
            tally[result["status"]] = tally.get(result["status"], 0) + 1
    return tally
