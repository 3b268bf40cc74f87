"""The warehouse: a DuckDB file reached through Ibis.

Connections are short-lived on purpose. DuckDB lets one *process* hold a database file for
writing; the server's background loader, a ``rapport import`` in a shell and a console query
all need it. Inside one process DuckDB shares one database instance between connections, so
threads work concurrently; between processes, ``connect`` waits for the other one's lock
(``WarehouseBusy`` after ``wait`` seconds) and nobody keeps the file open while idle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import duckdb
import ibis
import ibis.expr.types as ir
import sqlglot as sg
import sqlglot.expressions as sge
from ibis.backends.duckdb import Backend
from ibis.backends.sql.datatypes import DuckDBType

from rapport.warehouse import layout

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from rapport.settings import Settings
    from rapport.warehouse.queries import EventFilters


_OPENING = threading.Lock()
#: seconds a writer waits for another one adding the same property column
ADD_COLUMN_WAIT = 60.0


class WarehouseBusy(RuntimeError):
    """Another process holds the warehouse file (e.g. a long import run from the CLI)."""


def _is_lock_error(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


class Warehouse:
    def __init__(
        self, path: Path, metadata_url: str | None = None, memory_limit: str | None = None
    ) -> None:
        self.path = Path(path)
        self.metadata_url = metadata_url
        self.memory_limit = memory_limit
        self._ready = False
        self._ready_lock = threading.Lock()
        self._prop_columns: dict[str, str] | None = None

    @classmethod
    def open(cls, settings: Settings) -> Warehouse:
        """Cheap: the file is created (and tables made) on first use, not here."""
        settings.ensure_home()
        return cls(settings.warehouse_file, settings.metadata_url, settings.warehouse_memory)

    def close(self) -> None:
        engine = self.__dict__.pop("_metadata_engine", None)
        if engine is not None:
            engine.dispose()

    # -- connections ----------------------------------------------------------------------
    @contextmanager
    def connect(self, wait: float = 30.0) -> Iterator[Backend]:
        """An Ibis DuckDB connection, closed afterwards; waits up to ``wait`` s for a lock."""
        deadline = time.monotonic() + wait
        delay = 0.02
        while True:
            try:
                # DuckDB refuses two threads attaching the same file at the same instant
                with _OPENING:
                    con = ibis.duckdb.connect(self.path)
                break
            except duckdb.IOException as exc:
                if not _is_lock_error(exc) or time.monotonic() >= deadline:
                    if _is_lock_error(exc):
                        raise WarehouseBusy(
                            f"the warehouse {self.path} is in use by another process "
                            "(an import from the command line?); try again when it finishes"
                        ) from exc
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            con.raw_sql("SET TimeZone = 'UTC'")  # days are UTC days, whatever the host says
            if self.memory_limit:
                con.con.execute("SET memory_limit = ?", [self.memory_limit])
            self._ensure_tables(con)
            yield con
        finally:
            con.disconnect()

    @contextmanager
    def transaction(self, con: Backend) -> Iterator[Backend]:
        """All-or-nothing writes (Ibis has no transaction API, so plain BEGIN/COMMIT)."""
        con.raw_sql("BEGIN TRANSACTION")
        try:
            yield con
        except BaseException:
            con.raw_sql("ROLLBACK")
            raise
        con.raw_sql("COMMIT")

    def _ensure_tables(self, con: Backend) -> None:
        if self._ready:
            return
        with self._ready_lock:
            existing = set(con.list_tables())
            for name, schema in layout.TABLES.items():
                if name not in existing:
                    con.create_table(name, schema=schema)
                    continue
                have = set(con.table(name).columns)
                for column, dtype in schema.items():  # a newer layout on an older file
                    if column not in have:
                        type_sql = DuckDBType.to_string(dtype)
                        con.raw_sql(f'ALTER TABLE "{name}" ADD COLUMN "{column}" {type_sql}')
            self._ready = True

    # -- declared event properties as typed columns --------------------------------------
    @cached_property
    def _metadata_engine(self) -> Engine | None:
        if not self.metadata_url:
            return None
        from rapport.db import make_engine

        return make_engine(self.metadata_url)

    def declared_event_properties(self) -> dict[str, str]:
        """name -> plan data type, from the tracking plan (none until the catalogue exists)."""
        try:
            from rapport.catalog import current_plan  # type: ignore[attr-defined]
        except ImportError:
            return {}
        if self._metadata_engine is None:
            return {}
        return dict(current_plan(self._metadata_engine).declared_event_properties())

    def add_prop_columns(self, con: Backend) -> dict[str, str]:
        """The writers' path (the loader on each pass, the importer): add a typed column for
        each newly declared property, then return ``event_prop_columns``.

        The invariant the compilers rely on (``to_ibis``, rollups, tags): **a typed column
        holds its property for every event**, so they read the column alone and never parse
        the JSON for it. The loader and the importer fill the columns of new events; a column
        added here is backfilled from the JSON of the events already loaded in the same
        transaction (ALTER and UPDATE: both or neither). Ibis cannot alter a table, so this is
        SQL (the UPDATE's value is the loader's Ibis expression, compiled). A property declared
        in the plan gets its column at the follower's next pass (about a second under ``rapport
        serve``); until then readers find no column and read the JSON.
        """
        declared = {
            name: kind
            for name, kind in self.declared_event_properties().items()
            if kind in layout.PLAN_TYPES
        }
        columns = set(con.table("events").columns)
        for name, kind in declared.items():
            if layout.prop_column(name) not in columns:
                self._add_prop_column(con, name, kind)
        return self.event_prop_columns(con)

    def _add_prop_column(self, con: Backend, name: str, kind: str) -> None:
        """The column and its backfill: both or neither. Another writer adding it too (an
        importer beside the follower) holds it in its transaction until it commits: this one
        conflicts meanwhile and waits for that commit (or its rollback, then adds it)."""
        column = layout.prop_column(name)
        type_sql = DuckDBType.to_string(layout.PLAN_TYPES[kind])
        deadline = time.monotonic() + ADD_COLUMN_WAIT
        while True:
            try:
                with self.transaction(con):
                    con.raw_sql(
                        f'ALTER TABLE events ADD COLUMN IF NOT EXISTS "{column}" {type_sql}'
                    )
                    self.backfill_prop(con, name, kind)
                return
            except duckdb.TransactionException:
                if column in con.table("events").columns:  # the other writer committed it
                    return
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def event_prop_columns(self, con: Backend) -> dict[str, str]:
        """Property name -> typed column, as the ``events`` table has them now: the readers'
        path (analytics, campaign results, recommendations). Read-only: adding a column is
        ``add_prop_columns``' job, so a reader never ALTERs ``events`` under the loader (a
        DuckDB transaction conflict). A property without a column is read from the JSON."""
        return {
            name[len(layout.PROP_PREFIX) :]: name
            for name in con.table("events").columns
            if name.startswith(layout.PROP_PREFIX)
        }

    def event_prop_types(self, con: Backend) -> dict[str, str]:
        """Property -> plan type of every typed column (declared now, or once: a column keeps
        being filled after its property is dropped from the plan, or it would go stale).
        Read-only, like ``event_prop_columns``."""
        columns = self.event_prop_columns(con)
        declared = self.declared_event_properties()
        schema = con.table("events").schema()
        by_dtype = {dtype: kind for kind, dtype in layout.PLAN_TYPES.items()}
        return {
            name: declared.get(name) or by_dtype.get(schema[column], "string")
            for name, column in columns.items()
        }

    def backfill_prop(self, con: Backend, name: str, kind: str) -> int:
        """Fill ``prop_<name>`` from the JSON of the events that lack it; the rows set."""
        from rapport.warehouse.loader import typed_value

        column = layout.prop_column(name)
        events = con.table("events")
        value = typed_value(events.properties[name], kind)
        target = sg.to_identifier(column, quoted=True)
        # the compiled expression of ``value`` with its table alias dropped (UPDATE has none)
        select = con.compiler.to_sqlglot(events.select(__v=value))
        expr = select.expressions[0].this.transform(
            lambda node: (
                sge.column(node.name, quoted=True) if isinstance(node, sge.Column) else node
            )
        )
        update = sge.Update(
            this=sg.table("events", quoted=True),
            expressions=[sge.EQ(this=sge.column(target), expression=expr)],
            where=sge.Where(
                this=sge.and_(
                    sge.column(target).is_(sge.null()), expr.copy().is_(sge.null()).not_()
                )
            ),
        )
        done = con.raw_sql(update.sql(con.dialect)).fetchone()
        return int(done[0]) if done else 0

    # -- state ----------------------------------------------------------------------------
    def get_state(self, con: Backend, key: str) -> str | None:
        state = con.table("warehouse_state")
        rows = state.filter(state.key == key).select("value").to_pyarrow().to_pylist()
        return rows[0]["value"] if rows else None

    def set_state(self, con: Backend, key: str, value: str) -> None:
        con.upsert("warehouse_state", ibis.memtable({"key": [key], "value": [value]}), on="key")

    # -- loading --------------------------------------------------------------------------
    def load_from_log(
        self, log: Any, batch: int = 50_000, wait: float = 30.0, limit: int | None = None
    ) -> int:
        """Append the log's records after the stored offset (at most about ``limit``: whole
        batches); returns how many were loaded."""
        from rapport.warehouse.loader import load_from_log

        return load_from_log(self, log, batch, wait, limit)

    def log_offset(self) -> int:
        with self.connect() as con:
            return int(self.get_state(con, "log_offset") or 0)

    # -- queries for the console and the API --------------------------------------------
    def events(
        self, *, limit: int = 100, offset: int = 0, **filters: Unpack[EventFilters]
    ) -> list[dict[str, Any]]:
        """Newest first."""
        from rapport.warehouse.queries import event_rows

        with self.connect() as con:
            return event_rows(con, limit=limit, offset=offset, **filters)

    def count_events(self, **filters: Unpack[EventFilters]) -> int:
        from rapport.warehouse.queries import filter_events

        with self.connect() as con:
            expr = filter_events(con.table("events"), **filters)
            return int(expr.count().to_pyarrow().as_py())

    def profile_slices(
        self,
        *,
        source: str | None = None,
        record_key: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """What each source said about a person record, newest first."""
        from rapport.warehouse.queries import rows, slice_rows

        with self.connect() as con:
            return rows(slice_rows(con, source=source, record_key=record_key), limit, offset)

    def items(
        self,
        *,
        item_type: str | None = None,
        source: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        from rapport.warehouse.queries import item_rows, rows

        with self.connect() as con:
            return rows(item_rows(con, item_type=item_type, source=source), limit, offset)

    def compact_events(self) -> None:
        """Rewrite ``events`` sorted by (day, person_key, ts) so zone maps prune both.

        Loads append in sorted batches; this restores one global order after many small ones.
        """
        with self.connect() as con, self.transaction(con):
            events: ir.Table = con.table("events")
            sorted_events = events.order_by(["day", "person_key", "ts"])
            con.create_table("events_sorted", sorted_events, overwrite=True)
            con.drop_table("events")
            con.raw_sql('ALTER TABLE "events_sorted" RENAME TO "events"')
