"""Data quality per source and field: fill rate, invalid values, duplicates, disagreements.

Computed on the current profile slices (what each source says now), plus the quarantine
(values refused at the door) and the last run of each import (events and items imports have
no slices). Disagreements compare sources that share an identifier value: the same mobile with
two different birthdays in two systems is exactly what survivorship will have to settle.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import orjson
from sqlalchemy import func, select

from rapport.db.tables import import_runs, quarantine

if TYPE_CHECKING:
    from rapport.workspace import Workspace

EXAMPLES = 5


def _long(slices: ir.Table, column: str) -> ir.Table:
    """(source, record_key, name, value) rows from a JSON object column."""
    m = slices.mutate(__m=slices[column].map)
    keys = m.select("source", "record_key", "__m", name=m["__m"].keys().unnest())
    return keys.select(
        "source", "record_key", "name", value=keys["__m"][keys["name"]].unwrap_as("string")
    )


def _field_stats(slices: ir.Table, column: str) -> list[dict[str, Any]]:
    long = _long(slices, column)
    filled = long.filter(long.value.notnull() & (long.value != ""))
    stats = filled.group_by(["source", "name"]).aggregate(
        filled=filled.record_key.nunique(), distinct=filled.value.nunique()
    )
    return list(stats.to_pyarrow().to_pylist())


def _duplicates(slices: ir.Table) -> dict[tuple[str, str], int]:
    """Identifier values held by more than one record of the same source."""
    ids = _long(slices, "identifiers")
    ids = ids.filter(ids.value.notnull())
    per_value = ids.group_by(["source", "name", "value"]).aggregate(n=ids.record_key.nunique())
    dup = (
        per_value.filter(per_value.n > 1)
        .group_by(["source", "name"])
        .aggregate(values=ibis._.count())
    )
    return {(r["source"], r["name"]): r["values"] for r in dup.to_pyarrow().to_pylist()}


def _conflicts(slices: ir.Table) -> list[dict[str, Any]]:
    """Per (identifier type, property): identifier values whose sources disagree."""
    ids = _long(slices, "identifiers").rename(id_type="name", id_value="value")
    ids = ids.filter(ids.id_value.notnull())
    props = _long(slices, "properties").rename(prop="name", prop_value="value")
    props = props.filter(props.prop_value.notnull() & (props.prop_value != ""))
    joined = ids.join(props, ["source", "record_key"])
    per_id = joined.group_by(["id_type", "id_value", "prop"]).aggregate(
        sources=joined.source.nunique(), values=joined.prop_value.nunique()
    )
    disputed = per_id.filter((per_id.sources > 1) & (per_id.values > 1))
    summary = disputed.group_by(["id_type", "prop"]).aggregate(identifiers=ibis._.count())
    out = []
    for row in summary.order_by(ibis.desc("identifiers")).to_pyarrow().to_pylist():
        sample = disputed.filter(
            (disputed.id_type == row["id_type"]) & (disputed.prop == row["prop"])
        ).limit(EXAMPLES)
        detail = joined.semi_join(sample, ["id_type", "id_value", "prop"])
        examples: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for d in detail.order_by(["id_value", "source"]).to_pyarrow().to_pylist():
            examples[d["id_value"]][d["source"]].append(d["prop_value"])
        involved = detail.source.nunique()
        out.append(
            {
                "identifier_type": row["id_type"],
                "property": row["prop"],
                "identifiers": row["identifiers"],
                "sources_involved": int(involved.to_pyarrow().as_py()),
                "examples": [
                    {"identifier": value, "values": dict(by_source)}
                    for value, by_source in examples.items()
                ],
            }
        )
    return out


def _quarantined(ws: Workspace, source: str | None) -> dict[tuple[str, str], int]:
    """Open quarantined rows per (source, column), from the violations' JSON paths."""
    stmt = select(quarantine.c.source, quarantine.c.violations).where(
        quarantine.c.kind == "row", quarantine.c.status == "open"
    )
    if source is not None:
        stmt = stmt.where(quarantine.c.source == source)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with ws.db.connect() as conn:
        for row in conn.execute(stmt):
            violations = row.violations
            if isinstance(violations, str):
                violations = orjson.loads(violations)
            for v in violations or []:
                counts[(row.source, str(v.get("path", "")).removeprefix("$."))] += 1
    return counts


