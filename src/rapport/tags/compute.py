"""Computing attribute, statistical and rule tags (mined tags: ``rapport.tags.mined``).

Every computation is one Ibis expression over the warehouse, written through ``store``
(values, run, history); the rollup-based statistical tags of one ``compute_tags`` call share
one (``rollup_tags``). Evaluation is at an explicit ``as_of`` (default: now, UTC).

- attribute: the merged profile (``profiles``) value, transformed (age from a messy birthday,
  a map, bands). Always recomputed in full (one pass over ``profiles``).
- statistical: ``count`` / ``sum`` / ``avg`` from the daily rollups (``person_daily``, whole
  UTC days: the window is the ``window_days`` days ending on as_of's day); ``max`` / ``min``
  / ``last_date`` / ``top_value`` from the events (``as_of - window < ts <= as_of``).
  The rollup-based ones are **incremental**: a run recomputes only persons whose rollup rows
  changed since the tag's last run, plus persons with rows on the days that entered or left
  the window since then; everyone else keeps their value.
- rule: the condition compiled by ``rapport.conditions.to_ibis`` (full recompute).
- manual: the values people and journeys set in the metadata DB (``rapport.tags.manual``),
  copied as they are (full replace: an unset value disappears).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from rapport.conditions.to_ibis import as_json
from rapport.identity.survivorship import iso_date
from rapport.tags import rollup_tags, rollups, store
from rapport.tags.definitions import (
    AttributeDef,
    Band,
    RuleDef,
    StatisticalDef,
    TagError,
    get_tag,
    list_tags,
    parse,
)
from rapport.warehouse import layout, spark

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

_SCOPE = "__tag_compute_scope"
_SPARK_VALUES = "__tag_spark_values"


def _as_of(as_of: datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(UTC)
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    return as_of.astimezone(UTC)


# -- value helpers -----------------------------------------------------------------------------
def number_text(x: ir.NumericValue) -> ir.StringValue:
    """``12`` for whole numbers, else rounded to 2 decimals (``12.35``)."""
    as_float = x.cast("float64")
    whole = as_float == as_float.round(0)
    return ibis.ifelse(
        whole, as_float.cast("int64").cast("string"), as_float.round(2).cast("string")
    )


def banded(x: ir.NumericValue, bands: list[Band]) -> ir.StringValue:
    """The label of the first band ``x`` falls in; NULL when none."""
    branches = []
    for band in bands:
        cond = x.notnull()
        if band.min is not None:
            cond &= x >= band.min
        if band.max is not None:
            cond &= x < band.max
        branches.append((cond, ibis.literal(band.label)))
    return ibis.cases(*branches, else_=ibis.null("string"))


def age_on(birth: ir.DateValue, day: date) -> ir.IntegerValue:
    """Whole years from ``birth`` to ``day``."""
    before_birthday = (birth.month() > day.month) | (
        (birth.month() == day.month) & (birth.day() > day.day)
    )
    return ibis.literal(day.year) - birth.year() - ibis.ifelse(before_birthday, 1, 0)


def value_rows(table: ir.Table, value: ir.Value) -> ir.Table:
    out = table.select(person_key=table.person_key.cast("int64"), value=value.cast("string"))
    return out.filter(out.value.notnull() & (out.value != "") & (out.person_key >= 0))


# -- attribute -----------------------------------------------------------------------------------
def profile_column(con: Backend, field: str) -> str:
    if "profiles" not in con.list_tables():
        raise TagError(
            "definition.field",
            "no merged profiles yet: build them first (rapport identity profiles)",
        )
    columns = con.table("profiles").columns
    for column in (field, f"prop_{field}"):
        if column in columns and column not in ("person_key", "updated_at"):
            return column
    raise TagError("definition.field", f"unknown profile attribute `{field}`")


def attribute_values(con: Backend, d: AttributeDef, as_of: datetime) -> ir.Table:
    """One select per step (text, transform, map or bands): each step reads a column of the
    previous one, so the SQL does not repeat the date parsing in every band's condition."""
    profiles = con.table("profiles")
    column = profile_column(con, d.field)
    text = profiles[column].cast("string")
    # Ibis compiles strip() for Spark as TRIM(' \t\n\r\v\f' FROM x), and Spark reads '\v' as
    # 'v': "f" and "v" would be trimmed off the ends; a regex there instead
    text = text.re_replace(r"^\s+|\s+$", "") if con.name == "pyspark" else text.strip()
    t = profiles.select("person_key", v=text.nullif(""))
    if d.transform in ("age", "age_band"):
        t = t.select("person_key", v=iso_date(t.v).cast("date"))
        t = t.select("person_key", v=age_on(t.v, as_of.date()))
        t = t.select("person_key", v=ibis.ifelse((t.v >= 0) & (t.v < 130), t.v, None))
    elif d.transform == "date":
        t = t.select("person_key", v=iso_date(t.v))
    elif d.transform == "lower":
        t = t.select("person_key", v=t.v.lower())
    elif d.transform == "upper":
        t = t.select("person_key", v=t.v.upper())
    elif d.transform == "number":
        t = t.select("person_key", v=t.v.try_cast("float64"))
    if d.map is not None:
        text = t.v.cast("string")
        mapped = text.substitute(d.map, else_=ibis.literal(d.default, "string"))
        value: ir.Value = ibis.ifelse(text.isnull(), ibis.null("string"), mapped)
    elif d.bands:
        value = banded(t.v.cast("float64") if d.transform is None else t.v, d.bands)
    elif d.transform in ("age", "number"):
        value = number_text(t.v)
    else:
        value = t.v
    return value_rows(t, value)


