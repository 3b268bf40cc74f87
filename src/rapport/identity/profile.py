"""The 360° profile of one person, and the person's rights over it: export and erasure.

A person (docs/identity.md) is a component of identifier nodes named by its smallest node id.
Everything here reads what ``rapport.identity.resolve`` wrote: ``identity_nodes`` (who),
``identity_links`` and ``identity_history`` (why they are one person), ``profile_slices`` (what
each source says) and ``events`` (what they did); merged attributes come from
``rapport.identity.survivorship``. An id that was merged away keeps answering: ``locate`` names
its survivor, so bookmarks and CRM links to an old id still lead to the person.

Values come out in clear; ``mask_view`` / ``mask_event`` hide personal ones for roles that may
not see them (``rapport.accounts.PII_ROLES``).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import ibis.expr.types as ir
import orjson
from ibis.backends.duckdb import Backend
from sqlalchemy import Engine, delete, or_, select

from rapport import accounts
from rapport.catalog.pii import mask, mask_value
from rapport.db.tables import identifier_types, match_candidates
from rapport.identity.resolve import GRAPH_LOCK, VERSION_KEY, lookup
from rapport.identity.survivorship import merged_profile
from rapport.warehouse import queries

#: the profile page shows this many history rows and slices; the export has everything
VIEW_LIMIT = 200
#: a person's graph draws at most this many edges (pairs of identifiers seen together)
GRAPH_EDGES = 500
#: survivorship's table of merged values, one row per person (``build_profiles``)
PROFILES = "profiles"
#: what a timeline row carries (the typed ``prop_*`` columns repeat ``properties``)
EVENT_COLUMNS = (
    "event_id",
    "source",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "ts",
    "received_at",
    "log_offset",
    "import_run_id",
    "properties",
    "context",
)


class PersonNotFound(LookupError):
    """No current person has this id; ``status`` is 404, or 410 once the person was erased."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


class PersonMerged(Exception):
    """The id was merged into ``survivor``: callers send the client there."""

    def __init__(self, person_id: int, survivor: int) -> None:
        super().__init__(f"person {person_id} was merged into person {survivor}")
        self.person_id = person_id
        self.survivor = survivor


def _sql(con: Backend, query: str, *params: Any) -> list[dict[str, Any]]:
    """Raw DuckDB SQL (self-joins and deletes Ibis spells badly), through Arrow for tz-aware
    timestamps (DuckDB's own Python conversion would need pytz)."""
    result = con.raw_sql(query, parameters=list(params)).to_arrow_table().to_pylist()
    return result  # type: ignore[no-any-return]


def _decoded(expr: ir.Table) -> list[dict[str, Any]]:
    """Every row of ``expr`` with its JSON columns decoded (``queries.rows`` without paging)."""
    found = expr.to_pyarrow().to_pylist()
    for row in found:
        for column in queries.JSON_COLUMNS:
            if isinstance(row.get(column), str):
                row[column] = orjson.loads(row[column])
    return found


# -- which person an id names -----------------------------------------------------------------
def locate(con: Backend, person_id: int) -> int:
    """The current id for ``person_id``: itself, or the survivor it was merged into.

    Raises ``PersonNotFound`` with the reason (blocked, erased, never existed).
    """
    found = _sql(
        con,
        "SELECT person_id, key IS NULL AND value = '' AS erased FROM identity_nodes "
        "WHERE node_id = ?",
        person_id,
    )
    if found and found[0]["person_id"] is not None:
        return int(found[0]["person_id"])
    if found and found[0]["erased"]:
        raise PersonNotFound(
            f"person {person_id} was erased (right to erasure); its identifiers are gone",
            status=410,
        )
    if found:
        raise PersonNotFound(
            f"person {person_id}: its first identifier is blocked, so the id names no person "
            "now; look the person up by another identifier"
        )
    raise PersonNotFound(f"no person {person_id}: no identifier has that id")


def _current(con: Backend, person_id: int) -> None:
    survivor = locate(con, person_id)
    if survivor != person_id:
        raise PersonMerged(person_id, survivor)


def current_person(ws: Any, person_id: int, *, wait: float = 30.0) -> int:
    """``locate`` with its own warehouse connection."""
    with ws.warehouse.connect(wait=wait) as con:
        return locate(con, person_id)


def find_person(ws: Any, id_type: str, raw_value: str) -> int | None:
    """The person holding an identifier value (normalised and hashed by the resolver)."""
    return lookup(ws, id_type, raw_value)


