"""What the analyses share: a batch context over the warehouse, rates, and the result table
that both the JSON answer and the CSV download are made of (so they cannot disagree)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir

from rapport.conditions.to_ibis import BatchContext
from rapport.segments.bitmaps import attr_types

if TYPE_CHECKING:
    from rapport.workspace import Workspace

OTHER = "(other)"
NONE = "(none)"


@contextmanager
def batch(ws: Workspace, as_of: datetime) -> Iterator[BatchContext]:
    """A context whose properties are read from their typed columns where the warehouse has
    them (complete by its invariant; the loader adds them, readers never), else the JSON."""
    with ws.warehouse.connect() as con:
        yield BatchContext(con, as_of, attr_types(ws), props_in_columns=True)


def rate(n: int, of: int) -> float:
    return round(n / of, 4) if of else 0.0


def table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"columns": columns, "rows": rows}


def to_csv(result: dict[str, Any]) -> str:
    """The result's table as CSV: a header row, then the rows (None as an empty cell)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result["table"]["columns"])
    writer.writerows(result["table"]["rows"])
    return out.getvalue()


def labelled(value: ir.Value) -> ir.StringValue:
    """A breakdown value as text, a missing one as ``(none)``."""
    return value.cast("string").fill_null(NONE)


def top_or_other(t: ir.Table, key: str, weight: ir.Value, top: int) -> ir.Table:
    """``t`` with ``key`` kept for its ``top`` heaviest values (ties by value), others
    relabelled ``(other)``: one window, no round trip, so distinct counts of ``(other)`` stay
    exact (a person in two small values counts once)."""
    ranked = t.mutate(__w=weight.over(group_by=t[key]))
    rank = ibis.dense_rank().over(order_by=[ibis.desc(ranked["__w"]), ranked[key]])
    return ranked.mutate(**{key: ibis.ifelse(rank < top, ranked[key], OTHER)}).drop("__w")