# -- statistical ---------------------------------------------------------------------------------
def _prop_value(events: ir.Table, prop: str, numeric: bool) -> ir.Value:
    """A property's value: from its typed column alone when it has one (a declared property
    lives there, see ``Warehouse.event_prop_columns``), else from the JSON."""
    typed = layout.prop_column(prop)
    if typed in events.columns:
        column = events[typed]
        if not numeric:
            return column.cast("string")
        return column.cast("float64") if column.type().is_numeric() else column.try_cast("float64")
    raw = as_json(events.properties)[prop]  # (Spark keeps JSON as text)
    if numeric:
        return raw.float
    return raw.str


def _finish_stat(grouped: ir.Table, measure: ir.Value, d: StatisticalDef) -> ir.Table:
    value = banded(measure, d.bands) if d.bands else number_text(measure)
    return value_rows(grouped, value)


def event_values(con: Backend, d: StatisticalDef, as_of: datetime) -> ir.Table:
    events = rollups.resolved_events(con)
    rows = events.filter((events.event == d.event) & (events.ts <= as_of))
    if d.window_days:
        rows = rows.filter(rows.ts > as_of - timedelta(days=d.window_days))
    if d.agg == "last_date":
        g = rows.group_by("person_key").aggregate(m=rows.ts.max())
        return value_rows(g, g.m.date().cast("string"))
    assert d.property is not None
    numeric = d.agg in ("max", "min")
    rows = rows.mutate(v=_prop_value(rows, d.property, numeric)).filter(lambda t: t.v.notnull())
    if numeric:
        g = rows.group_by("person_key").aggregate(m=getattr(rows.v, d.agg)())
        return _finish_stat(g, g.m, d)
    # top_value: the most frequent value (ties: the smallest)
    counts = rows.group_by(["person_key", "v"]).aggregate(c=rows.count())
    ranked = counts.mutate(
        r=ibis.row_number().over(group_by="person_key", order_by=[ibis.desc("c"), "v"])
    )
    top = ranked.filter(ranked.r == 0)
    return value_rows(top, top.v)


def _incremental_scope(
    con: Backend,
    ws: Workspace,
    tag: dict[str, Any],
    d: StatisticalDef,
    as_of: datetime,
    refreshes: tuple[int, int],
) -> ir.Table | None:
    """Persons to recompute (None: everyone), given the rollups' (last, last full) refresh."""
    last = store.last_run(ws.db, tag["name"])
    detail = (last or {}).get("detail") or {}
    if (
        last is None
        or "rollup_refresh" not in detail
        or refreshes[1] > int(detail["rollup_refresh"])
        or _aware(tag["updated_at"]) > _aware(last["started_at"])
    ):
        return None
    prev_day = date.fromisoformat(detail["as_of_day"])
    day = as_of.date()
    if day < prev_day:
        return None
    daily = con.table(rollups.TABLE)
    mine = daily.filter(daily.event == d.event)
    moved = (mine.day > prev_day) & (mine.day <= day)  # entered the window
    if d.window_days:
        w = timedelta(days=d.window_days)
        moved |= (mine.day > prev_day - w) & (mine.day <= day - w)  # left it
    scope = rollups.changed_keys(con, int(detail["rollup_refresh"])).union(
        mine.filter(moved).select("person_key")
    )
    return scope.distinct()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- runs ----------------------------------------------------------------------------------------
Outcome = dict[str, Any] | Exception


def compute_tag(
    ws: Workspace,
    name: str,
    as_of: datetime | None = None,
    *,
    full: bool = False,
    refresh_rollups: bool = True,
) -> dict[str, Any]:
    """Compute one tag as of ``as_of``: ``compute_tags`` for one tag."""
    return compute_tags(ws, [name], as_of, full=full, refresh_rollups=refresh_rollups)[0]


