"""The hot path: which content a person sees in a placement.

Placements are compiled in memory (active variants only, best first: higher priority, then
the editor's order) and reloaded when the table's version — row count and last update —
changes. This process's own edits invalidate at once; another process's are seen within
``RECHECK_S``, so most calls touch no database at all. Membership is ``person in bitmap`` on
the in-process bitmap index, which re-reads a set when the stream or a refresh rewrites it:
a person who enters an audience gets its variant on the next call.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from rapport.db.tables import placements
from rapport.personalize.errors import PlacementNotFound
from rapport.segments.bitmaps import BitmapStore, segment_name, store

if TYPE_CHECKING:
    from rapport.workspace import Workspace

RECHECK_S = 1.0
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class _Variant:
    name: str
    audience: str
    bucket: str | None
    members: str  # the bitmap's name
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Placement:
    default: dict[str, Any]
    variants: tuple[_Variant, ...]


@dataclass(frozen=True, slots=True)
class Choice:
    placement: str
    person_key: int | None  # None: the identifier given holds nobody (yet)
    variant: str  # a variant's name, or "default"
    audience: str | None
    bucket: str | None
    content: dict[str, Any]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "person_key": self.person_key,
            "variant": self.variant,
            "audience": self.audience,
            "bucket": self.bucket,
            "reason": self.reason,
            "content": self.content,
        }


def _compile(row: Any) -> _Placement:
    ranked = sorted(
        ((i, v) for i, v in enumerate(row.variants) if v.get("active", True)),
        key=lambda iv: (-int(iv[1].get("priority", 0)), iv[0]),
    )
    variants = tuple(
        _Variant(
            v["name"],
            v["audience"],
            v.get("bucket"),
            segment_name(v["audience"], v.get("bucket")),
            v["content"],
        )
        for _, v in ranked
    )
    return _Placement(row.default_content, variants)


class Personalizer:
    """One workspace's compiled placements."""

    def __init__(self, bitmaps: BitmapStore) -> None:
        self.bitmaps = bitmaps
        self._placements: dict[str, _Placement] = {}
        self._version: tuple[Any, ...] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._checked = float("-inf")

    def _current(self, ws: Workspace) -> dict[str, _Placement]:
        if time.monotonic() - self._checked >= RECHECK_S:
            with self._lock:
                if time.monotonic() - self._checked >= RECHECK_S:  # not done while we waited
                    self._reload(ws)
        return self._placements

    def _reload(self, ws: Workspace) -> None:
        checked = time.monotonic()
        query = select(func.count(), func.max(placements.c.updated_at))
        with ws.db.connect() as conn:
            version = tuple(conn.execute(query).one())
            if version != self._version:
                rows = conn.execute(select(placements)).all()
                self._placements = {r.name: _compile(r) for r in rows}
                self._version = version
        self._checked = checked

    def choose(self, ws: Workspace, placement: str, person_key: int | None) -> Choice:
        found = self._current(ws).get(placement)
        if found is None:
            raise PlacementNotFound(placement)
        if person_key is None:
            why = "no person holds this identifier (yet)"
            return Choice(placement, None, DEFAULT, None, None, found.default, why)
        for v in found.variants:
            members = self.bitmaps.get(v.members)
            if members is not None and person_key in members:
                where = v.audience if v.bucket is None else f"{v.audience}/{v.bucket}"
                return Choice(
                    placement,
                    person_key,
                    v.name,
                    v.audience,
                    v.bucket,
                    v.content,
                    f"member of {where}",
                )
        why = "in none of the audiences of its active variants"
        return Choice(placement, person_key, DEFAULT, None, None, found.default, why)


_BY_WS: weakref.WeakKeyDictionary[Workspace, Personalizer] = weakref.WeakKeyDictionary()


def personalizer(ws: Workspace) -> Personalizer:
    found = _BY_WS.get(ws)
    if found is None:
        found = _BY_WS[ws] = Personalizer(store(ws))
    return found


def choose(ws: Workspace, placement: str, person_key: int | None) -> Choice:
    """The content ``person_key`` sees in ``placement`` and why; ``PlacementNotFound``."""
    return personalizer(ws).choose(ws, placement, person_key)


# -- who is asking ---------------------------------------------------------------------------
IDENTIFIER_TTL_S = 60.0  # a merge reaches a cached visitor within a minute
UNKNOWN_TTL_S = 5.0  # a new visitor's id is resolved by the stream within seconds
MAX_IDENTIFIERS = 100_000
_identifiers: dict[tuple[str, str, str], tuple[float, int | None]] = {}


def resolve_person(ws: Workspace, person: str) -> int | None:
    """A person key from ``123`` or ``<identifier type>:<value>`` (``user_id:u-42``); None
    when nobody holds the identifier. An identifier costs one warehouse lookup, then is
    cached for ``IDENTIFIER_TTL_S``; raises ``ValueError`` for an unknown type or a bad value."""
    text = person.strip()
    if text.isdigit():
        return int(text)
    id_type, sep, value = text.partition(":")
    if not sep or not id_type or not value:
        raise ValueError(f"{person!r} is neither a person key nor <identifier type>:<value>")
    key = (str(ws.settings.home), id_type, value)
    now = time.monotonic()
    cached = _identifiers.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    from rapport.identity.resolve import lookup

    found = lookup(ws, id_type, value)
    if len(_identifiers) >= MAX_IDENTIFIERS:
        _identifiers.clear()
    _identifiers[key] = (now + (IDENTIFIER_TTL_S if found is not None else UNKNOWN_TTL_S), found)
    return found
