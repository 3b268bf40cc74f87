"""The collector pipeline: messages in, log records / quarantine rows / violations out.

``Collector.check`` is pure CPU work (shape, policy, tracking plan) and ``submit`` makes the
outcome durable: log records through the group-committing writer, the quarantine and the
violations in the metadata DB. A caller is answered only after all of it is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from rapport import metrics
from rapport.accounts import now
from rapport.db.tables import violations as violations_table
from rapport.ingest import quarantine
from rapport.ingest.messages import MessageError, as_received, iso, normalise, to_record
from rapport.ingest.sources import Source, source_by_name
from rapport.log import FLAG_REPLAYED, LogRecord

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def current_plan(engine: Any) -> Any:
    """Brief C's compiled tracking plan, or None while the catalogue has no validator."""
    try:
        from rapport.catalog import current_plan as plan_of
    except ImportError:
        return None
    return plan_of(engine)


@dataclass
class Checked:
    """The outcome of checking one request's messages, before anything is stored."""

    source: str
    results: list[dict[str, Any]] = field(default_factory=list)
    records: list[LogRecord] = field(default_factory=list)
    #: index in ``results`` of each record
    slots: list[int] = field(default_factory=list)
    #: violations of lenient events, per record index
    violations: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def _count(checked: Checked, offsets: list[int | None]) -> None:
    """The request's outcome in the collector's counters (once per request)."""
    duplicate = offsets.count(None)
    metrics.collected(checked.source, len(offsets) - duplicate, duplicate, len(checked.quarantined))


def _as_dicts(found: list[Any]) -> list[dict[str, str]]:
    return [{"type": v.type, "path": v.path, "message": v.message} for v in found]


