"""Daily per-person rollups: ``person_daily`` (person, day, event) -> ``n`` events and
``sum_<property>`` for each numeric event property of the tracking plan.

Statistical tags read these instead of the events (one row per person, day and event instead
of one per event). The refresh is incremental by day: it recomputes only the days that may
have changed since the last refresh —

- days with events received since the watermark (``received_at``),
- days whose count of resolved events no longer matches the rollup (records resolved to a
  person later than they arrived, erased persons),
- days of persons that identity resolution merged or split since its watermark
  (``identity_history.at``); a full identity rebuild, a new numeric property or the first
  refresh recompute everything.

Each refresh also records which persons' rows really changed (``person_daily_changes``), so a
statistical tag can recompute only those persons (``rapport.tags.compute``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
from ibis.backends.sql.datatypes import DuckDBType

from rapport.warehouse import layout

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

TABLE = "person_daily"
CHANGES = "person_daily_changes"
SUM_PREFIX = "sum_"
NUMERIC = ("integer", "number")
#: warehouse_state keys
REFRESH_KEY = "person_daily.refresh"  # id of the last refresh
FULL_KEY = "person_daily.full_refresh"  # id of the last full refresh
RECEIVED_KEY = "person_daily.received_at"
IDENTITY_KEY = "person_daily.identity_at"
_DIRTY = "__person_daily_days"
_NEW = "__person_daily_new"


@dataclass
class RollupReport:
    refresh: int
    full: bool
    days: int
    rows: int
    persons_changed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sum_column(prop: str) -> str:
    return SUM_PREFIX + prop


def numeric_properties(ws: Workspace) -> list[str]:
    """Event properties the plan declares as integer or number: the ``sum_`` columns."""
    declared = ws.warehouse.declared_event_properties()
    return sorted(name for name, kind in declared.items() if kind in NUMERIC)


def _ensure_columns(con: Backend, props: list[str]) -> bool:
    """Add the missing ``sum_<prop>`` columns and the change log; True when columns were added
    (their old rows are NULL: a full refresh fills them)."""
    if CHANGES not in con.list_tables():
        con.create_table(CHANGES, schema=ibis.schema({"refresh": "int64", "person_key": "int64"}))
    have = set(con.table(TABLE).columns)
    added = False
    for prop in props:
        column = sum_column(prop)
        if column not in have:
            type_sql = DuckDBType.to_string(ibis.dtype("float64"))
            con.raw_sql(f'ALTER TABLE {TABLE} ADD COLUMN "{column}" {type_sql}')
            added = True
    return added


def _numeric(events: ir.Table, prop: str) -> ir.FloatingValue:
    """The property as a number: its typed column alone when the warehouse has one (a declared
    property lives there, see ``Warehouse.event_prop_columns``: no JSON parsed per event),
    else the JSON."""
    typed = layout.prop_column(prop)
    if typed in events.columns:
        column = events[typed]
        return column.cast("float64") if column.type().is_numeric() else column.try_cast("float64")
    return events.properties[prop].float


def resolved_events(con: Backend) -> ir.Table:
    events = con.table("events")
    return events.filter((events.person_key >= 0) & events.event.notnull())


def aggregate(events: ir.Table, props: list[str]) -> ir.Table:
    """(person_key, day, event, n, sum_<prop>...) over ``events``."""
    values = {sum_column(p): _numeric(events, p) for p in props}
    with_values = events.mutate(**values) if values else events
    return with_values.group_by(["person_key", "day", "event"]).aggregate(
        n=with_values.count(),
        **{name: with_values[name].sum() for name in values},
    )


def _state(ws: Workspace, con: Backend, key: str) -> str | None:
    return ws.warehouse.get_state(con, key)


def _dirty_days(ws: Workspace, con: Backend) -> tuple[ir.Table, bool]:
    """The days to recompute, and whether it must be everything."""
    events = resolved_events(con)
    daily = con.table(TABLE)
    parts: list[ir.Table] = []
    received = _state(ws, con, RECEIVED_KEY)
    if received is not None:
        since = datetime.fromisoformat(received)
        raw = con.table("events")
        parts.append(raw.filter(raw.received_at > since).select("day"))
    # resolved-event counts per day against the rollup's
    counted = events.group_by("day").aggregate(n=events.count())
    rolled = daily.group_by("day").aggregate(n=daily.n.sum())
    joined = counted.outer_join(rolled, counted.day == rolled.day)
    joined = joined.select(
        day=ibis.coalesce(joined.day, joined.day_right),
        a=joined.n.fill_null(0),
        b=joined.n_right.fill_null(0),
    )
    parts.append(joined.filter(joined.a != joined.b).select("day"))
    # persons identity resolution changed
    seen = _state(ws, con, IDENTITY_KEY)
    history = con.table("identity_history")
    changed = history if seen is None else history.filter(history.at > datetime.fromisoformat(seen))
    rebuilt = changed.filter(changed.action == "rebuild").count().to_pyarrow().as_py()
    if rebuilt:
        return events.select("day").distinct(), True
    who = changed.select(p=changed.person_id).union(changed.select(p=changed.other_id))
    who = who.filter(who.p.notnull()).distinct()
    parts.append(events.semi_join(who, events.person_key == who.p).select("day"))
    parts.append(daily.semi_join(who, daily.person_key == who.p).select("day"))
    return ibis.union(*parts, distinct=True), False


def refresh(ws: Workspace, *, full: bool = False) -> RollupReport:
    """Bring ``person_daily`` up to date with ``events`` (see the module doc)."""
    props = numeric_properties(ws)
    with ws.warehouse.connect() as con:
        added = _ensure_columns(con, props)
        full = full or added or _state(ws, con, REFRESH_KEY) is None
        columns = [c for c in con.table(TABLE).columns if c.startswith(SUM_PREFIX)]
        props = [c[len(SUM_PREFIX) :] for c in columns]  # every sum column, declared or not
        events = resolved_events(con)
        raw = con.table("events")
        received = raw.received_at.max().to_pyarrow().as_py()
        identity_at = con.table("identity_history").at.max().to_pyarrow().as_py()
        refresh_id = int(_state(ws, con, REFRESH_KEY) or 0) + 1
        with ws.warehouse.transaction(con):
            if not full:
                days, full = _dirty_days(ws, con)
            if full:
                # rebuilt in place: one INSERT ... SELECT of the aggregate, no staging copy
                con.raw_sql(f"DELETE FROM {TABLE}")
                con.insert(TABLE, _in_layout(con, aggregate(events, props)))
                stats = con.table(TABLE).aggregate(
                    rows=ibis._.count(),
                    days=ibis._.day.nunique(),
                    persons=ibis._.person_key.nunique(),
                )
                n_rows, n_days, n_changed = (
                    int(v) for v in stats.to_pyarrow().to_pylist()[0].values()
                )
                ws.warehouse.set_state(con, FULL_KEY, str(refresh_id))
            else:
                con.create_table(_DIRTY, days, temp=True, overwrite=True)
                dirty = con.table(_DIRTY)
                fresh = aggregate(events.semi_join(dirty, events.day == dirty.day), props)
                con.create_table(_NEW, fresh, temp=True, overwrite=True)
                new = con.table(_NEW)
                old = con.table(TABLE)
                old = old.semi_join(dirty, old.day == dirty.day).select(*new.columns)
                differ = old.difference(new).union(new.difference(old))
                changed = differ.select("person_key").distinct()
                n_changed = int(changed.count().to_pyarrow().as_py())
                con.insert(
                    CHANGES,
                    changed.select(
                        refresh=ibis.literal(refresh_id, "int64"), person_key="person_key"
                    ),
                )
                con.raw_sql(f"DELETE FROM {TABLE} WHERE day IN (SELECT day FROM {_DIRTY})")
                n_days = int(dirty.count().to_pyarrow().as_py())
                con.drop_table(_DIRTY, force=True)
                n_rows = int(new.count().to_pyarrow().as_py())
                con.insert(TABLE, _in_layout(con, new))
                con.drop_table(_NEW, force=True)
            ws.warehouse.set_state(con, REFRESH_KEY, str(refresh_id))
            if received is not None:
                ws.warehouse.set_state(con, RECEIVED_KEY, received.isoformat())
            if identity_at is not None:
                ws.warehouse.set_state(con, IDENTITY_KEY, identity_at.isoformat())
    return RollupReport(refresh_id, full, n_days, n_rows, n_changed)


def _in_layout(con: Backend, rows: ir.Table) -> ir.Table:
    """``rows`` with ``person_daily``'s columns, in its order and types."""
    schema = con.table(TABLE).schema()
    return rows.select(**{name: rows[name].cast(dtype) for name, dtype in schema.items()})


def changed_keys(con: Backend, after: int) -> ir.Table:
    """Persons whose rollup rows changed in the refreshes after ``after``."""
    changes = con.table(CHANGES)
    return changes.filter(changes.refresh > after).select("person_key").distinct()


def current_refresh(ws: Workspace, con: Backend) -> tuple[int, int]:
    """(last refresh id, last full refresh id); (0, 0) before the first refresh."""
    return int(_state(ws, con, REFRESH_KEY) or 0), int(_state(ws, con, FULL_KEY) or 0)