def compute_tags(
    ws: Workspace,
    names: list[str],
    as_of: datetime | None = None,
    *,
    full: bool = False,
    refresh_rollups: bool = True,
) -> list[dict[str, Any]]:
    """Compute tags as of ``as_of``; returns each run's report (run id, rows, persons,
    distribution, whether it was incremental) in the order of ``names``. The statistical tags
    that read the rollups are computed together (one query, one diff, one write for all), the
    others one by one. A failure is recorded on the tag's run; the first one is raised once
    every tag was tried."""
    out = _compute(ws, names, _as_of(as_of), full=full, refresh_rollups=refresh_rollups)
    reports = []
    for r in out:
        if isinstance(r, Exception):
            raise r
        reports.append(r)
    return reports


def _compute(
    ws: Workspace,
    names: list[str],
    at: datetime,
    *,
    full: bool,
    refresh_rollups: bool,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Outcome]:
    tags = []
    for name in dict.fromkeys(names):
        tag = get_tag(ws.db, name)
        if tag is None:
            raise store.TagNotFound(name)
        tags.append(tag)
    together = [t for t in tags if _reads_rollups(t)]
    if together and refresh_rollups:
        if spark.on_spark(ws):  # Spark's rollups are its own, rebuilt from its events
            spark.build_rollups(ws)
        else:
            rollups.refresh(ws)
    done: dict[str, Outcome] = {}
    if together:
        if progress is not None:
            progress(f"{len(together)} statistical tags", 0, len(tags))
        done.update(_compute_rollup_tags(ws, together, at, full))
    for tag in tags:
        if tag["name"] in done:
            continue
        if progress is not None:
            progress(tag["name"], len(done), len(tags))
        try:
            done[tag["name"]] = _compute_one(ws, tag, at)
        except Exception as exc:  # noqa: BLE001 - the run is marked failed, the caller decides
            done[tag["name"]] = exc
    if progress is not None:
        progress("", len(tags), len(tags))
    return [done[name] for name in names]


def _reads_rollups(tag: dict[str, Any]) -> bool:
    if tag["kind"] != "statistical":
        return False
    d = parse(tag["kind"], tag["definition"])
    return isinstance(d, StatisticalDef) and d.agg in rollup_tags.AGGS


def _compute_rollup_tags(
    ws: Workspace, tags: list[dict[str, Any]], at: datetime, full: bool
) -> dict[str, Outcome]:
    """Every rollup-based statistical tag of ``tags`` in one pass (``rollup_tags.values``,
    ``store.replace_many``), each with its own run; incremental per tag unless ``full``."""
    started = time.perf_counter()
    defs: dict[str, StatisticalDef] = {}
    for t in tags:
        d = parse(t["kind"], t["definition"])
        assert isinstance(d, StatisticalDef)
        defs[t["name"]] = d
    runs = {name: store.start_run(ws.db, name) for name in defs}
    out: dict[str, Outcome] = {}
    try:
        # on Spark the values are computed there (always in full) and written here
        with ws.warehouse.connect() as con, spark.reading(ws, con) as reads:
            on_spark = reads is not con
            full = full or on_spark
            columns = reads.table(rollups.TABLE).columns
            for name, d in list(defs.items()):
                try:
                    rollup_tags.check(columns, d)
                except TagError as exc:
                    store.fail_run(ws.db, runs[name], f"{type(exc).__name__}: {exc}")
                    out[name] = exc
                    del defs[name]
            if not defs:
                return out
            refreshes = rollups.current_refresh(ws, con)
            scopes = {}
            for t in tags:
                if t["name"] in defs and not full:
                    s = _incremental_scope(con, ws, t, defs[t["name"]], at, refreshes)
                    if s is not None:
                        scopes[t["name"]] = s.mutate(tag=ibis.literal(t["name"]))
            scope, persons, recomputed = None, None, {}
            if scopes:
                scope = con.create_table(
                    _SCOPE, ibis.union(*scopes.values(), distinct=False), temp=True, overwrite=True
                )
                counts = scope.group_by("tag").aggregate(n=scope.count()).to_pyarrow()
                recomputed = {r["tag"]: int(r["n"]) for r in counts.to_pylist()}
                if len(scopes) == len(defs):  # nobody else's rollups need reading
                    persons = scope.select("person_key").distinct()
            values = rollup_tags.values(reads, defs, at, persons)
            if on_spark:
                values = spark.to_duckdb(ws.settings, con, _SPARK_VALUES, values)
            written = store.replace_many(
                ws,
                con,
                {name: runs[name] for name in defs},
                values,
                scope=scope,
                scoped=set(scopes),
                prepared=True,
            )
            rollup_tags.drop(reads, defs)
            con.drop_table(_SCOPE, force=True)
            if on_spark:
                con.drop_table(_SPARK_VALUES, force=True)
        mark = {
            "as_of": at.isoformat(),
            "as_of_day": at.date().isoformat(),
            "rollup_refresh": refreshes[0],
            "seconds": round(time.perf_counter() - started, 3),
            "together": len(defs),
            "engine": spark.backend_of(ws.settings),
        }
        for name in defs:
            w = written[name]
            detail = {**mark, "incremental": name in scopes}
            if name in scopes:
                detail["persons_recomputed"] = recomputed.get(name, 0)
            store.finish_run(
                ws.db, runs[name], persons=w.persons, distribution=w.distribution, detail=detail
            )
            out[name] = {
                "tag": name,
                "run_id": runs[name],
                "rows": w.rows,
                "persons": w.persons,
                "distribution": w.distribution,
                **detail,
            }
    except Exception as exc:  # noqa: BLE001 - every tag of the pass failed with it
        for name in defs:
            if name not in out:
                store.fail_run(ws.db, runs[name], f"{type(exc).__name__}: {exc}")
                out[name] = exc
    return out


