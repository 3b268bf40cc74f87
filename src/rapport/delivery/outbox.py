"""The transactional outbox: messages are written in the transaction that creates them, and
dispatchers claim them with a lease, so a crash between "lead saved" and "webhook sent" can
neither lose the message nor (with the receiver's idempotency check) apply it twice.

Statuses: ``pending`` (never tried) → ``sending`` (claimed, leased) → ``delivered``; a failed
try goes to ``failed`` with ``next_attempt_at`` (it will be retried), then ``dead`` when the
retry budget is spent or the receiver refused it for good; ``suppressed`` when a send-time
guard stopped it for good (``rapport.delivery.guards``: unsubscribed, over a frequency cap).
Call-list channels park their messages as ``listed`` until the list is exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, func, select

from rapport.db.tables import channels, delivery_attempts, outbox
from rapport.delivery.errors import DeliveryError

#: statuses a dispatcher may claim (when due)
DUE = ("pending", "failed")
STATUSES = ("pending", "sending", "failed", "delivered", "dead", "listed", "suppressed")
#: ids per ``UPDATE … WHERE id IN (…)`` when recording (under the 999 bound parameters of
#: SQLite builds older than 3.32)
RECORD_CHUNK = 900


def now() -> datetime:
    return datetime.now(UTC)


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def enqueue(
    conn: Connection,
    *,
    channel: str,
    payload: dict[str, Any],
    key: str,
    person_key: int | None = None,
    origin: str = "",
    not_before: datetime | None = None,
) -> int | None:
    """Add a message to the outbox inside the caller's transaction (the lead/campaign row and
    its message commit together). ``key`` is the idempotency key (unique): a second enqueue
    with the same key returns None."""
    kind = _kind(conn, channel)
    values = _row(kind, channel, key, payload, person_key, origin, not_before)
    stmt = _insert_new(conn)
    if stmt is not None:
        return conn.execute(stmt.values(values).returning(outbox.c.id)).scalar()
    # other engines: a savepoint keeps the caller's transaction usable after a duplicate
    try:
        with conn.begin_nested():
            result = conn.execute(sa.insert(outbox).values(values))
            return int(result.inserted_primary_key[0])  # type: ignore[index]
    except sa.exc.IntegrityError:
        if conn.execute(select(outbox.c.id).where(outbox.c.key == key)).scalar() is None:
            raise
        return None


def enqueue_many(
    conn: Connection,
    *,
    channel: str,
    messages: Sequence[dict[str, Any]],
    not_before: datetime | None = None,
) -> int:
    """``enqueue`` for many messages to one channel (a campaign's chunk) in one statement:
    each holds ``key``, ``payload`` and optionally ``person_key`` and ``origin``. Returns how
    many were new (a key already queued is skipped, as by ``enqueue``)."""
    kind = _kind(conn, channel)
    rows = [
        _row(
            kind,
            channel,
            m["key"],
            m["payload"],
            m.get("person_key"),
            m.get("origin", ""),
            not_before,
        )
        for m in messages
    ]
    stmt = _insert_new(conn)
    if stmt is None or not rows:
        return sum(
            enqueue(conn, channel=channel, not_before=not_before, **m) is not None for m in messages
        )
    return len(conn.execute(stmt.returning(outbox.c.id), rows).all())


def _kind(conn: Connection, channel: str) -> str:
    kind = conn.execute(select(channels.c.kind).where(channels.c.name == channel)).scalar()
    if kind is None:
        known = conn.execute(select(channels.c.name).order_by(channels.c.name)).scalars().all()
        raise DeliveryError(
            f"unknown delivery channel {channel!r} (configured: {', '.join(known) or 'none'})",
            "channel",
        )
    return str(kind)


def _row(
    kind: str,
    channel: str,
    key: str,
    payload: dict[str, Any],
    person_key: int | None,
    origin: str,
    not_before: datetime | None,
) -> dict[str, Any]:
    if not key or len(key) > 200:
        raise DeliveryError("key: the idempotency key must be 1 to 200 characters", "key")
    at = now()
    due = (
        (not_before.astimezone(UTC) if not_before.tzinfo else not_before.replace(tzinfo=UTC))
        if not_before
        else at
    )
    return {
        "key": key,
        "channel": channel,
        "person_key": person_key,
        "origin": origin,
        "payload": payload,
        "status": "listed" if kind == "call_list" else "pending",
        "attempts": 0,
        "next_attempt_at": due,
        "created_at": at,
        "queued_at": at,
    }


def _insert_new(conn: Connection) -> Any | None:
    """``INSERT … ON CONFLICT (key) DO NOTHING`` where the dialect has it (else None)."""
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:
        return None
    return insert(outbox).on_conflict_do_nothing(index_elements=["key"])


# -- claiming and recording (the dispatcher's side) -----------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: int
    key: str
    channel: str
    person_key: int | None
    origin: str
    payload: dict[str, Any]
    attempt: int  # this try's number (1 = first since queued)
    queued_at: datetime
    created_at: datetime


def _sendable_channels() -> sa.Select[tuple[str]]:
    return select(channels.c.name).where(
        channels.c.enabled.is_(True), channels.c.kind != "call_list"
    )


def claim(engine: Engine, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
    """Lease up to ``limit`` due messages to ``owner``.

    Expired leases (a dispatcher that died mid-batch) first go back to their previous due
    state. PostgreSQL picks rows with ``FOR UPDATE SKIP LOCKED`` so that dispatchers never wait
    on each other; SQLite serialises writers, and the ``status IN (...)`` re-check in the
    ``UPDATE ... RETURNING`` makes the claim atomic there.
    """
    at = now()
    until = at + timedelta(seconds=lease_seconds)
    with engine.connect() as conn:  # idle polls read only (no write lock on SQLite)
        waiting = conn.execute(
            select(outbox.c.id)
            .where(outbox.c.status.in_((*DUE, "sending")), outbox.c.next_attempt_at <= at)
            .limit(1)
        ).first()
    if waiting is None:
        return []
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.status == "sending", outbox.c.lease_until < at)
            .values(
                status="failed",
                lease_owner=None,
                lease_until=None,
                last_error="lease expired: the dispatcher stopped mid-send",
            )
        )
        due = (
            select(outbox.c.id)
            .where(
                outbox.c.status.in_(DUE),
                outbox.c.next_attempt_at <= at,
                outbox.c.channel.in_(_sendable_channels()),
            )
            .order_by(outbox.c.next_attempt_at)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            ids = conn.execute(due.with_for_update(skip_locked=True)).scalars().all()
            if not ids:
                return []
            where: Any = outbox.c.id.in_(ids)
        else:
            where = outbox.c.id.in_(due.scalar_subquery())
        rows = conn.execute(
            sa.update(outbox)
            .where(where, outbox.c.status.in_(DUE))
            .values(
                status="sending",
                lease_owner=owner,
                lease_until=until,
                attempts=outbox.c.attempts + 1,
            )
            .returning(
                outbox.c.id,
                outbox.c.key,
                outbox.c.channel,
                outbox.c.person_key,
                outbox.c.origin,
                outbox.c.payload,
                outbox.c.attempts,
                outbox.c.queued_at,
                outbox.c.created_at,
            )
        ).all()
    return [
        Claimed(
            r.id,
            r.key,
            r.channel,
            r.person_key,
            r.origin,
            r.payload,
            r.attempts,
            utc(r.queued_at),
            utc(r.created_at),
        )
        for r in rows
    ]


def extend_lease(engine: Engine, owner: str, lease_seconds: float) -> int:
    """Keep ``owner``'s claims while its batch is still sending (a slow receiver must not let
    the lease lapse and another dispatcher send the same messages meanwhile)."""
    with engine.begin() as conn:
        return conn.execute(
            sa.update(outbox)
            .where(outbox.c.lease_owner == owner, outbox.c.status == "sending")
            .values(lease_until=now() + timedelta(seconds=lease_seconds))
        ).rowcount


@dataclass
class Result:
    """What one try came to; ``status`` is the message's new status."""

    id: int
    attempt: int
    status: str  # delivered | failed | dead | pending (postponed, not a try)
    outcome: str  # delivered | retry | dead | postponed
    next_attempt_at: datetime | None = None
    http_status: int | None = None
    ms: float | None = None
    error: str | None = None
    response: str | None = None


