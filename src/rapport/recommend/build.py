"""``rapport recommend build``: compute the model in the warehouse and keep it in ``rec_*``
tables, which the API loads into memory (``rapport.recommend.model``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ibis
import orjson
import pyarrow as pa
from ibis.backends.duckdb import Backend

from rapport.recommend import data
from rapport.recommend.params import Params
from rapport.warehouse import Warehouse

#: warehouse table -> ModelData field; created (overwritten) by every build
TABLES = {
    "rec_items": "items",
    "rec_neighbours": "neighbours",
    "rec_rules": "rules",
    "rec_cycles": "cycles",
    "rec_person_items": "person_items",
}
RUNS = "rec_runs"
RUNS_SCHEMA = ibis.schema(
    {"at": "timestamp('UTC')", "kind": "string", "seconds": "float64", "report": "string"}
)


@dataclass
class ModelData:
    """The model's tables, as computed (by ``compute``) or read back (by ``read``)."""

    as_of: datetime
    items: pa.Table
    neighbours: pa.Table
    rules: pa.Table
    cycles: pa.Table
    person_items: pa.Table

    def counts(self) -> dict[str, int]:
        return {field: getattr(self, field).num_rows for field in TABLES.values()}


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value] if isinstance(value, list) else []


def _items(catalogue: list[dict[str, Any]], pop: dict[str, dict], params: Params) -> pa.Table:
    """Items with a price tier inside their category (0 = cheapest third, for 3 tiers)."""
    prices: dict[str, list[float]] = {}
    for item in catalogue:
        if isinstance(item.get("price"), int | float):
            prices.setdefault(str(item.get("category")), []).append(float(item["price"]))
    ladders = {c: sorted(set(p)) for c, p in prices.items()}
    rows = []
    for item in catalogue:
        category, price = str(item.get("category")), item.get("price")
        tier = None
        if isinstance(price, int | float):
            ladder = ladders[category]
            tier = min(params.tiers - 1, ladder.index(float(price)) * params.tiers // len(ladder))
        stats = pop.get(item["item_id"], {})
        rows.append(
            {
                "item_id": item["item_id"],
                "name": str(item.get("model") or item.get("name") or item["item_id"]),
                "category": category,
                "brand": item.get("brand"),
                "price": float(price) if isinstance(price, int | float) else None,
                "tier": tier,
                "popularity": float(stats.get("popularity") or 0.0),
                "buyers": int(stats.get("buyers") or 0),
                "accessories": _list(item.get("accessories") or item.get("bundle")),
            }
        )
    schema = pa.schema(
        [
            ("item_id", pa.string()),
            ("name", pa.string()),
            ("category", pa.string()),
            ("brand", pa.string()),
            ("price", pa.float64()),
            ("tier", pa.int64()),
            ("popularity", pa.float64()),
            ("buyers", pa.int64()),
            ("accessories", pa.list_(pa.string())),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def compute(
    wh: Warehouse, con: Backend, params: Params | None = None, until: datetime | None = None
) -> ModelData:
    """The model from the behaviour before ``until`` (default now)."""
    params = params or Params()
    until = until or datetime.now(UTC)
    rows = data.interactions(wh, con, params, until)
    bought = data.purchases(rows, params)
    pairs = data.person_items(rows, bought)
    pop = {r["item_id"]: r for r in data.popularity(pairs).to_pyarrow().to_pylist()}
    items = _items(data.catalogue(con, rows, wh), pop, params)
    category = ibis.memtable(items.select(["item_id", "category"]))
    return ModelData(
        as_of=until,
        items=items,
        neighbours=data.neighbours(pairs, params).to_pyarrow(),
        rules=data.rules(bought, params).to_pyarrow(),
        cycles=data.cycles(bought, category, params).to_pyarrow(),
        person_items=pairs.to_pyarrow(),
    )


def record_run(con: Backend, kind: str, seconds: float, report: dict[str, Any]) -> None:
    if RUNS not in con.list_tables():
        con.create_table(RUNS, schema=RUNS_SCHEMA)
    row = {"at": [datetime.now(UTC)], "kind": [kind], "seconds": [seconds]}
    row["report"] = [orjson.dumps(report, default=str).decode()]
    con.insert(RUNS, ibis.memtable(row, schema=RUNS_SCHEMA))


def last_runs(wh: Warehouse, wait: float = 30.0) -> dict[str, dict[str, Any]]:
    """The last run of each kind (build, evaluate), report decoded."""
    with wh.connect(wait=wait) as con:
        if RUNS not in con.list_tables():
            return {}
        runs = con.table(RUNS)
        latest = runs.filter(runs.at == runs.at.max().over(group_by=runs.kind))
        found = latest.to_pyarrow().to_pylist()
    return {r["kind"]: {**r, "report": orjson.loads(r["report"])} for r in found}


def build(wh: Warehouse, params: Params | None = None, until: datetime | None = None) -> dict:
    """Compute and store the model; returns the build's report (also kept in ``rec_runs``)."""
    started = time.perf_counter()
    with wh.connect() as con:
        model = compute(wh, con, params, until)
        with wh.transaction(con):
            for table, field in TABLES.items():
                con.create_table(table, getattr(model, field), overwrite=True)
            seconds = time.perf_counter() - started
            report = {"as_of": model.as_of.isoformat(), **model.counts()}
            record_run(con, "build", seconds, report)
    return {**report, "seconds": round(seconds, 3)}


def read(wh: Warehouse) -> ModelData | None:
    """The stored model, or None before the first build."""
    with wh.connect() as con:
        if not set(TABLES) <= set(con.list_tables()):
            return None
        tables = {field: con.table(t).to_pyarrow() for t, field in TABLES.items()}
        runs = con.table(RUNS)
        builds = runs.filter(runs.kind == "build").order_by(runs.at.desc()).limit(1)
        built = builds.report.to_pyarrow().to_pylist()
    as_of = datetime.fromisoformat(orjson.loads(built[0])["as_of"]) if built else datetime.now(UTC)
    return ModelData(as_of=as_of, **tables)
