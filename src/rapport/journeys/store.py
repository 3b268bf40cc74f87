"""Journeys in the metadata DB: save (checked), go live / pause, and where persons stand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update

from rapport.accounts import now
from rapport.conditions.validate import context
from rapport.db.tables import (
    channels,
    journey_log,
    journey_positions,
    journeys,
    lead_rules,
    tags,
)
from rapport.delivery.outbox import utc
from rapport.journeys.model import (
    SCHEDULED,
    SCHEDULED_PLAN,
    STATUSES,
    Journey,
    JourneyError,
    parse,
)
from rapport.segments.store import find_segment
from rapport.segments.system_events import system_source

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from rapport.workspace import Workspace


class JourneyNotFound(LookupError):
    pass


def check(ws: Workspace, name: str, definition: dict[str, Any]) -> Journey:
    """The journey parsed against the workspace's plan, channels and lead rules (a scheduled
    entry declares its system event first, and needs an existing audience)."""
    entry = definition.get("entry")
    if isinstance(entry, dict) and "schedule" in entry:
        system_source(ws, [SCHEDULED], SCHEDULED_PLAN)
        if find_segment(ws, str(entry.get("audience") or "")) is None:
            raise JourneyError([_no_audience(entry.get("audience"))])
    with ws.db.connect() as conn:
        kinds = {str(r.name): str(r.kind) for r in conn.execute(select(channels))}
        rules = {str(n) for n in conn.execute(select(lead_rules.c.name)).scalars()}
        known = {str(t["name"]): dict(t) for t in conn.execute(select(tags)).mappings()}
    return parse(0, name, "draft", definition, context(ws), kinds, rules, known)


def _no_audience(name: Any) -> dict[str, str]:
    return {"node": "entry", "message": f"audience: no audience {name!r}"}


def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["created_at"], out["updated_at"] = utc(out["created_at"]), utc(out["updated_at"])
    return out


def _row(conn: Connection, ref: int | str) -> Any:
    col = journeys.c.id if isinstance(ref, int) else journeys.c.name
    row = conn.execute(select(journeys).where(col == ref)).first()
    if row is None:
        raise JourneyNotFound(f"no journey {ref!r}")
    return row


def get(ws: Workspace, ref: int | str) -> dict[str, Any]:
    with ws.db.connect() as conn:
        return _public(_row(conn, ref))


def list_all(ws: Workspace) -> list[dict[str, Any]]:
    with ws.db.connect() as conn:
        counts: dict[int, int] = dict(
            conn.execute(
                select(journey_positions.c.journey_id, func.count())
                .where(journey_positions.c.status == "active")
                .group_by(journey_positions.c.journey_id)
            ).all()
        )
        rows = conn.execute(select(journeys).order_by(journeys.c.name)).all()
    return [{**_public(r), "active": counts.get(r.id, 0)} for r in rows]


def create(
    ws: Workspace,
    name: str,
    definition: dict[str, Any],
    description: str = "",
    status: str = "draft",
) -> dict[str, Any]:
    check(ws, name, definition)
    if status not in STATUSES:
        raise JourneyError([{"node": "status", "message": f"one of {', '.join(STATUSES)}"}])
    at = now()
    with ws.db.begin() as conn:
        if conn.execute(select(journeys.c.id).where(journeys.c.name == name)).first():
            raise JourneyError([{"node": "name", "message": f"a journey {name!r} exists"}])
        values = {"name": name, "description": description, "status": status}
        jid = conn.execute(
            insert(journeys).values(**values, definition=definition, created_at=at, updated_at=at)
        ).inserted_primary_key[0]  # type: ignore[index]
        return _public(_row(conn, int(jid)))


def update_definition(
    ws: Workspace, ref: int | str, definition: dict[str, Any], description: str | None = None
) -> dict[str, Any]:
    """Persons keep their positions; a node that no longer exists ends their journey there."""
    with ws.db.begin() as conn:
        row = _row(conn, ref)
        check(ws, row.name, definition)
        values: dict[str, Any] = {"definition": definition, "updated_at": now()}
        if description is not None:
            values["description"] = description
        conn.execute(update(journeys).where(journeys.c.id == row.id).values(**values))
        return _public(_row(conn, row.id))


def set_status(ws: Workspace, ref: int | str, status: str) -> dict[str, Any]:
    if status not in STATUSES:
        raise JourneyError([{"node": "status", "message": f"one of {', '.join(STATUSES)}"}])
    with ws.db.begin() as conn:
        row = _row(conn, ref)
        if status == "live":
            check(ws, row.name, row.definition)
        stmt = update(journeys).where(journeys.c.id == row.id)
        conn.execute(stmt.values(status=status, updated_at=now()))
        return _public(_row(conn, row.id))


def remove(ws: Workspace, ref: int | str) -> None:
    with ws.db.begin() as conn:
        row = _row(conn, ref)
        for table in (journey_log, journey_positions):
            conn.execute(delete(table).where(table.c.journey_id == row.id))
        conn.execute(delete(journeys).where(journeys.c.id == row.id))


def live(conn: Connection) -> list[Journey]:
    """The live journeys, typed (as saved: they were checked then)."""
    rows = conn.execute(select(journeys).where(journeys.c.status == "live").order_by(journeys.c.id))
    return [parse(r.id, r.name, r.status, r.definition) for r in rows]


def _position(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for k in ("since", "deadline", "entered_at", "updated_at"):
        out[k] = utc(out[k])
    return out


def positions(
    ws: Workspace, ref: int | str, status: str | None = None, limit: int = 1000
) -> dict[str, Any]:
    """Counts of persons per node (active) and per status, and the positions themselves."""
    t = journey_positions
    with ws.db.connect() as conn:
        jid = _row(conn, ref).id
        at_node = conn.execute(
            select(t.c.node, func.count())
            .where(t.c.journey_id == jid, t.c.status == "active")
            .group_by(t.c.node)
        ).all()
        by_status = conn.execute(
            select(t.c.status, func.count()).where(t.c.journey_id == jid).group_by(t.c.status)
        ).all()
        q = select(t).where(t.c.journey_id == jid)
        if status is not None:
            q = q.where(t.c.status == status)
        rows = conn.execute(q.order_by(t.c.person_key).limit(limit)).all()
    return {
        "nodes": {str(n): c for n, c in at_node},
        "statuses": {str(s): c for s, c in by_status},
        "positions": [_position(r) for r in rows],
    }


def of_person(ws: Workspace, person_key: int) -> list[dict[str, Any]]:
    """The journeys a person is or was in, with their position and steps."""
    t, log = journey_positions, journey_log
    with ws.db.connect() as conn:
        rows = conn.execute(
            select(t, journeys.c.name)
            .join(journeys, journeys.c.id == t.c.journey_id)
            .where(t.c.person_key == person_key)
            .order_by(t.c.journey_id)
        ).all()
        steps = conn.execute(
            select(log).where(log.c.person_key == person_key).order_by(log.c.at, log.c.id)
        ).all()
    out = []
    for r in rows:
        mine = [s for s in steps if s.journey_id == r.journey_id]
        out.append(
            {
                **_position(r),
                "steps": [
                    {"seq": s.seq, "node": s.node, "action": s.action, "at": utc(s.at),
                     "detail": s.detail}
                    for s in mine
                ],
            }
        )  # fmt: skip
    return out