def record(engine: Engine, owner: str, results: Sequence[Result]) -> None:
    """Write a batch's outcomes in one transaction: the messages' new state and every try.

    Only rows still leased to ``owner`` change (a lease that expired and was re-claimed
    belongs to the other dispatcher now). A postponed or suppressed message (open circuit,
    rate limit, a guard) gets its try back: it was not sent.
    """
    if not results:
        return
    at = now()
    mine = (outbox.c.lease_owner == owner, outbox.c.status == "sending")
    delivered = [r.id for r in results if r.status == "delivered"]
    others = [
        {
            "_id": r.id,
            "status": r.status,
            "next_attempt_at": r.next_attempt_at or at,
            "last_error": r.error,
            "attempts": r.attempt - 1 if r.outcome in ("postponed", "suppressed") else r.attempt,
        }
        for r in results
        if r.status != "delivered"
    ]
    tries = [
        {
            "message_id": r.id,
            "attempt": r.attempt,
            "at": at,
            "outcome": r.outcome,
            "http_status": r.http_status,
            "ms": r.ms,
            "error": r.error,
            "response": r.response,
        }
        for r in results
        if r.outcome != "postponed"
    ]
    released = {"lease_owner": None, "lease_until": None}
    with engine.begin() as conn:
        # the common case in one statement per chunk (a bound parameter per id), not per row
        for i in range(0, len(delivered), RECORD_CHUNK):
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id.in_(delivered[i : i + RECORD_CHUNK]), *mine)
                .values(
                    status="delivered",
                    next_attempt_at=at,
                    last_error=None,
                    delivered_at=at,
                    **released,
                )
            )
        if others:
            retry = sa.update(outbox).where(outbox.c.id == sa.bindparam("_id"), *mine)
            conn.execute(retry.values(delivered_at=None, **released), others)
        if tries:
            conn.execute(sa.insert(delivery_attempts), tries)


