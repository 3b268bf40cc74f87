"""Survivorship: one value per person and property out of what every source said.

Inputs, in long form ``(person, property, source, record, ts, value)``: the properties of the
person's profile slices (time = ``updated_at``) and the traits of its ``identify`` events
(time = event time; all identify events of one source count as one record). Values are text
(JSON strings unquoted, other JSON as JSON text); empty strings and NULL never win.

The rule of a property (``config.survivorship``; default ``most_recent``) picks the winner:

- ``source_priority``: the rule's source order, then ``sources.priority`` (higher first), then
  the most recent;
- ``most_recent`` / ``first_non_empty``: the latest / earliest value;
- ``most_frequent``: the value (compared normalised) held by most records and events;
- ``sum``: the sum of each record's current (latest) numeric value;
- ``union``: each record's current values, distinct, as a list (JSON arrays are flattened).

Everything is one Ibis expression over all persons (``build_profiles``) or one person
(``merged_profile``): DuckDB does the work, no row goes through Python.

Keys that are identifiers (``traits.mobile`` and the other trait paths of the identifier types)
are identities, not attributes: the graph holds them normalised, with their limits, and the
360° profile shows them from there. They are left out here (raw spellings such as
``138 0013 8000`` and ``+86-13800138000`` would only show up as conflicts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import orjson
from ibis.backends.duckdb import Backend
from sqlalchemy import Engine, select

from rapport.catalog import current_plan
from rapport.catalog.pii import mask_value, pii_fields
from rapport.db.tables import sources as sources_table
from rapport.identity import config as cfg

if TYPE_CHECKING:
    from rapport.workspace import Workspace

PROFILES = "profiles"
RESERVED = ("person_key", "updated_at")
SINGLE = ("source_priority", "most_recent", "most_frequent", "first_non_empty")
DEFAULT_SOURCE_PRIORITY = 100  # sources.priority's default
EXAMPLES = 5
OUT = ("person", "property", "value", "source", "updated_at", "rule")
#: formats a birthday is typed in: (regex, group of year, month, day); day first for d/m/y
DATE_FORMATS: tuple[tuple[str, int, int, int], ...] = (
    (r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$", 1, 2, 3),
    (r"^(\d{4})(\d{2})(\d{2})$", 1, 2, 3),
    (r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$", 3, 2, 1),
)


# -- value expressions --------------------------------------------------------------------
def json_text(value: ir.JSONValue) -> ir.StringValue:
    """A JSON value as text: strings unquoted, numbers/booleans/objects as JSON, null NULL."""
    return ibis.coalesce(value.str, value.cast("string"))


def iso_date(text: ir.StringValue) -> ir.StringValue:
    """``1990/1/2``, ``19900102``, ``02/01/1990``, ``1990年1月2日`` -> ``1990-01-02``; NULL
    when the text is no valid date in one of ``DATE_FORMATS``."""
    s = text.strip()
    candidates = []
    for pattern, y, m, d in DATE_FORMATS:
        year, month, day = (s.re_extract(pattern, i).nullif("") for i in (y, m, d))
        candidates.append(year + "-" + month.lpad(2, "0") + "-" + day.lpad(2, "0"))
    found = ibis.coalesce(*candidates)
    return found.try_cast("date").cast("string")


def comparable(text: ir.StringValue) -> ir.StringValue:
    """The normalised text values are compared by: a date as ISO, anything else lower-cased
    with blanks collapsed (``Shanghai `` = ``shanghai``, ``1990/1/2`` = ``1990-01-02``)."""
    return ibis.coalesce(iso_date(text), text.strip().re_replace(r"\s+", " ").lower())


# -- the long form ------------------------------------------------------------------------
def identifier_keys(engine: Engine) -> frozenset[str]:
    """Trait keys that carry identifiers (``traits.mobile`` -> ``mobile``)."""
    keys = set()
    for t in cfg.load(engine).types:
        for path in t.paths:
            for prefix in ("traits.", "context.traits."):
                if path.startswith(prefix) and "." not in path[len(prefix) :]:
                    keys.add(path[len(prefix) :])
    return frozenset(keys)


def _pairs(table: ir.Table, column: str, **keep: ir.Value) -> ir.Table:
    """``keep`` columns plus (property, value) for each key of a JSON object column."""
    m = table.mutate(__m=table[column].map)
    keys = m.select(__m=m["__m"], property=m["__m"].keys().unnest(), **keep)
    return keys.select(*keep, "property", value=json_text(keys["__m"][keys["property"]]))


def values(
    con: Backend,
    engine: Engine,
    *,
    person: int | None = None,
    properties: Sequence[str] | None = None,
) -> ir.Table:
    """Every non-empty value in long form: person, property, source, record, ts, value."""
    slices = con.table("profile_slices")
    slices = slices.filter(slices.person_key.notnull() & (slices.person_key >= 0))
    events = con.table("events")
    events = events.filter(
        (events.type == "identify") & events.person_key.notnull() & (events.person_key >= 0)
    )
    if person is not None:
        slices = slices.filter(slices.person_key == person)
        events = events.filter(events.person_key == person)
    from_slices = _pairs(
        slices,
        "properties",
        person=slices.person_key,
        source=slices.source,
        record=slices.record_key,
        ts=slices.updated_at,
    )
    from_events = _pairs(
        events,
        "properties",
        person=events.person_key,
        source=events.source,
        record=ibis.literal(""),
        ts=events.ts,
    )
    long = from_slices.union(from_events)
    long = long.mutate(value=long.value.strip())
    long = long.filter(long.value.notnull() & (long.value != ""))
    excluded = identifier_keys(engine)
    if properties is not None:
        long = long.filter(long.property.isin(list(properties)))
    elif excluded:
        long = long.filter(~long.property.isin(sorted(excluded)))
    return long


def known_properties(con: Backend, engine: Engine) -> list[str]:
    """Declared user properties plus every key present, identifiers left out; sorted."""
    long = values(con, engine)
    present = long.select("property").distinct().to_pyarrow()["property"].to_pylist()
    declared = set(current_plan(engine).user_properties()) - identifier_keys(engine)
    return sorted(set(present) | declared)


# -- rules --------------------------------------------------------------------------------
def _source_priorities(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(sources_table.c.name, sources_table.c.priority))
        return {r.name: int(r.priority) for r in rows}


def annotated(long: ir.Table, engine: Engine) -> ir.Table:
    """Adds each value's rule, its source's rank in a ``source_priority`` rule and the
    source's priority: the input of ``winners`` and ``conflicting``."""
    rules = cfg.survivorship(engine)
    rule: ir.Value = ibis.literal(cfg.DEFAULT_SURVIVORSHIP)
    if rules:
        rule = ibis.cases(
            *[(long.property == p, r.rule) for p, r in rules.items()],
            else_=cfg.DEFAULT_SURVIVORSHIP,
        )
    listed = [
        (p, s, i)
        for p, r in rules.items()
        if r.rule == "source_priority"
        for i, s in enumerate(r.sources)
    ]
    rank: ir.Value = ibis.literal(1_000_000)
    if listed:
        rank = ibis.cases(
            *[((long.property == p) & (long.source == s), i) for p, s, i in listed],
            else_=1_000_000,
        )
    prio: ir.Value = ibis.literal(DEFAULT_SOURCE_PRIORITY)
    known = _source_priorities(engine)
    if known:
        prio = ibis.cases(
            *[(long.source == s, p) for s, p in known.items()], else_=DEFAULT_SOURCE_PRIORITY
        )
    return long.mutate(rule=rule, rank=rank, prio=prio)