def _last_runs(ws: Workspace, source: str | None) -> dict[str, list[dict[str, Any]]]:
    """The latest finished run of each import, by source."""
    latest = (
        select(func.max(import_runs.c.id))
        .where(import_runs.c.status == "done")
        .group_by(import_runs.c.import_id)
    )
    stmt = select(import_runs).where(import_runs.c.id.in_(latest))
    if source is not None:
        stmt = stmt.where(import_runs.c.source == source)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with ws.db.connect() as conn:
        for row in conn.execute(stmt.order_by(import_runs.c.id)).mappings():
            runs[row["source"]].append(dict(row))
    return runs


def quality_report(ws: Workspace, source: str | None = None) -> dict[str, Any]:
    """``{"sources": [{"source", "records", "fields": [...]}], "conflicts": [...]}``.

    Each field: ``field``, ``kind`` (identifier/property), ``records``, ``filled``,
    ``fill_rate``, ``invalid`` (open quarantine), ``distinct``, ``duplicates``.
    ``conflicts`` always spans all sources (a disagreement needs two); with ``source`` it
    keeps those involving that source.
    """
    with ws.warehouse.connect() as con:
        slices = con.table("profile_slices")
        records = {
            r["source"]: r["n"]
            for r in slices.group_by("source").aggregate(n=ibis._.count()).to_pyarrow().to_pylist()
        }
        stats = _field_stats(slices, "identifiers")
        kinds = {(s["source"], s["name"]): "identifier" for s in stats}
        for s in _field_stats(slices, "properties"):
            kinds.setdefault((s["source"], s["name"]), "property")
            stats.append(s)
        dups = _duplicates(slices)
        conflicts = _conflicts(slices)
    invalid = _quarantined(ws, source)
    runs = _last_runs(ws, source)
    by_source: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for s in stats:
        if source is not None and s["source"] != source:
            continue
        total = records.get(s["source"], 0)
        key = (s["source"], s["name"])
        by_source[s["source"]][s["name"]] = {
            "field": s["name"],
            "kind": kinds[key],
            "records": total,
            "filled": s["filled"],
            "fill_rate": round(s["filled"] / total, 4) if total else None,
            "invalid": 0,
            "distinct": s["distinct"],
            "duplicates": dups.get(key, 0),
        }
    # events / items imports: the last run's own field report
    for src, src_runs in runs.items():
        for run in src_runs:
            for name, q in (run.get("quality") or {}).items():
                if name in by_source[src] or "fill_rate" not in q:
                    continue
                by_source[src][name] = {
                    "field": name,
                    "kind": q.get("kind", "property").split(":")[0],
                    "records": q.get("rows"),
                    "filled": q.get("filled"),
                    "fill_rate": q.get("fill_rate"),
                    "invalid": 0,
                    "distinct": q.get("distinct"),
                    "duplicates": q.get("duplicates"),
                }
    for (src, column), count in invalid.items():
        field = by_source[src].setdefault(
            column,
            {
                "field": column,
                "kind": "column",
                "records": None,
                "filled": None,
                "fill_rate": None,
                "distinct": None,
                "duplicates": None,
            },
        )
        field["invalid"] = count
    sources = []
    for src in sorted(set(by_source) | ({source} if source else set(records))):
        fields = sorted(by_source.get(src, {}).values(), key=lambda f: (f["kind"], f["field"]))
        sources.append(
            {
                "source": src,
                "records": records.get(src, 0),
                "last_runs": [
                    {
                        k: run[k]
                        for k in (
                            "id",
                            "rows_read",
                            "rows_loaded",
                            "rows_duplicate",
                            "rows_quarantined",
                        )
                    }
                    for run in runs.get(src, [])
                ],
                "fields": fields,
            }
        )
    if source is not None:
        conflicts = [
            c
            for c in conflicts
            if any(source in ex["values"] for ex in c["examples"]) or not c["examples"]
        ]
    return {"sources": sources, "conflicts": conflicts}
