"""The quarantine: every record we could not accept, with its reason, kept for replay.

``kind`` is ``event`` (collector) or ``row`` (batch import). Events are replayed through the
collector pipeline against the current tracking plan; rows are handed back to the importer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, insert, select, update

from rapport.accounts import now
from rapport.db.tables import quarantine

if TYPE_CHECKING:
    from rapport.workspace import Workspace

STATUSES = ("open", "replayed", "discarded")


def _row(
    *,
    source: str | None,
    kind: str,
    reason: str,
    detail: str,
    payload: Any,
    violations: Sequence[Any] | None = None,
    event: str | None = None,
    import_run_id: int | None = None,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "source": source,
        "kind": kind,
        "event": event,
        "reason": reason[:40],
        "detail": detail,
        "violations": [_violation(v) for v in violations] if violations else None,
        "payload": payload if isinstance(payload, str) else json.dumps(payload, default=str),
        "import_run_id": import_run_id,
        "received_at": received_at or now(),
        "status": "open",
    }


def _violation(v: Any) -> dict[str, str]:
    if isinstance(v, dict):
        return {"type": v["type"], "path": v["path"], "message": v["message"]}
    return {"type": v.type, "path": v.path, "message": v.message}


def put(
    engine: Engine,
    *,
    source: str | None,
    kind: str,
    reason: str,
    detail: str,
    payload: Any,
    violations: Sequence[Any] | None = None,
    event: str | None = None,
    import_run_id: int | None = None,
) -> int:
    """Quarantine one record; its id. ``payload`` is the raw record (JSON text or a value)."""
    row = _row(
        source=source,
        kind=kind,
        reason=reason,
        detail=detail,
        payload=payload,
        violations=violations,
        event=event,
        import_run_id=import_run_id,
    )
    with engine.begin() as conn:
        return int(conn.execute(insert(quarantine).values(**row)).inserted_primary_key[0])  # type: ignore[index]


def put_many(engine: Engine, rows: Iterable[dict[str, Any]]) -> int:
    """Quarantine many records in one transaction (each dict has ``put``'s keyword arguments)."""
    values = [_row(**r) for r in rows]
    if values:
        with engine.begin() as conn:
            conn.execute(insert(quarantine), values)
    return len(values)


def _entry(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    for key in ("received_at", "replayed_at"):
        data[key] = data[key].isoformat() if data[key] else None
    return data


def list_entries(
    engine: Engine,
    source: str | None = None,
    reason: str | None = None,
    status: str | None = "open",
    limit: int = 100,
    offset: int = 0,
    ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Entries, newest first; ``status=None`` lists all."""
    query = select(quarantine).order_by(quarantine.c.id.desc()).limit(limit).offset(offset)
    if source is not None:
        query = query.where(quarantine.c.source == source)
    if reason is not None:
        query = query.where(quarantine.c.reason == reason)
    if status is not None:
        query = query.where(quarantine.c.status == status)
    if ids is not None:
        query = query.where(quarantine.c.id.in_(list(ids)))
    with engine.connect() as conn:
        return [_entry(r) for r in conn.execute(query)]


def counts_by_reason(engine: Engine, status: str = "open") -> dict[str, int]:
    query = (
        select(quarantine.c.reason, func.count())
        .where(quarantine.c.status == status)
        .group_by(quarantine.c.reason)
    )
    with engine.connect() as conn:
        return {reason: int(n) for reason, n in conn.execute(query)}


def open_ids(engine: Engine, source: str | None = None, limit: int = 100_000) -> list[int]:
    query = select(quarantine.c.id).where(quarantine.c.status == "open").limit(limit)
    if source is not None:
        query = query.where(quarantine.c.source == source)
    with engine.connect() as conn:
        return [int(i) for (i,) in conn.execute(query.order_by(quarantine.c.id))]


def discard(engine: Engine, ids: Sequence[int]) -> int:
    """Mark open entries discarded (kept for the record, never replayed); how many changed."""
    with engine.begin() as conn:
        result = conn.execute(
            update(quarantine)
            .where(quarantine.c.id.in_(list(ids)), quarantine.c.status == "open")
            .values(status="discarded")
        )
    return int(result.rowcount)


def mark_replayed(engine: Engine, ids: Sequence[int]) -> None:
    if ids:
        with engine.begin() as conn:
            conn.execute(
                update(quarantine)
                .where(quarantine.c.id.in_(list(ids)))
                .values(status="replayed", replayed_at=now())
            )


def replay(ws: Workspace, ids: Sequence[int]) -> dict[str, Any]:
    """Re-run open entries against the current plan; those that pass leave the quarantine.

    Returns ``{"replayed", "still_failing", "skipped", "rows", "results"}``; ``results`` has
    one ``{"id", "status", "reason"?}`` per event entry.
    """
    from rapport.ingest.collector import Collector

    entries = list_entries(ws.db, status="open", ids=ids, limit=max(len(ids), 1))
    events = [e for e in entries if e["kind"] == "event"]
    rows = [e for e in entries if e["kind"] == "row"]
    summary: dict[str, Any] = {
        "replayed": 0,
        "still_failing": 0,
        "skipped": len(ids) - len(entries),
        "rows": None,
        "results": [],
    }
    if events:
        outcome = Collector(ws).replay(events)
        summary["results"] = outcome
        summary["replayed"] = sum(1 for r in outcome if r["status"] == "replayed")
        summary["still_failing"] = sum(1 for r in outcome if r["status"] == "open")
    if rows:
        from rapport.ingest.importer import replay_rows  # brief B's importer

        summary["rows"] = done = replay_rows(ws, rows)
        summary["replayed"] += done.get("replayed", 0)
        summary["still_failing"] += done.get("still_failing", 0)
    return summary


def update_failure(engine: Engine, entry_id: int, failure: dict[str, Any]) -> None:
    """A replay failed again: record the current reason (the plan may have changed)."""
    with engine.begin() as conn:
        conn.execute(
            update(quarantine)
            .where(quarantine.c.id == entry_id)
            .values(
                reason=failure["reason"][:40],
                detail=failure["detail"],
                violations=failure.get("violations"),
            )
        )