def _first(table: ir.Table, order: list[Any]) -> ir.Table:
    """The first row per (person, property) in ``order``."""
    rn = ibis.row_number().over(group_by=["person", "property"], order_by=order)
    return table.mutate(__rn=rn).filter(ibis._["__rn"] == 0).drop("__rn")


def _current(table: ir.Table) -> ir.Table:
    """Each record's latest value (per person, property, source, record)."""
    rn = ibis.row_number().over(
        group_by=["person", "property", "source", "record"], order_by=[ibis.desc("ts")]
    )
    return table.mutate(__rn=rn).filter(ibis._["__rn"] == 0).drop("__rn")


@contextmanager
def cached(table: ir.Table) -> Iterator[ir.Table]:
    """``table`` computed once into a temporary table: the queries over it stay small (Ibis
    compiles each expression tree in full, and the annotated values are a big one)."""
    done = table.cache()
    try:
        yield done
    finally:
        done.release()


def rules_in_use(engine: Engine) -> frozenset[str]:
    """The default rule and every configured one: ``winners`` builds only their branches
    (fewer branches, a smaller expression to compile)."""
    return frozenset(
        {cfg.DEFAULT_SURVIVORSHIP, *(r.rule for r in cfg.survivorship(engine).values())}
    )


def winners(a: ir.Table, used: frozenset[str] = frozenset(cfg.SURVIVORSHIP_RULES)) -> ir.Table:
    """One row per (person, property) of ``annotated`` values: value (text; a JSON list for
    ``union``), source (the winner's, or the contributing ones joined by ", "), updated_at,
    rule. Only the rules in ``used`` are computed."""
    tie = [ibis.desc("prio"), "source", "value"]
    parts = []
    for rule, order in (
        ("most_recent", [ibis.desc("ts"), *tie]),
        ("first_non_empty", ["ts", *tie]),
        ("source_priority", ["rank", ibis.desc("prio"), ibis.desc("ts"), "source", "value"]),
    ):
        if rule in used:
            chosen = _first(a.filter(a.rule == rule), order)
            parts.append(chosen.select(*OUT[:4], updated_at=chosen.ts, rule=chosen.rule))
    if "most_frequent" in used:
        parts.append(_most_frequent(a, tie))
    current = _current(a.filter(a.rule.isin(["sum", "union"])))
    if "sum" in used:
        parts.append(_sum(current))
    if "union" in used:
        parts.append(_union(current))
    return ibis.union(*parts)