# -- the 360° view ----------------------------------------------------------------------------
def person_view(ws: Any, person_id: int, *, wait: float = 30.0) -> dict[str, Any]:
    """What the profile page shows about a current person, values in clear.

    Raises ``PersonMerged`` for a merged-away id and ``PersonNotFound`` for an unknown one.
    """
    with ws.warehouse.connect(wait=wait) as con:
        _current(con, person_id)
        nodes = _nodes(con, person_id)
        history = _history(con, person_id, VIEW_LIMIT)
        history_total = _sql(
            con,
            "SELECT count(*) AS n FROM identity_history WHERE person_id = $1 OR other_id = $1",
            person_id,
        )[0]["n"]
        slices = queries.rows(_slices(con, person_id), VIEW_LIMIT, 0)
        activity = _activity(con, person_id)
        graph = _graph(con, person_id, nodes)
        merged = merged_attributes(con, ws.db, person_id)
        labels = _labels(con, person_id)
    order = _type_priorities(ws.db)
    identities: dict[str, list[dict[str, Any]]] = {}
    for node in sorted(nodes, key=lambda n: (-order.get(n["id_type"], 0), n["id_type"])):
        identities.setdefault(node["id_type"], []).append(node)
    seen = [n["first_seen"] for n in nodes] + [activity["first"], activity["last"]]
    seen += [s["updated_at"] for s in slices]
    times = [t for t in seen if t is not None]
    return {
        "person_id": person_id,
        "first_seen": min(times, default=None),
        "last_seen": max(times, default=None),
        "identity_count": len(nodes),
        "identities": identities,
        "graph": graph,
        "history": history,
        "history_total": int(history_total),
        "attributes": merged.get("attributes", {}),
        "conflicts": merged.get("conflicts", {}),
        "attributes_note": merged.get("note"),
        "slices": slices,
        "events": activity,
        **labels,
    }


def _labels(con: Backend, person_id: int) -> dict[str, Any]:
    """The person's current tags ({tag: [values]}), audiences and segmentation buckets
    ({segment: bucket or None}) and lifecycle stage, from the last computations."""
    tags: dict[str, list[str]] = {}
    values = con.table("tag_values")
    rows = values.filter(values.person_key == person_id).select("tag", "value")
    for r in rows.order_by(["tag", "value"]).to_pyarrow().to_pylist():
        tags.setdefault(r["tag"], []).append(r["value"])
    members = con.table("segment_members")
    rows = members.filter(members.person_key == person_id).select("segment", "bucket")
    found = rows.order_by("segment").to_pyarrow().to_pylist()
    segments = {r["segment"]: r["bucket"] for r in found}
    return {"tags": tags, "segments": segments, "lifecycle": segments.pop("lifecycle", None)}


def _nodes(con: Backend, person_id: int) -> list[dict[str, Any]]:
    """The person's identifiers, with the sources and records that carried them."""
    return _sql(
        con,
        """
        SELECT n.node_id, n.id_type, n.value, n.first_source, n.first_seen,
               coalesce(list(DISTINCT l.source ORDER BY l.source)
                        FILTER (WHERE l.source IS NOT NULL), []) AS sources,
               count(DISTINCT l.source || chr(31) || l.record_key) AS records,
               max(l.ts) AS last_seen
        FROM identity_nodes n
        LEFT JOIN identity_links l ON l.node_id = n.node_id AND NOT coalesce(l.removed, false)
        WHERE n.person_id = ?
        GROUP BY ALL
        ORDER BY n.node_id
        """,
        person_id,
    )


def _history(con: Backend, person_id: int, limit: int | None) -> list[dict[str, Any]]:
    """Merges, splits, refusals and blocks naming the person, newest first, with the
    identifier each one was about."""
    return _sql(
        con,
        f"""
        SELECT h."at", h.action, h.person_id, h.other_id, h.node_id, n.id_type, n.value,
               h.seq, h.source, h.record_key, h.reason
        FROM identity_history h LEFT JOIN identity_nodes n ON n.node_id = h.node_id
        WHERE h.person_id = $1 OR h.other_id = $1
        ORDER BY h."at" DESC, h.seq DESC NULLS LAST
        {"" if limit is None else f"LIMIT {int(limit)}"}
        """,
        person_id,
    )