def _compute_one(ws: Workspace, tag: dict[str, Any], at: datetime) -> dict[str, Any]:
    """A tag computed on its own (attribute, rule, mined, statistical from the events): every
    person recomputed."""
    name = tag["name"]
    if tag["kind"] == "mined":
        from rapport.tags import mined  # the "mined" models

        done = mined.compute_mined(ws, name, at)
        return {
            "tag": name,
            "run_id": done.run_id,
            "persons": done.persons,
            "distribution": done.distribution,
            "as_of": at.isoformat(),
            "incremental": False,
        }
    d = parse(tag["kind"], tag["definition"])
    started = time.perf_counter()
    run_id = store.start_run(ws.db, name)
    try:
        detail: dict[str, Any] = {"as_of": at.isoformat(), "incremental": False}
        # one connection; the values go from the compiled expression into ``tag_values``
        # without leaving DuckDB
        with ws.warehouse.connect() as con, spark.reading(ws, con) as reads:
            values: Any
            if tag["kind"] == "manual":  # the metadata DB's values, copied as they are
                from rapport.tags import manual

                values = manual.as_arrow(ws.db, name)
            elif isinstance(d, AttributeDef):
                values = attribute_values(reads, d, at)
            elif isinstance(d, RuleDef):
                values = rule_values(ws, reads, d, at)
            else:
                values = event_values(reads, d, at)
            if reads is not con and not isinstance(values, pa.Table):
                values = values.to_pyarrow()  # Spark's result, written here
            detail["engine"] = spark.backend_of(ws.settings)
            out = store.replace_values(ws, con, name, run_id, values)
        detail["seconds"] = round(time.perf_counter() - started, 3)
        store.finish_run(
            ws.db, run_id, persons=out.persons, distribution=out.distribution, detail=detail
        )
    except Exception as exc:
        store.fail_run(ws.db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    return {
        "tag": name,
        "run_id": run_id,
        "rows": out.rows,
        "persons": out.persons,
        "distribution": out.distribution,
        **detail,
    }


def rule_values(ws: Workspace, con: Backend, d: RuleDef, as_of: datetime) -> ir.Table:
    from rapport.catalog import current_plan
    from rapport.conditions.model import from_json
    from rapport.conditions.to_ibis import BatchContext, compile  # the batch compiler

    attr_types = dict(current_plan(ws.db).user_properties())
    columns = set(con.table("profiles").columns) if "profiles" in con.list_tables() else set()
    renamed = {a: f"prop_{a}" for a in attr_types if a not in columns and f"prop_{a}" in columns}
    # the warehouse keeps declared properties in their columns: filters read them alone
    ctx = BatchContext(con, as_of, attr_types, attr_columns=renamed, props_in_columns=True)
    persons = compile(from_json(d.condition), ctx)
    return value_rows(persons, ibis.literal(d.value))


def compute_all(
    ws: Workspace,
    as_of: datetime | None = None,
    *,
    kinds: tuple[str, ...] = ("attribute", "statistical", "rule", "mined", "manual"),
    full: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Refresh the rollups once, then compute every tag of ``kinds`` (``compute_tags``); a
    failing tag is reported (``error``) and the others still run."""
    names = [t["name"] for t in list_tags(ws.db) if t["kind"] in kinds]
    out = _compute(ws, names, _as_of(as_of), full=full, refresh_rollups=True, progress=progress)
    return [
        {"tag": name, "error": f"{type(r).__name__}: {r}"} if isinstance(r, Exception) else r
        for name, r in zip(names, out, strict=True)
    ]