def _most_frequent(a: ir.Table, tie: list[Any]) -> ir.Table:
    frequent = a.filter(a.rule == "most_frequent")
    frequent = frequent.mutate(norm=comparable(frequent.value))
    frequent = frequent.mutate(
        freq=frequent.value.count().over(group_by=["person", "property", "norm"])
    )
    chosen = _first(frequent, [ibis.desc("freq"), ibis.desc("ts"), *tie])
    return chosen.select(*OUT[:4], updated_at=chosen.ts, rule=chosen.rule)


def _sum(current: ir.Table) -> ir.Table:
    summed = current.filter(current.rule == "sum")
    number = summed.value.try_cast("float64")
    total = summed.group_by(["person", "property"]).aggregate(
        total=number.sum(),
        source=summed.source.collect(where=number.notnull(), distinct=True).sort().join(", "),
        updated_at=summed.ts.max(where=number.notnull()),
    )
    total = total.filter(total.total.notnull())
    whole = total.total == total.total.floor()
    return total.select(
        "person",
        "property",
        value=whole.ifelse(total.total.cast("int64").cast("string"), total.total.cast("string")),
        source=total.source,
        updated_at=total.updated_at,
        rule=ibis.literal("sum"),
    )


def _union(current: ir.Table) -> ir.Table:
    united = current.filter(current.rule == "union")
    items = united.value.try_cast("json").array.map(json_text)
    united = united.mutate(item=ibis.coalesce(items, ibis.array([united.value])).unnest())
    united = united.filter(united.item.notnull() & (united.item.strip() != ""))
    listed_values = united.group_by(["person", "property"]).aggregate(
        items=united.item.collect(distinct=True).sort(),
        source=united.source.collect(distinct=True).sort().join(", "),
        updated_at=united.ts.max(),
    )
    return listed_values.select(
        "person",
        "property",
        value=listed_values["items"].cast("json").cast("string"),
        source=listed_values.source,
        updated_at=listed_values.updated_at,
        rule=ibis.literal("union"),
    )


def conflicting(a: ir.Table) -> ir.Table:
    """Each source's latest value of the (person, property) pairs whose sources disagree
    (compared normalised); only single-value rules (sums and unions are meant to differ)."""
    a = a.filter(a.rule.isin(list(SINGLE)))
    rn = ibis.row_number().over(
        group_by=["person", "property", "source"], order_by=[ibis.desc("ts"), "value"]
    )
    latest = a.mutate(__rn=rn).filter(ibis._["__rn"] == 0)
    latest = latest.mutate(norm=comparable(latest.value))
    latest = latest.mutate(spread=latest.norm.nunique().over(group_by=["person", "property"]))
    return latest.filter(latest.spread > 1).select(
        "person", "property", "source", "value", "norm", updated_at=latest.ts
    )


# -- one person ---------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _decoded(value: str, rule: str) -> Any:
    if rule == "union":
        return orjson.loads(value)
    if rule == "sum":
        number = float(value)
        return int(number) if number.is_integer() else number
    return value


def merged_profile(con: Backend, engine: Engine, person_id: int) -> dict[str, Any]:
    """``{"attributes": {prop: {"value", "source", "updated_at", "rule"}}, "conflicts":
    {prop: [{"source", "value", "updated_at"}, ...]}}`` of one person (the survivor's id)."""
    with cached(annotated(values(con, engine, person=person_id), engine)) as a:
        won = winners(a, rules_in_use(engine)).order_by("property").to_pyarrow().to_pylist()
        found = conflicting(a).order_by(["property", ibis.desc("updated_at"), "source"])
        disputed = found.to_pyarrow().to_pylist()
    attributes = {
        row["property"]: {
            "value": _decoded(row["value"], row["rule"]),
            "source": row["source"],
            "updated_at": _iso(row["updated_at"]),
            "rule": row["rule"],
        }
        for row in won
    }
    conflicts: dict[str, list[dict[str, Any]]] = {}
    for row in disputed:
        conflicts.setdefault(row["property"], []).append(
            {"source": row["source"], "value": row["value"], "updated_at": _iso(row["updated_at"])}
        )
    return {"attributes": attributes, "conflicts": conflicts}


