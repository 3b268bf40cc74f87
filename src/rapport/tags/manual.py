"""Manual tags: one value per person, set by people (API, console) and journeys.

The values live in the metadata DB (``manual_tag_values``) because the writers are the web
server and the stream workers, which never write the warehouse; a run of the tag (its
schedule, ``rapport tags compute``, the compute button) copies them into ``tag_values``
through ``store.replace_values``, so audiences, conditions and profiles read them like any
tag's. Setting a value is therefore cheap and becomes visible to those readers at the next run.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import delete, select

from rapport.accounts import now
from rapport.db.tables import manual_tag_values, tags
from rapport.tags.definitions import TagError, parse

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

MAX_VALUE = 200


def check_value(tag: dict[str, Any], value: Any) -> str:
    """``value`` as stored (text), or ``TagError`` on "value" saying what the tag accepts."""
    if tag["kind"] != "manual":
        raise TagError("tag", f"{tag['name']!r} is a {tag['kind']} tag: only manual tags are set")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise TagError("value", f"a text value, not {type(value).__name__}")
    if not text or len(text) > MAX_VALUE:
        raise TagError("value", f"1 to {MAX_VALUE} characters, got {len(text)}")
    allowed = parse("manual", tag["definition"]).values
    if allowed is not None and text not in allowed:
        raise TagError("value", f"{text!r} is not one of {', '.join(allowed)} (tag {tag['name']})")
    kind = tag.get("value_type") or "string"
    if kind == "number":
        try:
            float(text)
        except ValueError:
            raise TagError("value", f"{text!r} is not a number (tag {tag['name']})") from None
    elif kind == "boolean" and text not in ("true", "false"):
        raise TagError("value", f"{text!r}: true or false (tag {tag['name']})")
    elif kind == "date":
        try:
            date.fromisoformat(text)
        except ValueError:
            raise TagError("value", f"{text!r} is not a YYYY-MM-DD date") from None
    return text


def _person(key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise TagError("person_key", f"a person key (an integer >= 0), not {key!r}")
    return key


def _tag(conn: Connection, name: str) -> dict[str, Any]:
    from rapport.tags.store import TagNotFound

    row = conn.execute(select(tags).where(tags.c.name == name)).mappings().first()
    if row is None:
        raise TagNotFound(name)
    return dict(row)


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or change the values; a row whose value and writer are unchanged is left as it
    is (``set_at`` too), so a replayed journey step writes nothing."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    t = manual_tag_values
    stmt = insert(t)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tag_id", "person_key"],
        set_={c: stmt.excluded[c] for c in ("value", "set_at", "set_by")},
        where=(t.c.value != stmt.excluded.value) | (t.c.set_by != stmt.excluded.set_by),
    )
    conn.execute(stmt, rows)


def set_in(
    conn: Connection, name: str, values: Iterable[tuple[int, Any]], set_by: str
) -> list[tuple[int, str]]:
    """Set ``(person_key, value)`` pairs of manual tag ``name`` in the caller's transaction
    (the journeys' write); every pair is checked before any is written. Returns them as
    stored."""
    tag = _tag(conn, name)
    checked = [(_person(p), check_value(tag, v)) for p, v in values]
    if checked:
        at = now()
        _upsert(conn, [
            {"tag_id": tag["id"], "person_key": p, "value": v, "set_at": at, "set_by": set_by}
            for p, v in dict(checked).items()
        ])  # fmt: skip
    return checked


def set_values(
    engine: Engine, name: str, values: Iterable[tuple[int, Any]], set_by: str
) -> list[tuple[int, str]]:
    with engine.begin() as conn:
        return set_in(conn, name, values, set_by)


def unset(engine: Engine, name: str, person_key: int) -> bool:
    """Remove the person's value; False when they had none."""
    with engine.begin() as conn:
        tag = _tag(conn, name)
        check_kind(tag)
        t = manual_tag_values
        done = conn.execute(
            delete(t).where(t.c.tag_id == tag["id"], t.c.person_key == _person(person_key))
        )
        return bool(done.rowcount)


def check_kind(tag: dict[str, Any]) -> None:
    if tag["kind"] != "manual":
        raise TagError("tag", f"{tag['name']!r} is a {tag['kind']} tag: only manual tags are set")


def values(engine: Engine, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The set values (person_key, value, set_at, set_by), by person."""
    t = manual_tag_values
    with engine.connect() as conn:
        tag = _tag(conn, name)
        q = select(t.c.person_key, t.c.value, t.c.set_at, t.c.set_by).where(t.c.tag_id == tag["id"])
        q = q.order_by(t.c.person_key)
        if limit is not None:
            q = q.limit(limit)
        return [dict(r) for r in conn.execute(q).mappings()]


def as_arrow(engine: Engine, name: str) -> pa.Table:
    """The values as a run writes them (``person_key`` int64, ``value`` string)."""
    t = manual_tag_values
    with engine.connect() as conn:
        tag = _tag(conn, name)
        rows = conn.execute(select(t.c.person_key, t.c.value).where(t.c.tag_id == tag["id"])).all()
    return pa.table(
        {
            "person_key": pa.array([r[0] for r in rows], pa.int64()),
            "value": pa.array([r[1] for r in rows], pa.string()),
        }
    )
