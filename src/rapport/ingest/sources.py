"""Sources: who may send data, with which key, under which validation mode.

Client sources (apps, web) authenticate with a write key that is not secret (it ships in the
app). Server sources also get a secret key; only the secret proves the sender is a server, and
they may send only the events of their allow-list.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, or_, select, update
from sqlalchemy.exc import OperationalError

from rapport.accounts import now
from rapport.db.tables import sources

KINDS = ("client", "server", "file", "sql")
MODES = ("lenient", "strict")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: how long a looked-up key is trusted before the DB is asked again (another process may edit it)
CACHE_SECONDS = 5.0


class SourceError(ValueError):
    """A bad source definition; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SourceExists(SourceError):
    pass


@dataclass(frozen=True, slots=True)
class Source:
    """What the collector needs to know about a source on every request."""

    name: str
    kind: str
    validation_mode: str
    allowed_events: frozenset[str] | None
    write_key: str
    secret_key: str | None

    @property
    def strict(self) -> bool:
        return self.validation_mode == "strict"


def _public(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data.pop("id", None)
    data["created_at"] = data["created_at"].isoformat() if data["created_at"] else None
    return data


def _clean_events(allowed_events: Iterable[str] | None) -> list[str] | None:
    if allowed_events is None:
        return None
    names: list[str] = []
    for raw in allowed_events:
        names.extend(part.strip() for part in str(raw).split(",") if part.strip())
    return sorted(set(names))


def _check(kind: str | None = None, mode: str | None = None) -> None:
    if kind is not None and kind not in KINDS:
        raise SourceError("kind", f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if mode is not None and mode not in MODES:
        raise SourceError(
            "validation_mode", f"unknown mode {mode!r}: expected one of {', '.join(MODES)}"
        )


def create_source(
    engine: Engine,
    name: str,
    kind: str = "client",
    validation_mode: str = "lenient",
    allowed_events: Iterable[str] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """Create a source with fresh keys; the result includes the keys (``secret_key``: server)."""
    if not _NAME.match(name):
        raise SourceError(
            "name", f"{name!r} is not a valid name (letters, digits, '_', '-', '.'; max 100)"
        )
    _check(kind, validation_mode)
    with engine.begin() as conn:
        if conn.execute(select(sources.c.id).where(sources.c.name == name)).first():
            raise SourceExists("name", f"a source named {name!r} already exists")
        conn.execute(
            insert(sources).values(
                name=name,
                kind=kind,
                description=description,
                write_key="wk_" + secrets.token_urlsafe(24),
                secret_key="sk_" + secrets.token_urlsafe(32) if kind == "server" else None,
                allowed_events=_clean_events(allowed_events),
                validation_mode=validation_mode,
                priority=100,
                created_at=now(),
            )
        )
    _cache.clear()
    found = get_source(engine, name)
    assert found is not None
    return found


def list_sources(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_public(r) for r in conn.execute(select(sources).order_by(sources.c.name))]


def get_source(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(sources).where(sources.c.name == name)).first()
    return _public(row) if row else None


def update_source(engine: Engine, name: str, **changes: Any) -> dict[str, Any] | None:
    """Change description, validation_mode, allowed_events or priority; None if no such source."""
    allowed = {"description", "validation_mode", "allowed_events", "priority"}
    unknown = set(changes) - allowed
    if unknown:
        raise SourceError(sorted(unknown)[0], "cannot be changed")
    _check(mode=changes.get("validation_mode"))
    if "allowed_events" in changes:
        changes["allowed_events"] = _clean_events(changes["allowed_events"])
    if changes:
        with engine.begin() as conn:
            conn.execute(update(sources).where(sources.c.name == name).values(**changes))
    _cache.clear()
    return get_source(engine, name)


def delete_source(engine: Engine, name: str) -> bool:
    with engine.begin() as conn:
        deleted = conn.execute(delete(sources).where(sources.c.name == name)).rowcount
    _cache.clear()
    return bool(deleted)


def _load(row: Any) -> Source:
    allowed = row.allowed_events
    return Source(
        name=row.name,
        kind=row.kind,
        validation_mode=row.validation_mode,
        allowed_events=frozenset(allowed) if allowed is not None else None,
        write_key=row.write_key,
        secret_key=row.secret_key,
    )


#: key -> (source or None, expiry); cleared by every write in this process
_cache: dict[tuple[int, str], tuple[Source | None, float]] = {}


def source_by_key(engine: Engine, key: str) -> Source | None:
    """The source whose write key or secret key is ``key`` — cached: this is the hot path."""
    slot = (id(engine), key)
    hit = _cache.get(slot)
    clock = time.monotonic()
    if hit is not None and hit[1] > clock:
        return hit[0]
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(sources).where(or_(sources.c.write_key == key, sources.c.secret_key == key))
            ).first()
    except OperationalError:
        if hit is None:
            raise
        return hit[0]  # the metadata DB is down (a restart): the last answer stands
    found = _load(row) if row else None
    if len(_cache) > 10_000:  # unknown keys must not grow memory without bound
        _cache.clear()
    # unknown keys are re-checked sooner: a source created by the CLI should work at once
    _cache[slot] = (found, clock + (CACHE_SECONDS if found else 0.5))
    return found


def source_by_name(engine: Engine, name: str) -> Source | None:
    with engine.connect() as conn:
        row = conn.execute(select(sources).where(sources.c.name == name)).first()
    return _load(row) if row else None
