"""Values of many rollup-based statistical tags (``count`` / ``sum`` / ``avg`` over
``person_daily``) in one pass: per event, one ``GROUP BY person_key`` with a windowed sum per
distinct (window, column) its tags need, then one (person, tag, value) row per tag a person
has a value for. Fifty tags over six events cost six aggregations instead of fifty.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import ibis
import ibis.expr.types as ir

from rapport.tags import rollups
from rapport.tags.definitions import StatisticalDef, TagError
from rapport.warehouse.spark import drop_temp, temp_table

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

AGGS = ("count", "sum", "avg")
_MEASURES = "__tag_rollup_measures_"


def check(columns: Sequence[str], d: StatisticalDef) -> None:
    """Raise the definition's error if the rollups (``columns``) cannot answer it."""
    if d.agg != "count" and rollups.sum_column(d.property or "") not in columns:
        raise TagError(
            "definition.property",
            f"`{d.property}` is not a numeric event property of the tracking plan",
        )


def values(
    con: Backend,
    defs: dict[str, StatisticalDef],
    as_of: datetime,
    persons: ir.Table | None = None,
) -> ir.Table:
    """(person_key, tag, value) of every tag of ``defs`` ({name: definition}), one row per
    person and tag, only for ``persons`` when given.

    Per event, one ``GROUP BY person_key`` over that event's rows in the widest window sums
    each (column, window) the tags need (``CASE`` inside the sum: DuckDB runs it about twice
    as fast as ``FILTER``); it is materialised (a temp table per event, one row per person,
    dropped by ``drop``; on Spark a cached view), so each tag's rows are a cheap select of it."""
    from rapport.tags.compute import banded, number_text, value_rows  # (imports this module)

    daily = con.table(rollups.TABLE)
    day = as_of.date()
    by_event: dict[str, dict[str, StatisticalDef]] = {}
    for name, d in defs.items():
        by_event.setdefault(d.event, {})[name] = d
    parts = []
    for i, (event, tags) in enumerate(sorted(by_event.items())):
        rows = daily.filter((daily.event == event) & (daily.day <= day))
        windows = [d.window_days for d in tags.values()]
        widest = max(w or 0 for w in windows) if all(windows) else None
        if widest:
            rows = rows.filter(rows.day > day - timedelta(days=widest))
        if persons is not None:
            rows = rows.semi_join(persons, "person_key")

        def measure(column: str, window: int | None) -> str:
            return f"{column}_{window or 0}"

        sums = {}
        for d in tags.values():
            columns = ["n"] if d.agg == "count" else ["n", rollups.sum_column(d.property or "")]
            for column in columns:
                x = rows[column]
                if d.window_days and d.window_days != widest:
                    x = ibis.ifelse(rows.day > day - timedelta(days=d.window_days), x, None)
                sums[measure(column, d.window_days)] = x.sum()
        table = f"{_MEASURES}{i}"
        wide = temp_table(con, table, rows.group_by("person_key").aggregate(**sums))
        for name, d in tags.items():
            n = wide[measure("n", d.window_days)]  # NULL: no rows in the window
            m: ir.NumericValue = n
            if d.agg != "count":
                s = wide[measure(rollups.sum_column(d.property or ""), d.window_days)]
                m = ibis.ifelse(n.notnull(), s.fill_null(0), None) if d.agg == "sum" else s / n
            if d.bands:
                rows_of = value_rows(wide, banded(m, d.bands))
            else:  # filtered on the number: the filter would repeat the text formatting
                held = wide.filter(m.notnull())
                rows_of = held.select("person_key", value=number_text(m))
            parts.append(rows_of.mutate(tag=ibis.literal(name)))
    return ibis.union(*parts, distinct=False)


def drop(con: Backend, defs: dict[str, StatisticalDef]) -> None:
    """Drop the temp tables ``values`` made for ``defs``."""
    for i in range(len({d.event for d in defs.values()})):
        drop_temp(con, f"{_MEASURES}{i}")
