"""Tag values, computation runs and per-person history: the one place every tag kind writes.

A run (``tag_runs`` row) produces the tag's values; ``write_values`` makes them current in
``tag_values`` and keeps ``tag_history`` as intervals: a (person, value) pair that a run keeps
stays one open row, one that disappears is closed (``to_run`` = the run that no longer had it,
``valid_to``), a new one is opened. A person's history therefore lists each value once per
stretch of runs that held it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import sqlglot as sg
import sqlglot.expressions as sge
from sqlalchemy import Engine, insert, select, update

from rapport.db.tables import tag_runs, tags

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

#: values kept in a run's ``distribution`` (the rest are summed under ``(other)``)
TOP_VALUES = 50
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
_DIFF = "__tag_changed_values"
_INPUT = "__tag_input_values"


@dataclass
class Written:
    """What a run wrote: the tag's rows in the run's scope, and the ``summary`` after it."""

    rows: int
    persons: int
    distribution: dict[str, int]


def _normalised(t: ir.Table) -> ir.Table:
    t = t.select(person_key=t.person_key.cast("int64"), value=t.value.cast("string"))
    return t.filter(t.value.notnull() & (t.person_key >= 0))


def write_values(
    ws: Workspace,
    tag_name: str,
    run_id: int,
    values: pa.Table | ir.Table,
    *,
    persons: pa.Array | ir.Table | None = None,
) -> int:
    """``replace_values`` in a connection of its own; returns the rows in the run's scope."""
    with ws.warehouse.connect() as con:
        return replace_values(ws, con, tag_name, run_id, values, persons=persons).rows


def replace_values(
    ws: Workspace,
    con: Backend,
    tag_name: str,
    run_id: int,
    values: pa.Table | ir.Table,
    *,
    persons: pa.Array | ir.Table | None = None,
) -> Written:
    """Make ``values`` (``person_key`` int64, ``value`` string; several rows per person for a
    multi-valued tag; an Arrow table or an Ibis expression, which then never leaves DuckDB) the
    tag's current values and update its history.

    ``persons`` (incremental runs; keys, or a table with ``person_key``): only these persons'
    values are replaced, everyone else's stay as they are. Rows with a NULL value or a negative
    person are dropped, a pair listed twice counts once.

    Only changes are written: one pass over old and new finds the pairs that came and went; a
    pair the run keeps stays as it is in ``tag_values`` (``run_id``: the run that set it) and
    in ``tag_history`` (its open row), so a recomputation that changes little writes little.
    """
    now = _now()
    pair = ["person_key", "value"]
    with ws.warehouse.transaction(con):
        if isinstance(values, pa.Table):  # a table DuckDB can read (the SQL below is raw)
            con.create_table(_INPUT, values, temp=True, overwrite=True)
            values = con.table(_INPUT)
        new = _normalised(values)
        current = con.table("tag_values")
        current = current.filter(current.tag == tag_name).select(*pair)
        scoped = persons is not None
        if persons is not None:
            keys = (
                ibis.memtable(pa.table({"person_key": pa.array(persons, pa.int64())}))
                if isinstance(persons, pa.Array)
                else persons.select("person_key")
            )
            con.create_table(_SCOPE, keys.distinct(), temp=True, overwrite=True)
            scope = con.table(_SCOPE)
            new = new.semi_join(scope, "person_key")  # nobody else's rows
            current = current.semi_join(scope, "person_key")
        # one pass over old and new: side 2 came, -2 went, 0 kept
        both = current.mutate(side=ibis.literal(-1, "int8")).union(
            new.mutate(side=ibis.literal(1, "int8")), distinct=False
        )
        # (max + min: a pair listed twice on one side still counts once)
        _temp_table(
            con, _DIFF, both.group_by(pair).aggregate(side=both.side.max() + both.side.min())
        )
        diff = con.table(_DIFF)
        now_held = diff.filter(diff.side >= 0)
        counts = (
            diff.aggregate(
                came=(diff.side > 0).sum(),
                went=(diff.side < 0).sum(),
                rows=(diff.side >= 0).sum(),
                persons=diff.person_key.nunique(where=diff.side >= 0),
            )
            .to_pyarrow()
            .to_pylist()[0]
        )
        if counts["went"]:  # close the history of the pairs the run no longer has, drop them
            con.raw_sql(
                f"UPDATE tag_history h SET to_run = ?, valid_to = ? FROM {_DIFF} g "
                "WHERE h.tag = ? AND h.to_run IS NULL AND g.side < 0 "
                "AND h.person_key = g.person_key AND h.value = g.value",
                parameters=[run_id, now, tag_name],
            )
            con.raw_sql(
                f"DELETE FROM tag_values t USING {_DIFF} g WHERE t.tag = ? AND g.side < 0 "
                "AND t.person_key = g.person_key AND t.value = g.value",
                parameters=[tag_name],
            )
        if counts["came"]:  # open the new pairs
            came = diff.filter(diff.side > 0)
            history = con.table("tag_history")
            con.insert(
                "tag_history",
                came.select(
                    person_key=came.person_key,
                    tag=ibis.literal(tag_name),
                    value=came.value,
                    from_run=ibis.literal(run_id, "int64"),
                    to_run=ibis.null("int64"),
                    valid_from=ibis.literal(now, history.valid_from.type()),
                    valid_to=ibis.null(history.valid_to.type()),
                ),
            )
            con.insert(
                "tag_values",
                came.select(
                    person_key=came.person_key,
                    tag=ibis.literal(tag_name),
                    value=came.value,
                    run_id=ibis.literal(run_id, "int64"),
                ),
            )
        n, persons_n = int(counts["rows"] or 0), int(counts["persons"] or 0)
        # unscoped, the run's values are all the tag's: summarise the small table then
        dist = (
            _distribution(tag_values_of(con, tag_name))
            if scoped
            else _distribution(now_held, pairs_unique=True)
        )
        if scoped:
            persons_n = int(tag_values_of(con, tag_name).person_key.nunique().to_pyarrow().as_py())
        for name in (_DIFF, _SCOPE, _INPUT):
            con.drop_table(name, force=True)
    return Written(n, persons_n, dist)


