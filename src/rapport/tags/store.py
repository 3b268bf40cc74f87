"""Tag values, computation runs and per-person history: the one place every tag kind writes.

A run (``tag_runs`` row) produces the tag's values; ``write_values`` makes them current in
``tag_values`` and keeps ``tag_history`` as intervals: a (person, value) pair that a run keeps
stays one open row, one that disappears is closed (``to_run`` = the run that no longer had it,
``valid_to``), a new one is opened. A person's history therefore lists each value once per
stretch of runs that held it.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa
from sqlalchemy import Engine, insert, select, update

from rapport.db.tables import tag_runs, tags

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

#: values kept in a run's ``distribution`` (the rest are summed under ``(other)``)
TOP_VALUES = 50
_NEW = "__tag_new_values"
_SCOPE = "__tag_scope"


class TagNotFound(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no tag named {self.name!r}"


def _now() -> datetime:
    return datetime.now(UTC)


def tag_id(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(select(tags.c.id).where(tags.c.name == name)).scalar()
    if found is None:
        raise TagNotFound(name)
    return int(found)


# -- runs ------------------------------------------------------------------------------------
def start_run(engine: Engine, tag_name: str) -> int:
    """A ``running`` row for the tag; its id versions the values the run writes."""
    tid = tag_id(engine, tag_name)
    with engine.begin() as conn:
        result = conn.execute(
            insert(tag_runs).values(tag_id=tid, status="running", started_at=_now())
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def finish_run(
    engine: Engine,
    run_id: int,
    *,
    persons: int,
    distribution: dict[str, int],
    detail: dict[str, Any] | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(tag_runs)
            .where(tag_runs.c.id == run_id)
            .values(
                status="done",
                finished_at=_now(),
                persons=persons,
                distribution=distribution,
                detail=detail,
            )
        )


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(tag_runs)
            .where(tag_runs.c.id == run_id)
            .values(status="failed", finished_at=_now(), error=error[:4000])
        )


def runs(engine: Engine, tag_name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The tag's runs, newest first."""
    tid = tag_id(engine, tag_name)
    with engine.connect() as conn:
        rows = conn.execute(
            select(tag_runs)
            .where(tag_runs.c.tag_id == tid)
            .order_by(tag_runs.c.id.desc())
            .limit(limit)
        )
        return [dict(r) for r in rows.mappings()]