class Collector:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.max_event_bytes = ws.settings.max_event_bytes
        self.max_skew = timedelta(hours=ws.settings.max_clock_skew_hours)

    def check(
        self,
        source: Source,
        messages: list[Any],
        *,
        received: datetime,
        sent_at: datetime | None = None,
        default_type: str | None = None,
        path: str = "$.batch",
        flags: int = 0,
    ) -> Checked:
        """Normalise and validate each message (server sources always hold their secret key)."""
        out = Checked(source.name)
        plan = current_plan(self.ws.db)
        event_kind = getattr(plan, "event_kind", None)
        allowed = source.allowed_events
        received_iso = iso(received)
        sent_iso = iso(sent_at) if sent_at is not None else None
        for i, raw in enumerate(messages):
            where = "$" if path == "$" else f"{path}[{i}]"
            if default_type and isinstance(raw, dict) and "type" not in raw:
                # /v1/track implies the type: keep it so a quarantined copy can be replayed
                raw = {"type": default_type, **raw}
            try:
                msg, msg_flags = normalise(
                    raw,
                    where,
                    received=received,
                    received_iso=received_iso,
                    sent_at=sent_at,
                    max_skew=self.max_skew,
                    default_type=default_type,
                )
            except MessageError as exc:
                if isinstance(raw, dict):
                    raw.pop("writeKey", None)
                    if sent_iso is not None and "sentAt" not in raw:
                        raw["sentAt"] = sent_iso
                self._quarantine(out, source, raw, exc.reason, exc.message, exc.path)
                continue
            found: list[dict[str, str]] = []
            try:
                kind = msg["type"]
                if kind == "track":
                    name = msg["event"]
                    if allowed is not None and name not in allowed:
                        raise MessageError(
                            "event_not_allowed",
                            f"{where}.event",
                            f"source {source.name!r} may not send {name!r} "
                            f"(allowed: {', '.join(sorted(allowed)) or 'none'})",
                        )
                    client = source.kind != "server"
                    if client and event_kind is not None and event_kind(name) == "system":
                        raise MessageError(
                            "server_only_event",
                            f"{where}.event",
                            f"{name!r} is a system event: only a server source "
                            "authenticated with its secret key may send it",
                        )
                found = _as_dicts(plan.check(msg)) if plan is not None else []
                record = to_record(source.name, msg, msg_flags | flags)
                if len(record.payload) > self.max_event_bytes:
                    raise MessageError(
                        "event_too_large",
                        where,
                        f"{len(record.payload)} bytes, over the limit of "
                        f"{self.max_event_bytes} bytes per event",
                    )
                if found and source.strict:
                    first = found[0]
                    raise MessageError(first["type"], first["path"], first["message"])
            except MessageError as exc:
                original = as_received(msg, sent_iso)
                self._quarantine(out, source, original, exc.reason, exc.message, exc.path, found)
                continue
            if found:
                out.violations[len(out.records)] = found
            out.slots.append(len(out.results))
            out.records.append(record)
            out.results.append({"messageId": record.message_id, "status": "accepted"})
        return out

    def _quarantine(
        self,
        out: Checked,
        source: Source,
        msg: Any,
        reason: str,
        message: str,
        path: str,
        found: list[dict[str, str]] | None = None,
    ) -> None:
        is_dict = isinstance(msg, dict)
        message_id = msg.get("messageId") if is_dict else None
        event = msg.get("event") if is_dict else None
        detail = f"{path}: {message}"
        out.quarantined.append(
            {
                "source": source.name,
                "kind": "event",
                "reason": reason,
                "detail": detail,
                "payload": msg,
                "violations": found,
                "event": event if isinstance(event, str) else None,
            }
        )
        result = {"messageId": message_id, "status": "quarantined", "reason": reason}
        result["detail"] = detail
        out.results.append(result)

    # -- making it durable ---------------------------------------------------------------
    def _settle(self, checked: Checked, offsets: list[int | None]) -> list[dict[str, Any]]:
        seen = now()
        rows: list[dict[str, Any]] = []
        for i, (slot, offset) in enumerate(zip(checked.slots, offsets, strict=True)):
            if offset is None:
                checked.results[slot]["status"] = "duplicate"
                continue
            found = checked.violations.get(i)
            if found:
                checked.results[slot]["violations"] = found
                record = checked.records[i]
                rows.extend(
                    {
                        "source": checked.source,
                        "event": record.event,
                        "message_id": record.message_id[:100],
                        "type": v["type"],
                        "path": v["path"][:200],
                        "message": v["message"],
                        "seen_at": seen,
                    }
                    for v in found
                )
        return rows

    def _store_side(self, checked: Checked, violation_rows: list[dict[str, Any]]) -> None:
        if checked.quarantined:
            quarantine.put_many(self.ws.db, checked.quarantined)
        if violation_rows:
            with self.ws.db.begin() as conn:
                conn.execute(insert(violations_table), violation_rows)

    async def submit(self, checked: Checked) -> list[dict[str, Any]]:
        """Store everything; raises LogOverloaded before anything is written to the log."""
        started = time.perf_counter()
        offsets = await self.ws.log.append(checked.records)
        metrics.LOG_APPEND.observe(time.perf_counter() - started)
        rows = self._settle(checked, offsets)
        if checked.quarantined or rows:
            await asyncio.to_thread(self._store_side, checked, rows)
        _count(checked, offsets)
        return checked.results

    def submit_sync(self, checked: Checked) -> list[dict[str, Any]]:
        offsets = self.ws.log.append_many(checked.records)
        self._store_side(checked, self._settle(checked, offsets))
        _count(checked, offsets)
        return checked.results

    def replay(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-check quarantined events (as received) against the current plan and policy."""
        results = []
        passed: list[int] = []
        for entry in entries:
            source = source_by_name(self.ws.db, entry["source"] or "")
            if source is None:
                results.append({"id": entry["id"], "status": "open", "reason": "unknown_source"})
                continue
            try:
                msg = json.loads(entry["payload"])
            except ValueError:
                results.append({"id": entry["id"], "status": "open", "reason": "invalid_json"})
                continue
            received = datetime.fromisoformat(entry["received_at"])
            if received.tzinfo is None:
                received = received.replace(tzinfo=UTC)
            checked = self.check(source, [msg], received=received, path="$", flags=FLAG_REPLAYED)
            if checked.records:
                outcome = self.submit_sync(checked)[0]
                passed.append(entry["id"])
                results.append({"id": entry["id"], "status": "replayed", "log": outcome["status"]})
            else:
                failure = checked.quarantined[0]
                quarantine.update_failure(self.ws.db, entry["id"], failure)
                results.append({"id": entry["id"], "status": "open", "reason": failure["reason"]})
        quarantine.mark_replayed(self.ws.db, passed)
        return results