def summary(ws: Workspace, tag_name: str, con: Backend | None = None) -> tuple[int, dict[str, int]]:
    """(persons with a value, {value: persons}) over the tag's current values — what a run
    records in ``finish_run``. The top ``TOP_VALUES`` values; the rest under ``(other)``."""
    if con is not None:
        return _summary(con, tag_name)
    with ws.warehouse.connect() as own:
        return _summary(own, tag_name)


def tag_values_of(con: Backend, tag_name: str) -> ir.Table:
    t = con.table("tag_values")
    return t.filter(t.tag == tag_name)


def _summary(con: Backend, tag_name: str) -> tuple[int, dict[str, int]]:
    mine = tag_values_of(con, tag_name)
    persons = int(mine.person_key.nunique().to_pyarrow().as_py())
    return persons, _distribution(mine)


def _distribution(values: ir.Table, pairs_unique: bool = False) -> dict[str, int]:
    """{value: persons}: the top ``TOP_VALUES`` values, the rest under ``(other)``.
    ``pairs_unique``: each (person, value) once, so rows are persons (no DISTINCT)."""
    counts = (
        values.group_by("value")
        .aggregate(persons=values.count() if pairs_unique else values.person_key.nunique())
        .order_by([ibis.desc("persons"), "value"])
        .to_pyarrow()
        .to_pylist()
    )
    dist = Counter({r["value"]: int(r["persons"]) for r in counts[:TOP_VALUES]})
    rest = sum(int(r["persons"]) for r in counts[TOP_VALUES:])
    if rest:
        dist["(other)"] = rest
    return dict(dist)


def _temp_table(con: Backend, name: str, expr: ir.Table) -> None:
    """``CREATE OR REPLACE TEMP TABLE name AS <expr>``: one statement (Ibis' ``create_table``
    creates, inserts and renames, which costs a quarter of a second per tag on 1 M persons)."""
    create = sge.Create(
        kind="TABLE",
        this=sg.table(name, quoted=True),
        expression=con.compiler.to_sqlglot(expr),
        replace=True,
        properties=sge.Properties(expressions=[sge.TemporaryProperty()]),
    )
    con.raw_sql(create.sql(con.dialect))


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