def last_run(engine: Engine, tag_name: str, status: str | None = "done") -> dict[str, Any] | None:
    tid = tag_id(engine, tag_name)
    query = select(tag_runs).where(tag_runs.c.tag_id == tid)
    if status is not None:
        query = query.where(tag_runs.c.status == status)
    with engine.connect() as conn:
        row = conn.execute(query.order_by(tag_runs.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


# -- values ----------------------------------------------------------------------------------
def _normalised(values: pa.Table) -> pa.Table:
    table = pa.table(
        {
            "person_key": values.column("person_key").cast(pa.int64()),
            "value": values.column("value").cast(pa.string()),
        }
    )
    return table


def write_values(
    ws: Workspace,
    tag_name: str,
    run_id: int,
    values: pa.Table,
    *,
    persons: pa.Array | None = None,
) -> int:
    """Make ``values`` (``person_key`` int64, ``value`` string; several rows per person for a
    multi-valued tag) the tag's current values and update its history; returns the rows written.

    ``persons`` (incremental runs): only these persons' values are replaced, everyone else's
    stay as they are. Rows with a NULL value or a negative person are dropped.
    """
    now = _now()
    with ws.warehouse.connect() as con, ws.warehouse.transaction(con):
        new = ibis.memtable(_normalised(values))
        new = new.filter(new.value.notnull() & (new.person_key >= 0)).distinct()
        scoped = persons is not None
        if scoped:
            scope = pa.table({"person_key": pa.array(persons, pa.int64())})
            con.create_table(_SCOPE, ibis.memtable(scope), temp=True, overwrite=True)
            keys = con.table(_SCOPE)
            new = new.semi_join(keys, new.person_key == keys.person_key)  # nobody else's rows
        con.create_table(_NEW, new, temp=True, overwrite=True)
        in_scope = f" AND person_key IN (SELECT person_key FROM {_SCOPE})" if scoped else ""
        # close the history of pairs the run no longer has
        con.raw_sql(
            "UPDATE tag_history h SET to_run = ?, valid_to = ? "
            "WHERE h.tag = ? AND h.to_run IS NULL"
            + in_scope
            + f" AND NOT EXISTS (SELECT 1 FROM {_NEW} n "
            "WHERE n.person_key = h.person_key AND n.value = h.value)",
            parameters=[run_id, now, tag_name],
        )
        # open the pairs that are new
        written = con.table(_NEW)
        history = con.table("tag_history")
        still_open = history.filter((history.tag == tag_name) & history.to_run.isnull())
        opened = written.anti_join(
            still_open,
            (written.person_key == still_open.person_key) & (written.value == still_open.value),
        ).select(
            person_key=written.person_key,
            tag=ibis.literal(tag_name),
            value=written.value,
            from_run=ibis.literal(run_id, "int64"),
            to_run=ibis.null("int64"),
            valid_from=ibis.literal(now, history.valid_from.type()),
            valid_to=ibis.null(history.valid_to.type()),
        )
        con.insert("tag_history", opened)
        con.raw_sql("DELETE FROM tag_values WHERE tag = ?" + in_scope, parameters=[tag_name])
        current = written.select(
            person_key=written.person_key,
            tag=ibis.literal(tag_name),
            value=written.value,
            run_id=ibis.literal(run_id, "int64"),
        )
        con.insert("tag_values", current)
        n = int(written.count().to_pyarrow().as_py())
        con.drop_table(_NEW, force=True)
        if scoped:
            con.drop_table(_SCOPE, force=True)
    return n


def summary(ws: Workspace, tag_name: str) -> tuple[int, dict[str, int]]:
    """(persons with a value, {value: persons}) over the tag's current values — what a run
    records in ``finish_run``. The top ``TOP_VALUES`` values; the rest under ``(other)``."""
    with ws.warehouse.connect() as con:
        return _summary(con, tag_name)


def _summary(con: Backend, tag_name: str) -> tuple[int, dict[str, int]]:
    t = con.table("tag_values")
    mine = t.filter(t.tag == tag_name)
    persons = int(mine.person_key.nunique().to_pyarrow().as_py())
    counts = (
        mine.group_by("value")
        .aggregate(persons=mine.person_key.nunique())
        .order_by([ibis.desc("persons"), "value"])
        .to_pyarrow()
        .to_pylist()
    )
    dist = Counter({r["value"]: int(r["persons"]) for r in counts[:TOP_VALUES]})
    rest = sum(int(r["persons"]) for r in counts[TOP_VALUES:])
    if rest:
        dist["(other)"] = rest
    return persons, dict(dist)


def distribution(ws: Workspace, tag_name: str) -> dict[str, Any]:
    """Coverage and value counts now: persons with a value, all persons, {value: persons}."""
    with ws.warehouse.connect() as con:
        persons, dist = _summary(con, tag_name)
        total = everyone(con)
    return {"persons": persons, "total": total, "distribution": dist}


def everyone(con: Backend) -> int:
    """All persons: every ``person_key >= 0`` in ``profiles`` or ``events``."""
    universe = universe_of(con)
    return int(universe.count().to_pyarrow().as_py())


def universe_of(con: Backend) -> Any:
    events = con.table("events")
    keys = events.filter(events.person_key >= 0).select("person_key")
    if "profiles" in con.list_tables():
        profiles = con.table("profiles")
        keys = keys.union(profiles.filter(profiles.person_key >= 0).select("person_key"))
    return keys.distinct()


def coverage(ws: Workspace) -> tuple[int, dict[str, int]]:
    """(all persons, {tag: persons with a value}) for the tag list."""
    with ws.warehouse.connect() as con:
        total = everyone(con)
        t = con.table("tag_values")
        rows = t.group_by("tag").aggregate(persons=t.person_key.nunique()).to_pyarrow()
    return total, {r["tag"]: int(r["persons"]) for r in rows.to_pylist()}


# -- per person ------------------------------------------------------------------------------
def person_tags(ws: Workspace, person_key: int) -> dict[str, list[str]]:
    """The person's current tags: {tag: sorted values}."""
    with ws.warehouse.connect() as con:
        t = con.table("tag_values")
        rows = t.filter(t.person_key == person_key).select("tag", "value").to_pyarrow()
    out: dict[str, list[str]] = {}
    for row in rows.to_pylist():
        out.setdefault(row["tag"], []).append(row["value"])
    return {tag: sorted(vals) for tag, vals in sorted(out.items())}


def tag_history(ws: Workspace, person_key: int) -> list[dict[str, Any]]:
    """Every value the person held: tag, value, from_run, to_run (None: current), valid_from,
    valid_to; by tag, then oldest first."""
    with ws.warehouse.connect() as con:
        h = con.table("tag_history")
        rows = (
            h.filter(h.person_key == person_key)
            .order_by(["tag", "valid_from", "from_run", "value"])
            .drop("person_key")
            .to_pyarrow()
        )
    return list(rows.to_pylist())


def delete_values(ws: Workspace, tag_name: str) -> None:
    """Forget a deleted tag's values and history."""
    with ws.warehouse.connect() as con, ws.warehouse.transaction(con):
        con.raw_sql("DELETE FROM tag_values WHERE tag = ?", parameters=[tag_name])
        con.raw_sql("DELETE FROM tag_history WHERE tag = ?", parameters=[tag_name])