def _slices(con: Backend, person_id: int) -> ir.Table:
    slices = con.table("profile_slices")
    mine = slices.filter(slices.person_key == person_id).drop("slice_key", "fingerprint")
    return mine.order_by([mine.updated_at.desc(), mine.source, mine.record_key])


def _activity(con: Backend, person_id: int) -> dict[str, Any]:
    """Counts of the person's events per event name (the type when unnamed) and per source."""
    groups = _sql(
        con,
        """
        SELECT coalesce(event, type) AS name, source, count(*) AS n,
               min(ts) AS first, max(ts) AS last
        FROM events WHERE person_key = ? GROUP BY ALL
        """,
        person_id,
    )
    by_event: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for g in groups:
        by_event[g["name"]] = by_event.get(g["name"], 0) + g["n"]
        by_source[g["source"]] = by_source.get(g["source"], 0) + g["n"]
    firsts = [g["first"] for g in groups if g["first"] is not None]
    lasts = [g["last"] for g in groups if g["last"] is not None]

    def ranked(counts: dict[str, int], key: str) -> list[dict[str, Any]]:
        return [{key: k, "n": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    return {
        "total": sum(by_event.values()),
        "by_event": ranked(by_event, "event"),
        "by_source": ranked(by_source, "source"),
        "first": min(firsts, default=None),
        "last": max(lasts, default=None),
    }


def _graph(con: Backend, person_id: int, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Identifiers as nodes; an edge for every pair some record carried together, with how
    many records did and whether one of them merged two persons."""
    edges = _sql(
        con,
        f"""
        WITH mine AS (
            SELECT DISTINCT kind, source, record_key, node_id FROM identity_links
            WHERE node_id IN (SELECT node_id FROM identity_nodes WHERE person_id = $1)
              AND NOT coalesce(removed, false)
        ), merges AS (
            SELECT DISTINCT source, record_key FROM identity_history
            WHERE action = 'merge' AND person_id = $1
        )
        SELECT a.node_id AS a, b.node_id AS b, count(*) AS records,
               list(DISTINCT a.source ORDER BY a.source) AS sources,
               bool_or(m.source IS NOT NULL) AS merge
        FROM mine a
        JOIN mine b ON a.kind = b.kind AND a.source = b.source
                   AND a.record_key = b.record_key AND a.node_id < b.node_id
        LEFT JOIN merges m ON m.source = a.source AND m.record_key = a.record_key
        GROUP BY ALL
        ORDER BY records DESC, a, b
        LIMIT {GRAPH_EDGES}
        """,
        person_id,
    )
    return {
        "nodes": [
            {k: n[k] for k in ("node_id", "id_type", "value", "first_source", "records")}
            for n in nodes
        ],
        "edges": edges,
    }


def merged_attributes(con: Backend, engine: Engine, person_id: int) -> dict[str, Any]:
    """Survivorship's merged attributes and conflicts."""
    return dict(merged_profile(con, engine, person_id))


def _type_priorities(engine: Engine) -> dict[str, int]:
    """Identifier type -> priority, so the page lists the strongest identifiers first."""
    with engine.connect() as conn:
        rows = conn.execute(select(identifier_types.c.name, identifier_types.c.priority))
        return {r.name: int(r.priority) for r in rows}


def recent_persons(
    ws: Any, *, limit: int = 25, offset: int = 0, wait: float = 30.0
) -> tuple[list[dict[str, Any]], int]:
    """Persons by latest activity (an event or a newly seen identifier), and how many exist."""
    with ws.warehouse.connect(wait=wait) as con:
        found = _sql(
            con,
            """
            WITH ids AS (
                SELECT person_id, count(*) AS identifiers, min(first_seen) AS first_seen,
                       max(first_seen) AS newest,
                       list(DISTINCT id_type ORDER BY id_type) AS types,
                       arg_min(id_type, node_id) AS first_type,
                       arg_min(value, node_id) AS first_value
                FROM identity_nodes WHERE person_id IS NOT NULL GROUP BY person_id
            ), activity AS (
                SELECT person_key AS person_id, count(*) AS events, max(ts) AS last_event
                FROM events WHERE person_key IS NOT NULL GROUP BY person_key
            )
            SELECT ids.person_id, ids.identifiers, ids.types, ids.first_type, ids.first_value,
                   ids.first_seen, coalesce(a.events, 0) AS events,
                   greatest(a.last_event, ids.newest) AS last_seen
            FROM ids LEFT JOIN activity a USING (person_id)
            ORDER BY last_seen DESC NULLS LAST, ids.person_id DESC
            LIMIT ? OFFSET ?
            """,
            int(limit),
            int(offset),
        )
        total = _sql(
            con,
            "SELECT count(DISTINCT person_id) AS n FROM identity_nodes WHERE person_id IS NOT NULL",
        )[0]["n"]
    return found, int(total)


# -- the behaviour timeline -------------------------------------------------------------------
def timeline(
    ws: Any,
    person_id: int,
    *,
    event: str | None = None,
    source: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    wait: float = 30.0,
) -> tuple[list[dict[str, Any]], int]:
    """A page of the person's events, newest first, and how many match.

    ``event`` is an event name, or a message type for unnamed ones (``identify``); ``start``
    is inclusive, ``end`` exclusive. The id is taken as it is: callers ``locate`` it first.
    """
    with ws.warehouse.connect(wait=wait) as con:
        events = con.table("events")
        mine = events.filter(events.person_key == person_id)
        if event is not None:
            mine = mine.filter((mine.event == event) | (mine.event.isnull() & (mine.type == event)))
        mine = queries.filter_events(mine, source=source, since=start, until=end)
        total = int(mine.count().to_pyarrow().as_py())
        ordered = mine.select(*EVENT_COLUMNS).order_by([mine.ts.desc(), mine.event_id.desc()])
        return queries.rows(ordered, limit, offset), total


# -- the right of access ----------------------------------------------------------------------
def export_person(ws: Any, person_id: int, *, wait: float = 30.0) -> dict[str, Any]:
    """Everything held about a person, values in clear: identifiers, the links and history
    that made them one person, merged attributes, every slice and event, pending matches."""
    with ws.warehouse.connect(wait=wait) as con:
        _current(con, person_id)
        identities = _sql(
            con,
            "SELECT node_id, id_type, value, first_source, first_seen FROM identity_nodes "
            "WHERE person_id = ? ORDER BY node_id",
            person_id,
        )
        links = _sql(
            con,
            """
            SELECT seq, kind, source, record_key, node_id, ts, removed FROM identity_links
            WHERE node_id IN (SELECT node_id FROM identity_nodes WHERE person_id = ?)
            ORDER BY seq, node_id
            """,
            person_id,
        )
        history = _history(con, person_id, None)
        merged = merged_attributes(con, ws.db, person_id)
        slices = _decoded(_slices(con, person_id))
        events = con.table("events")
        mine = events.filter(events.person_key == person_id).select(*EVENT_COLUMNS)
        all_events = _decoded(mine.order_by([mine.ts, mine.event_id]))
    with ws.db.connect() as conn:
        candidates = [
            {str(k): v for k, v in r.items()}  # plain str keys: SQLAlchemy's are a subclass
            for r in conn.execute(
                select(match_candidates)
                .where(
                    or_(
                        match_candidates.c.person_a == person_id,
                        match_candidates.c.person_b == person_id,
                    )
                )
                .order_by(match_candidates.c.id)
            ).mappings()
        ]
    return {
        "person_id": person_id,
        "exported_at": datetime.now(UTC),
        "identities": identities,
        "identity_links": links,
        "identity_history": history,
        "attributes": merged.get("attributes", {}),
        "conflicts": merged.get("conflicts", {}),
        "profile_slices": slices,
        "events": all_events,
        "match_candidates": candidates,
        "tags": [],
        "segments": [],
    }


# -- the right to erasure ---------------------------------------------------------------------
_ERASE_SETUP = (
    # the person's identifiers; person ids are node ids, so this also names every id
    # merged into the person
    "CREATE OR REPLACE TEMP TABLE erase_nodes AS "
    "SELECT node_id FROM identity_nodes WHERE person_id = $1",
    # the person's records: their events and profile slices
    "CREATE OR REPLACE TEMP TABLE erase_records AS "
    "SELECT 'event' AS kind, source, event_id AS record_key FROM events WHERE person_key = $1 "
    "UNION SELECT 'slice', source, record_key FROM profile_slices WHERE person_key = $1",
    # values of no person (blocked) that only the person's records carried go with them
    """
    INSERT INTO erase_nodes
    SELECT l.node_id FROM identity_links l
    JOIN identity_nodes n ON n.node_id = l.node_id AND n.person_id IS NULL
    LEFT JOIN erase_records r
           ON r.kind = l.kind AND r.source = l.source AND r.record_key = l.record_key
    GROUP BY l.node_id HAVING bool_and(r.record_key IS NOT NULL)
    """,
)

#: (store, counted DELETE); links before nodes and records, which they are matched against
_ERASE_DELETES = (
    (
        "identity_links",
        "DELETE FROM identity_links WHERE node_id IN (SELECT node_id FROM erase_nodes)",
    ),
    (
        "identity_links",
        "DELETE FROM identity_links USING erase_records r WHERE identity_links.kind = r.kind "
        "AND identity_links.source = r.source AND identity_links.record_key = r.record_key",
    ),
    (
        "identity_history",
        "DELETE FROM identity_history WHERE person_id IN (SELECT node_id FROM erase_nodes) "
        "OR other_id IN (SELECT node_id FROM erase_nodes) "
        "OR node_id IN (SELECT node_id FROM erase_nodes) OR person_id = $1 OR other_id = $1",
    ),
    (
        "identity_history",
        "DELETE FROM identity_history USING erase_records r "
        "WHERE identity_history.source = r.source AND identity_history.record_key = r.record_key",
    ),
    # blanked, not dropped: node ids stay dense (the resolver indexes arrays by them), and a
    # node without key or value matches nothing and names nobody
    (
        "identity_nodes",
        "UPDATE identity_nodes SET key = NULL, value = '', person_id = NULL, "
        "first_source = NULL, first_seen = NULL "
        "WHERE node_id IN (SELECT node_id FROM erase_nodes)",
    ),
    ("events", "DELETE FROM events WHERE person_key = $1"),
    ("profile_slices", "DELETE FROM profile_slices WHERE person_key = $1"),
    # what was computed about the person: tags, their history, rollups, memberships
    ("tag_values", "DELETE FROM tag_values WHERE person_key = $1"),
    ("tag_history", "DELETE FROM tag_history WHERE person_key = $1"),
    ("person_daily", "DELETE FROM person_daily WHERE person_key = $1"),
    ("segment_members", "DELETE FROM segment_members WHERE person_key = $1"),
)


def _graph_changed(ws: Any, con: Backend) -> None:
    """A new ``identity_version``: every process's resolver reloads the nodes it caches."""
    ws.warehouse.set_state(con, VERSION_KEY, uuid.uuid4().hex)


def erase_person(ws: Any, person_id: int, actor: str) -> dict[str, Any]:
    """Erase a person everywhere we hold them (the right to erasure); counts per store.

    - warehouse, in ONE DuckDB transaction: the person's events, profile slices and row of
      merged values (``profiles``, when built); its
      identifier nodes (and blocked values only its records carried) blanked — key, value,
      person and first seen cleared, the row kept because node ids must stay dense for the
      resolver; every link of those nodes or records; every history row naming the person,
      one of its ids, nodes or records, replaced by one ``erase`` row without personal data
      (the id then answers 410 Gone). The resolvers' cached graph is invalidated
      (``identity_version``), and this process's resolution waits meanwhile;
    - the event log: the person's events, by ``events.log_offset``, first, so that a failure
      later leaves them findable for a retry rather than stranded in the log;
    - the metadata DB: the person's ``match_candidates``; and an ``audit_log`` row (counts).

    Not covered: events still in the log but not yet loaded and resolved (erase again once
    the loader has caught up), quarantined payloads, values typed into the blocklist.
    Segment bitmaps are files of ``rapport.segments`` (a layer above): the API clears the
    person's bit there after this (``segments.bitmaps.forget_person``).
    A merged-away id raises ``PersonMerged``: erasing means naming the surviving person.
    """
    deleted: dict[str, int] = dict.fromkeys([table for table, _ in _ERASE_DELETES], 0)
    deleted |= {"profiles": 0, "identity_nodes": 0, "identity_history": 0}
    with GRAPH_LOCK, ws.warehouse.connect() as con:
        _current(con, person_id)
        offsets = [
            int(r["log_offset"])
            for r in _sql(
                con,
                "SELECT log_offset FROM events WHERE person_key = ? AND log_offset IS NOT NULL",
                person_id,
            )
        ]
        erased_log = ws.log.erase(offsets) if offsets else 0
        with ws.warehouse.transaction(con):
            for statement in _ERASE_SETUP:
                con.raw_sql(statement, parameters=[person_id] if "$1" in statement else None)
            ids = [int(r["node_id"]) for r in _sql(con, "SELECT node_id FROM erase_nodes")]
            for table, statement in _ERASE_DELETES:
                params = [person_id] if "$1" in statement else None
                deleted[table] += int(con.raw_sql(statement, parameters=params).fetchone()[0])
            if PROFILES in con.list_tables():  # survivorship's merged values, once built
                deleted["profiles"] = int(
                    con.raw_sql(
                        f"DELETE FROM {PROFILES} WHERE person_key = ?", parameters=[person_id]
                    ).fetchone()[0]
                )
            con.raw_sql(
                'INSERT INTO identity_history ("at", action, person_id, reason) '
                "VALUES (now(), 'erase', ?, 'right to erasure; who and when: audit log')",
                parameters=[person_id],
            )
            con.raw_sql("DROP TABLE erase_nodes")
            con.raw_sql("DROP TABLE erase_records")
            _graph_changed(ws, con)
    ids = sorted(set(ids) | {person_id})
    with ws.db.begin() as conn:
        candidates = conn.execute(
            delete(match_candidates).where(
                or_(match_candidates.c.person_a.in_(ids), match_candidates.c.person_b.in_(ids))
            )
        ).rowcount
    result = {
        "person_id": person_id,
        "deleted": {
            "warehouse": deleted,
            "event_log": {"events": int(erased_log)},
            "metadata": {"match_candidates": int(candidates or 0)},
        },
    }
    accounts.audit(ws.db, actor, "person.erase", str(person_id), deleted=result["deleted"])
    return result


# -- masking for roles that may not see personal data -----------------------------------------
#: digit strings as long as a mobile, ID card or bank card number (+, spaces, dashes, final X)
_NUMBER_LIKE = re.compile(r"^\+?\d[\d \-]{8,}[\dXx]$")


def is_personal(kind: str | None, value: Any, fields: frozenset[str]) -> bool:
    """Whether a value must be masked: its type or key is personal, or it looks like a phone,
    ID card, bank card or email whatever it is called (a member id that is a mobile number)."""
    if value is None or isinstance(value, bool):
        return False
    if kind is not None and kind.lower() in fields:
        return True
    text = str(value)
    return "@" in text or bool(_NUMBER_LIKE.match(text))


def mask_identifier(kind: str | None, value: Any, fields: frozenset[str]) -> Any:
    return mask_value(str(value)) if is_personal(kind, value, fields) else value


def _mask_value_of(key: str, value: Any, fields: frozenset[str]) -> Any:
    if isinstance(value, dict | list):
        return mask(value, fields)
    return mask_identifier(key, value, fields)


def mask_view(view: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """A copy of ``person_view``'s result with personal values masked."""

    def node(n: dict[str, Any]) -> dict[str, Any]:
        return {**n, "value": mask_identifier(n.get("id_type"), n.get("value"), fields)}

    out = dict(view)
    out["identities"] = {t: [node(n) for n in ns] for t, ns in view["identities"].items()}
    out["graph"] = {**view["graph"], "nodes": [node(n) for n in view["graph"]["nodes"]]}
    out["history"] = [
        {**node(h), "record_key": mask_identifier(None, h.get("record_key"), fields)}
        for h in view["history"]
    ]
    out["attributes"] = {
        prop: {**a, "value": _mask_value_of(prop, a.get("value"), fields)}
        for prop, a in view["attributes"].items()
    }
    out["conflicts"] = {
        prop: [{**c, "value": _mask_value_of(prop, c.get("value"), fields)} for c in values]
        for prop, values in view["conflicts"].items()
    }
    out["slices"] = [mask_slice(s, fields) for s in view["slices"]]
    return out


def mask_slice(row: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    identifiers = row.get("identifiers")
    if isinstance(identifiers, dict):
        identifiers = {k: _mask_value_of(k, v, fields) for k, v in identifiers.items()}
    return {
        **row,
        "record_key": mask_identifier(None, row.get("record_key"), fields),
        "identifiers": identifiers,
        "properties": mask(row.get("properties"), fields),
    }


def mask_event(row: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """A timeline row with personal properties and person-looking ids masked."""
    return {
        **row,
        "user_id": mask_identifier(None, row.get("user_id"), fields),
        "anonymous_id": mask_identifier(None, row.get("anonymous_id"), fields),
        "properties": mask(row.get("properties"), fields),
        "context": mask(row.get("context"), fields),
    }
