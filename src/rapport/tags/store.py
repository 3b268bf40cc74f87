"""Tag values, computation runs and per-person history: the one place every tag kind writes.

A run (``tag_runs`` row) produces the tag's values; ``write_values`` makes them current in
``tag_values`` and keeps ``tag_history`` as intervals: a (person, value) pair that a run keeps
stays one open row, one that disappears is closed (``to_run`` = the run that no longer had it,
``valid_to``), a new one is opened. A person's history therefore lists each value once per
stretch of runs that held it.
"""

from __future__ import annotations

from collections.abc import Collection
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
OTHER = "(other)"


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
_NEW = "__tag_new_values"
_DIFF = "__tag_changed_values"
_RUNS = "__tag_runs"
_SCOPE = "__tag_scope"
_INPUT = "__tag_input_values"
_KEYS = "__tag_input_keys"
_KEY = ["person_key", "run", "value"]


@dataclass
class Written:
    """What a run wrote: the tag's rows in the run's scope, and the ``summary`` after it."""

    rows: int
    persons: int
    distribution: dict[str, int]


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
    tag's current values and update its history: ``replace_many`` for one tag.

    ``persons`` (incremental runs; keys, or a table with ``person_key``): only these persons'
    values are replaced, everyone else's stay as they are."""
    if isinstance(values, pa.Table):  # a table DuckDB can read (the SQL below is raw)
        values = con.create_table(_INPUT, values, temp=True, overwrite=True)
    scope = None
    if isinstance(persons, pa.Array):
        keys = pa.table({"person_key": pa.array(persons, pa.int64())})
        persons = con.create_table(_KEYS, keys, temp=True, overwrite=True)
    if persons is not None:
        scope = persons.select("person_key").mutate(tag=ibis.literal(tag_name))
    try:
        return replace_many(
            ws,
            con,
            {tag_name: run_id},
            values.mutate(tag=ibis.literal(tag_name)),
            scope=scope,
            scoped={tag_name} if scope is not None else (),
        )[tag_name]
    finally:
        for name in (_INPUT, _KEYS):
            con.drop_table(name, force=True)


def replace_many(
    ws: Workspace,
    con: Backend,
    runs: dict[str, int],
    values: ir.Table,
    *,
    scope: ir.Table | None = None,
    scoped: Collection[str] = (),
    prepared: bool = False,
) -> dict[str, Written]:
    """Make ``values`` (``person_key``, ``tag``, ``value``) the current values of the tags of
    ``runs`` ({tag: run id}) and update their history, all tags in one pass per step.

    ``scoped`` tags (incremental runs) replace only the values of the persons ``scope`` lists
    for them (rows ``tag``, ``person_key``); everyone else keeps theirs. Rows with a NULL value
    or a negative person are dropped; a pair listed twice counts once. ``prepared``: the caller
    guarantees all that already, and at most one row per person and tag (a single-valued tag
    computed by a GROUP BY), which spares the filters and DISTINCTs over all values (a filter
    on a computed value would compute it twice).

    Only changes are written: one full join of old and new pairs finds those that came and
    went; a pair a run keeps stays as it is in ``tag_values`` (``run_id``: the run that set it)
    and in ``tag_history`` (its open row), so a recomputation that changes little writes
    little. Inside, a tag is its run id (an integer: a smaller, faster join key than its name).
    """
    now = _now()
    names = sorted(runs)
    by_run = {runs[n]: n for n in names}
    with ws.warehouse.transaction(con):
        run_ids = pa.table({"tag": names, "run": pa.array([runs[n] for n in names], pa.int64())})
        tags_runs = con.create_table(_RUNS, run_ids, temp=True, overwrite=True)

        def keyed(t: ir.Table) -> ir.Table:
            """(person_key, tag, value) -> (person_key, run, value), the runs' tags only."""
            return t.join(tags_runs, "tag").select(*_KEY)

        new = values.select(
            person_key=values.person_key.cast("int64"),
            tag=values.tag.cast("string"),
            value=values.value.cast("string"),
        )
        if not prepared:
            new = new.filter(new.value.notnull() & (new.person_key >= 0))
        new = keyed(new)
        current = keyed(con.table("tag_values").select("person_key", "tag", "value"))
        scoped_runs = [runs[n] for n in scoped]
        if scoped_runs:
            assert scope is not None, "scoped tags need their scope"
            keys = scope.join(tags_runs, "tag")
            keys = keys.select(person_key=keys.person_key.cast("int64"), run=keys.run)
            _temp_table(con, _SCOPE, keys.filter(keys.run.isin(scoped_runs)).distinct())
            new, current = (_in_scope(con, t, scoped_runs) for t in (new, current))
        _temp_table(con, _NEW, new if prepared else new.distinct())
        new = con.table(_NEW)
        # pairs on one side only: 1 came, -1 went
        j = new.mutate(side=ibis.literal(1, "int8")).outer_join(
            current.mutate(old=ibis.literal(1, "int8")), _KEY
        )
        _temp_table(
            con,
            _DIFF,
            j.filter(j.side.isnull() | j.old.isnull()).select(
                person_key=ibis.coalesce(j.person_key, j.person_key_right),
                run=ibis.coalesce(j.run, j.run_right),
                value=ibis.coalesce(j.value, j.value_right),
                side=j.side.fill_null(-1),
            ),
        )
        diff = con.table(_DIFF)
        moved = diff.aggregate(came=(diff.side > 0).sum(), went=(diff.side < 0).sum())
        counts = moved.to_pyarrow().to_pylist()[0]
        if counts["went"]:  # close the history of the pairs the runs no longer have, drop them
            went = (
                f"(SELECT g.person_key, r.tag, g.value, g.run FROM {_DIFF} g "
                f"JOIN {_RUNS} r ON r.run = g.run WHERE g.side < 0)"
            )
            con.raw_sql(
                f"UPDATE tag_history h SET to_run = g.run, valid_to = ? FROM {went} g "
                "WHERE h.to_run IS NULL AND h.tag = g.tag "
                "AND h.person_key = g.person_key AND h.value = g.value",
                parameters=[now],
            )
            con.raw_sql(
                f"DELETE FROM tag_values t USING {went} g "
                "WHERE t.tag = g.tag AND t.person_key = g.person_key AND t.value = g.value"
            )
        if counts["came"]:  # open the new pairs
            came = diff.filter(diff.side > 0)
            came = came.join(tags_runs, "run")
            history = con.table("tag_history")
            con.insert(
                "tag_history",
                came.select(
                    "person_key",
                    "tag",
                    "value",
                    from_run=came.run,
                    to_run=ibis.null("int64"),
                    valid_from=ibis.literal(now, history.valid_from.type()),
                    valid_to=ibis.null(history.valid_to.type()),
                ),
            )
            con.insert("tag_values", came.select("person_key", "tag", "value", run_id=came.run))
        out = _written(con, new, by_run, scoped, prepared)
        for name in (_NEW, _DIFF, _RUNS, _SCOPE):
            con.drop_table(name, force=True)
    return out