# -- all persons --------------------------------------------------------------------------
def profile_columns(properties: Sequence[str]) -> dict[str, str]:
    """Property -> column of ``profiles``: the name itself, unless it clashes with a fixed
    column or (DuckDB names are case-insensitive) with an earlier property: then a suffix."""
    taken = {c.lower() for c in RESERVED}
    out = {}
    for prop in sorted(properties, key=lambda p: (p != p.lower(), p)):  # "city" before "City"
        column = prop if prop.lower() not in taken else f"prop_{prop}"
        n = 2
        while column.lower() in taken:
            column = f"prop_{prop}_{n}"
            n += 1
        taken.add(column.lower())
        out[prop] = column
    return out


def build_profiles(ws: Workspace) -> int:
    """(Re)build the warehouse table ``profiles``: one row per person (every person of the
    graph, and anyone with a value), ``person_key``, one text column per property with the
    merged value, and ``updated_at`` (the latest of its winning values). Returns its rows."""
    engine = ws.db
    with ws.warehouse.connect() as con:
        columns = profile_columns(known_properties(con, engine))
        with cached(annotated(values(con, engine), engine)) as a:
            profiles = _wide(con, winners(a, rules_in_use(engine)), columns)
            with ws.warehouse.transaction(con):
                con.create_table(PROFILES, profiles, overwrite=True)
        return int(con.table(PROFILES).count().to_pyarrow().as_py())


def _wide(con: Backend, win: ir.Table, columns: dict[str, str]) -> ir.Table:
    wide = win.group_by("person").aggregate(
        updated_at=win.updated_at.max(),
        **{col: win.value.max(where=win.property == prop) for prop, col in columns.items()},
    )
    nodes = con.table("identity_nodes")
    everyone = (
        nodes.filter(nodes.person_id.notnull())
        .select(person=nodes.person_id)
        .union(win.select("person"))
        .distinct()
    )
    joined = everyone.left_join(wide, "person")
    return joined.select(
        person_key=joined.person,
        **{col: joined[col] for col in columns.values()},
        updated_at=joined.updated_at,
    ).order_by("person_key")


def conflict_report(ws: Workspace, examples: int = EXAMPLES) -> list[dict[str, Any]]:
    """Per property, the persons whose sources disagree: ``{"property", "rule", "persons",
    "sources", "examples": [{"person_key", "values": [{"source", "value", "updated_at"}]}]}``,
    most persons first; example values of personal properties are masked."""
    engine = ws.db
    personal = pii_fields(engine)
    rules = cfg.survivorship(engine)
    out = []
    with (
        ws.warehouse.connect() as con,
        cached(annotated(values(con, engine), engine)) as a,
        cached(conflicting(a)) as found,
    ):
        summary = found.group_by("property").aggregate(
            persons=found.person.nunique(),
            sources=found.source.collect(distinct=True).sort(),
        )
        per_person = found.group_by(["property", "person"]).aggregate(spread=found.norm.nunique())
        rn = ibis.row_number().over(group_by="property", order_by=[ibis.desc("spread"), "person"])
        top = per_person.mutate(__rn=rn).filter(ibis._["__rn"] < examples)
        shown = found.semi_join(top, ["property", "person"]).order_by(
            ["property", "person", ibis.desc("updated_at"), "source"]
        )
        by_prop: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for row in shown.to_pyarrow().to_pylist():
            value = row["value"]
            if row["property"].lower() in personal:
                value = mask_value(value)
            by_prop.setdefault(row["property"], {}).setdefault(row["person"], []).append(
                {"source": row["source"], "value": value, "updated_at": _iso(row["updated_at"])}
            )
        ordered = summary.order_by([ibis.desc("persons"), "property"])
        for row in ordered.to_pyarrow().to_pylist():
            prop = row["property"]
            rule = rules.get(prop)
            out.append(
                {
                    "property": prop,
                    "rule": rule.rule if rule else cfg.DEFAULT_SURVIVORSHIP,
                    "persons": row["persons"],
                    "sources": row["sources"],
                    "examples": [
                        {"person_key": person, "values": vals}
                        for person, vals in by_prop.get(prop, {}).items()
                    ],
                }
            )
    return out