# -- reading and operating (API, console) ---------------------------------------------------


def _message(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for name in ("next_attempt_at", "lease_until", "created_at", "queued_at", "delivered_at"):
        out[name] = utc(out[name])
    return out


def list_messages(
    engine: Engine,
    *,
    status: str | None = None,
    channel: str | None = None,
    origin: str | None = None,
    person_key: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Newest first; ``origin`` matches a prefix (``lead:`` lists every lead's messages)."""
    query = select(outbox).order_by(outbox.c.id.desc()).limit(limit).offset(offset)
    if status:
        query = query.where(outbox.c.status == status)
    if channel:
        query = query.where(outbox.c.channel == channel)
    if origin:
        query = query.where(outbox.c.origin.startswith(origin, autoescape=True))
    if person_key is not None:
        query = query.where(outbox.c.person_key == person_key)
    with engine.connect() as conn:
        return [_message(r) for r in conn.execute(query)]


def get_message(engine: Engine, message_id: int) -> dict[str, Any] | None:
    """A message with its tries, oldest first."""
    with engine.connect() as conn:
        row = conn.execute(select(outbox).where(outbox.c.id == message_id)).first()
        if row is None:
            return None
        tries = conn.execute(
            select(delivery_attempts)
            .where(delivery_attempts.c.message_id == message_id)
            .order_by(delivery_attempts.c.id)
        ).all()
    out = _message(row)
    out["attempts_log"] = [{**dict(t._mapping), "at": utc(t.at)} for t in tries]
    return out


def replay(engine: Engine, message_id: int, actor: str) -> dict[str, Any]:
    """Queue a dead or failed message again, now, with a fresh retry budget."""
    at = now()
    with engine.begin() as conn:
        row = conn.execute(
            select(outbox.c.status, outbox.c.channel, outbox.c.attempts).where(
                outbox.c.id == message_id
            )
        ).first()
        if row is None:
            raise DeliveryError(f"no message {message_id}", "id", 404)
        if row.status not in ("dead", "failed"):
            raise DeliveryError(
                f"message {message_id} is {row.status}: only dead or failed messages are replayed",
                "status",
                409,
            )
        kind = conn.execute(select(channels.c.kind).where(channels.c.name == row.channel)).scalar()
        conn.execute(
            sa.update(outbox)
            .where(outbox.c.id == message_id)
            .values(
                status="listed" if kind == "call_list" else "pending",
                attempts=0,
                next_attempt_at=at,
                queued_at=at,
                last_error=None,
            )
        )
        conn.execute(
            sa.insert(delivery_attempts).values(
                message_id=message_id,
                attempt=row.attempts,
                at=at,
                outcome="replayed",
                error=f"replayed by {actor}",
            )
        )
    found = get_message(engine, message_id)
    assert found is not None
    return found


def stats(engine: Engine) -> dict[str, Any]:
    """Messages per channel and status, what is due now, and the oldest waiting message."""
    at = now()
    with engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.channel, outbox.c.status, func.count()).group_by(
                outbox.c.channel, outbox.c.status
            )
        ).all()
        due = conn.execute(
            select(func.count()).where(outbox.c.status.in_(DUE), outbox.c.next_attempt_at <= at)
        ).scalar_one()
        oldest = conn.execute(
            select(func.min(outbox.c.queued_at)).where(outbox.c.status.in_(DUE))
        ).scalar()
    by_channel: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(STATUSES, 0)
    for channel, status, count in rows:
        by_channel.setdefault(channel, dict.fromkeys(STATUSES, 0))[status] = count
        totals[status] = totals.get(status, 0) + count
    oldest = utc(oldest)
    return {
        "totals": totals,
        "channels": by_channel,
        "due_now": due,
        "oldest_waiting_seconds": None
        if oldest is None
        else round((at - oldest).total_seconds(), 1),
    }
