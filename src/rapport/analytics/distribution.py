"""Distributions over persons: a tag's values, a profile attribute's top values, or a numeric
attribute's histogram (``bins`` equal-width bins from the minimum to the maximum, the last bin
closed). Values beyond ``top`` are summed under ``(other)``; coverage is the persons with a
value against everyone (``rapport.tags.store.everyone``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis.expr.types as ir

from rapport.analytics.base import batch, table, top_or_other
from rapport.analytics.specs import DistributionSpec
from rapport.conditions.to_ibis import typed_attr
from rapport.tags.store import everyone, tag_values_of

if TYPE_CHECKING:
    from rapport.workspace import Workspace

NUMERIC = ("integer", "number")


def distribution(ws: Workspace, spec: DistributionSpec) -> dict[str, Any]:
    with batch(ws, datetime.now(UTC)) as ctx:
        con = ctx.con
        total = everyone(con)
        kind = ctx.attr_types.get(spec.name, "string") if spec.kind == "attribute" else "string"
        if spec.kind == "tag":
            values = tag_values_of(con, spec.name).select("person_key", "value")
        else:
            values = _attribute(con, spec.name, kind)
        persons = int(values.person_key.nunique().to_pyarrow().as_py()) if values is not None else 0
        if values is None or not persons:
            rows: list[dict[str, Any]] = []
        elif kind in NUMERIC and spec.kind == "attribute":
            rows = _histogram(values, spec.bins)
        else:
            rows = _top(values, spec.top)
    histogram = spec.kind == "attribute" and kind in NUMERIC
    columns = ["low", "high", "persons"] if histogram else ["value", "persons"]
    return {
        "kind": spec.kind,
        "name": spec.name,
        "histogram": histogram,
        "persons": persons,
        "total": total,
        "values": rows,
        "table": table(columns, [[r[c] for c in columns] for r in rows]),
    }


def _attribute(con: Any, name: str, kind: str) -> ir.Table | None:
    if "profiles" not in con.list_tables() or name not in con.table("profiles").columns:
        return None
    p = con.table("profiles")
    value = typed_attr(p[name], kind)
    t = p.filter(p.person_key >= 0).select("person_key", value=value)
    return t.filter(t.value.notnull())


def _top(values: ir.Table, top: int) -> list[dict[str, Any]]:
    v = values.mutate(value=values.value.cast("string"))
    shown = top_or_other(v, "value", v.person_key.nunique(), top)
    counts = shown.group_by("value").aggregate(persons=shown.person_key.nunique())
    rows = counts.to_pyarrow().to_pylist()
    rows.sort(key=lambda r: (r["value"] == "(other)", -r["persons"], r["value"]))
    return [{"value": r["value"], "persons": int(r["persons"])} for r in rows]


def _histogram(values: ir.Table, bins: int) -> list[dict[str, Any]]:
    v = values.mutate(x=values.value.cast("float64"))
    stats = v.aggregate(lo=v.x.min(), hi=v.x.max()).to_pyarrow().to_pylist()[0]
    lo, hi = float(stats["lo"]), float(stats["hi"])
    width = (hi - lo) / bins or 1.0
    index = ((v.x - lo) / width).floor().cast("int64").clip(upper=bins - 1)
    b = v.mutate(bin=index)
    per = b.group_by("bin").aggregate(persons=b.person_key.nunique())
    counts = {int(r["bin"]): int(r["persons"]) for r in per.to_pyarrow().to_pylist()}
    n = bins if hi > lo else 1
    return [
        {
            "low": round(lo + i * width, 6),
            "high": round(lo + (i + 1) * width, 6),
            "persons": counts.get(i, 0),
        }
        for i in range(n)
    ]