def _in_scope(con: Backend, t: ir.Table, scoped_runs: list[int]) -> ir.Table:
    """``t``'s rows of unscoped runs, and of scoped runs only for the persons in scope."""
    scope = con.table(_SCOPE)
    whole = t.filter(~t.run.isin(scoped_runs))
    return whole.union(t.semi_join(scope, ["run", "person_key"]), distinct=False)


def _written(
    con: Backend,
    new: ir.Table,
    by_run: dict[int, str],
    scoped: Collection[str],
    prepared: bool,
) -> dict[str, Written]:
    """Per tag: its rows in the run's scope, and persons and distribution after the run —
    from the run's (unique) pairs, or for scoped tags from ``tag_values``."""
    counted = (
        new.group_by("run").aggregate(n=new.count())
        if prepared
        else new.group_by("run").aggregate(n=new.count(), persons=new.person_key.nunique())
    )
    rows = {by_run[r["run"]]: r for r in counted.to_pyarrow().to_pylist()}
    persons = {tag: int(r.get("persons", r["n"])) for tag, r in rows.items()}
    scoped_runs = [run for run, tag in by_run.items() if tag in scoped]
    held = new.filter(~new.run.isin(scoped_runs)) if scoped_runs else new
    dists = {by_run[run]: d for run, d in _distributions(held, "run", pairs_unique=True).items()}
    if scoped:
        mine = con.table("tag_values")
        mine = mine.filter(mine.tag.isin(list(scoped)))
        after = mine.group_by("tag").aggregate(persons=mine.person_key.nunique())
        found = {r["tag"]: int(r["persons"]) for r in after.to_pyarrow().to_pylist()}
        persons.update({tag: found.get(tag, 0) for tag in scoped})
        dists.update(_distributions(mine, "tag"))
    return {
        tag: Written(
            int(rows[tag]["n"]) if tag in rows else 0, persons.get(tag, 0), dists.get(tag, {})
        )
        for tag in by_run.values()
    }


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
    return persons, _distributions(mine, "tag").get(tag_name, {})


def _distributions(
    values: ir.Table, key: str, pairs_unique: bool = False
) -> dict[Any, dict[str, int]]:
    """{tag (``key``: its name or run): {value: persons}}: per tag the top ``TOP_VALUES``
    values, the rest under ``(other)`` (ranked in DuckDB: an average has as many values as
    persons). ``pairs_unique``: each (person, tag, value) once, so rows are persons."""
    counts = values.group_by([key, "value"]).aggregate(
        persons=values.count() if pairs_unique else values.person_key.nunique()
    )
    rank = ibis.row_number().over(group_by=key, order_by=[ibis.desc(counts.persons), counts.value])
    ranked = counts.mutate(
        value=ibis.ifelse(rank < TOP_VALUES, counts.value, ibis.literal(OTHER)),
        top=ibis.ifelse(rank < TOP_VALUES, rank, TOP_VALUES),
    )
    shown = ranked.group_by([key, "value", "top"]).aggregate(persons=ranked.persons.sum())
    out: dict[Any, dict[str, int]] = {}
    for r in shown.order_by([key, "top"]).to_pyarrow().to_pylist():
        out.setdefault(r[key], {})[r["value"]] = int(r["persons"])
    return out


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
