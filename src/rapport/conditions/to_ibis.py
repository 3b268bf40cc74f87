"""The batch compiler: a condition tree -> one Ibis table of the matching ``person_key``s.

Every node becomes a set of persons: And / Or / Not are INTERSECT / UNION / EXCEPT against the
universe (every ``person_key >= 0`` of ``profiles`` or ``events``), so a whole audience is one
query the backend plans as a unit. It runs unchanged on DuckDB and on PySpark; the one place the
backends differ (reading a JSON property as text) is ``json_text``. A declared property is read
from its typed ``prop_<name>`` column: alone when the context says the columns are complete
(``BatchContext.props_in_columns``, the warehouse's invariant: a plain column filter that DuckDB
pushes into the scan, no JSON parsed), else with the JSON as the fallback.

Costs, for whoever tunes ``bench/segments``:

- attribute, tag and segment leaves: one filtered scan of a small table;
- ``Did``: one filtered scan of ``events`` and a group-by (plus an anchor group-by for
  ``since``, a join to ``items`` only when a filter names ``item.<prop>``); when the threshold
  accepts zero (``count < 3``) it is "everyone except those failing", one EXCEPT;
- ``Sequence``: per step after the first, a join of the chains so far with that step's events
  of the same person inside ``within`` of the chain's start, keeping the earliest (greedy
  earliest continuation is optimal for both ``within`` and "not in between"): cost grows with
  events-per-person-within-``within`` times the number of steps, not with history length
  squared; ``excluding`` and ``then not`` are one more bounded join and an EXCEPT.

The meaning is the reference interpreter's (``rapport.conditions.reference``); the agreement
suite holds the two together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
from ibis.backends import BaseBackend

from rapport.conditions import reference as ref
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    RELATIVE,
    And,
    Attr,
    Compare,
    Condition,
    Did,
    Duration,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Sequence,
    Step,
    Window,
)
from rapport.warehouse.layout import PROP_PREFIX

TS = dt.Timestamp(timezone="UTC")
INT_PATTERN = r"^[+-]?[0-9]+$"
NUM_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
DEFAULT_TABLES: Mapping[str, str] = {
    "profiles": "profiles",
    "events": "events",
    "items": "items",
    "tag_values": "tag_values",
    "segment_members": "segment_members",
}


@dataclass
class BatchContext:
    """Where and when to evaluate: the warehouse connection, the instant, the attributes'
    plan types, the physical table names, and (when a property's profile column is renamed,
    see ``survivorship.profile_columns``) attribute -> ``profiles`` column."""

    con: BaseBackend
    as_of: datetime
    attr_types: Mapping[str, str] = field(default_factory=dict)
    tables: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TABLES))
    attr_columns: Mapping[str, str] = field(default_factory=dict)
    #: True over the warehouse, where every ``prop_<name>`` column holds its property for
    #: every event (``Warehouse.event_prop_columns``): a filter reads the column alone. False
    #: for tables of unknown origin: the column, else the JSON (costs a JSON parse per event).
    props_in_columns: bool = False
    _tables: dict[str, ir.Table] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")

    def table(self, name: str) -> ir.Table:
        """The table, looked up once per context (each lookup is a schema query)."""
        if name not in self._tables:
            self._tables[name] = self.con.table(self.tables.get(name, name))
        return self._tables[name]

    @property
    def spark(self) -> bool:
        return self.con.name == "pyspark"


# -- entry points ---------------------------------------------------------------------------
def compile(cond: Condition, ctx: BatchContext) -> ir.Table:  # noqa: A001 - the verb it is
    """The matching persons: one column ``person_key``, each person once."""
    return _Compiler(ctx).node(cond, "$")


def count(cond: Condition, ctx: BatchContext) -> int:
    expr = compile(cond, ctx).count()
    if ctx.con.name == "duckdb":  # one row: straight from the cursor, no Arrow / pandas trip
        return int(ctx.con.raw_sql(ctx.con.compile(expr)).fetchone()[0])
    return int(expr.to_pyarrow().as_py())


def persons(cond: Condition, ctx: BatchContext, limit: int = 100) -> list[int]:
    """A sample of matching persons (the smallest keys, so it is stable across calls)."""
    rows = compile(cond, ctx).order_by("person_key").limit(limit).to_pyarrow()
    return [int(k) for k in rows.column("person_key").to_pylist()]


def step_events(ctx: BatchContext, step: Step, path: str = "$") -> ir.Table:
    """The events of one step (its name and ``where`` filters) up to ``as_of``, all columns:
    for callers that chain steps their own way (``rapport.analytics``' funnel)."""
    return _Compiler(ctx).events(step.event, step.where, Window(), path)


def event_prop_text(ctx: BatchContext, events: ir.Table, name: str) -> ir.StringValue:
    """An event property as text, from its typed column or the JSON (``_Compiler.prop_text``)."""
    return _Compiler(ctx).prop_text(events, name)


# -- value expressions ----------------------------------------------------------------------
def json_text(value: ir.Value, spark: bool) -> ir.StringValue:
    """A JSON value as text: strings unquoted, numbers/booleans as JSON, JSON null as NULL.

    Spark's ``get_json_object`` already yields that; DuckDB yields JSON, unwrapped here.
    """
    if spark:
        return value.cast("string")
    return ibis.coalesce(value.str, value.cast("string").nullif("null"))


def as_json(column: ir.Value) -> ir.JSONValue:
    """A JSON column (Spark stores JSON as text, which Ibis sees as a string)."""
    return column if column.type().is_json() else column.cast("json")


def as_number(text: ir.StringValue) -> ir.FloatingValue:
    """Text that reads as a number (``reference.prop_number``), else NULL."""
    return text.re_search(NUM_PATTERN).ifelse(text.try_cast("float64"), ibis.null("float64"))


def typed_attr(text: ir.Value, kind: str) -> ir.Value:
    """A profile column as its plan type (``reference.cast_attr``): NULL when missing or when
    the value does not cast."""
    s = text.cast("string").nullif("")
    if kind == "integer":
        return s.re_search(INT_PATTERN).ifelse(s.try_cast("int64"), ibis.null("int64"))
    if kind == "number":
        return as_number(s)
    if kind == "boolean":
        low = s.lower()
        return low.isin(sorted(ref.TRUE_TEXT)).ifelse(
            True, low.isin(sorted(ref.FALSE_TEXT)).ifelse(False, ibis.null("boolean"))
        )
    if kind == "datetime":
        return s.try_cast(TS)
    return s


def compare(value: ir.Value, op: Op, want: Any, kind: dt.DataType) -> ir.BooleanValue:
    """``value op want`` (``want`` already typed) for the non-unary, non-relative ops."""

    def lit(v: Any) -> ir.Value:
        return ibis.literal(v, type=kind)

    if op is Op.eq:
        return value == lit(want)
    if op is Op.ne:
        return value != lit(want)
    if op is Op.lt:
        return value < lit(want)
    if op is Op.le:
        return value <= lit(want)
    if op is Op.gt:
        return value > lit(want)
    if op is Op.ge:
        return value >= lit(want)
    if op is Op.between:
        return value.between(lit(want[0]), lit(want[1]))
    if op is Op.in_:
        return value.isin([lit(v) for v in want]) if want else ibis.literal(False)
    if op is Op.not_in:
        return value.notin([lit(v) for v in want]) & value.notnull() if want else value.notnull()
    if op is Op.contains:
        return value.contains(want)
    if op is Op.starts_with:
        return value.startswith(want)
    raise AssertionError(op)


def anniversary_keys(today: date, duration: Duration) -> list[int]:
    """``month * 100 + day`` of every anniversary whose next occurrence is within the duration
    (Feb 29 counts on Feb 28 of a year without one), as ``reference.next_anniversary`` has it."""
    days = math.ceil(duration.seconds() / 86400)
    keys = set()
    for i in range(min(days, 366)):
        d = today + timedelta(days=i)
        keys.add(d.month * 100 + d.day)
        if (d.month, d.day) == (2, 28) and not _leap(d.year):
            keys.add(229)
    return sorted(keys)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


PLAN_DTYPES: dict[str, dt.DataType] = {
    "string": dt.string,
    "integer": dt.int64,
    "number": dt.float64,
    "boolean": dt.boolean,
    "datetime": TS,
}


# -- the compiler ---------------------------------------------------------------------------
class _Compiler:
    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.as_of = ibis.literal(ctx.as_of.astimezone(UTC), type=TS)
        self._universe: ir.Table | None = None

    # sets
    def universe(self) -> ir.Table:
        """Everyone: ``tables["universe"]`` when the caller keeps such a table (one column
        ``person_key``: it spares NOT and zero-accepting behaviour leaves a scan of all
        events), else every ``person_key >= 0`` of profiles and events."""
        if self._universe is None and "universe" in self.ctx.tables:
            u = self.ctx.table("universe").select("person_key")
            self._universe = u.filter(u.person_key >= 0)
        if self._universe is None:
            p = self.ctx.table("profiles").select("person_key")
            e = self.ctx.table("events").select("person_key")
            both = p.union(e, distinct=True)
            self._universe = both.filter(both.person_key >= 0)
        return self._universe

    def empty(self) -> ir.Table:
        u = self.universe()
        return u.filter(ibis.literal(False))

    def node(self, cond: Condition, path: str) -> ir.Table:
        if isinstance(cond, And):
            # a tag/segment leaf beside an attribute or behaviour leaf needs no check against
            # the universe: the intersection already keeps only persons of the universe
            bounded = any(isinstance(c, Attr | Did | Sequence) for c in cond.all)
            # the attribute leaves that are plain predicates: one scan of profiles for all
            preds = {
                i: pred
                for i, c in enumerate(cond.all)
                if isinstance(c, Attr)
                and not isinstance(pred := self.attr_pred(c, f"{path}.all[{i}]"), ir.Table)
            }
            pos = [
                self.labels(c, bounded=True)
                if bounded and isinstance(c, HasTag | InSegment)
                else self.node(c, f"{path}.all[{i}]")
                for i, c in enumerate(cond.all)
                if not isinstance(c, Not) and i not in preds
            ]
            if preds:
                pos.insert(0, self.persons_where(*preds.values()))
            neg = [
                self.node(c.cond, f"{path}.all[{i}].cond")
                for i, c in enumerate(cond.all)
                if isinstance(c, Not)
            ]
            out = pos[0] if pos else self.universe()
            for t in pos[1:]:
                out = out.intersect(t)
            for t in neg:
                out = out.difference(t)
            return out
        if isinstance(cond, Or):
            parts = [self.node(c, f"{path}.any[{i}]") for i, c in enumerate(cond.any)]
            return parts[0].union(*parts[1:], distinct=True) if len(parts) > 1 else parts[0]
        if isinstance(cond, Not):
            return self.universe().difference(self.node(cond.cond, f"{path}.cond"))
        if isinstance(cond, Attr):
            return self.attr(cond, path)
        if isinstance(cond, HasTag | InSegment):
            return self.labels(cond)
        if isinstance(cond, Did):
            return self.did(cond, path)
        if isinstance(cond, Sequence):
            return self.sequence(cond, path)
        if isinstance(cond, EventIs):
            raise ConditionError("`event is` is for triggers only (the stream path)", path)
        raise ConditionError(f"unknown condition {type(cond).__name__}", path)

    def labels(self, cond: HasTag | InSegment, bounded: bool = False) -> ir.Table:
        """Persons carrying the tag / in the segment; ``bounded``: the caller intersects the
        result with persons of the universe anyway, so the (costly) check is skipped."""
        if isinstance(cond, HasTag):
            t = self.ctx.table("tag_values")
            if cond.values is not None and not cond.values:
                return self.empty()
            pred = t.tag == cond.tag
            if cond.values is not None:
                pred &= t.value.isin(cond.values)
        else:
            t = self.ctx.table("segment_members")
            pred = t.segment == cond.segment
            if cond.bucket is not None:
                pred &= t.bucket == cond.bucket
        keys = t.filter(pred & (t.person_key >= 0)).select("person_key").distinct()
        return (
            keys if bounded else keys.semi_join(self.universe(), "person_key").select("person_key")
        )

    # attributes
    def attr(self, cond: Attr, path: str) -> ir.Table:
        pred = self.attr_pred(cond, path)
        return pred if isinstance(pred, ir.Table) else self.persons_where(pred)

    def persons_where(self, *preds: ir.BooleanValue) -> ir.Table:
        """The persons whose profile satisfies every predicate."""
        p = self.ctx.table("profiles")
        return p.filter(p.person_key >= 0, *preds).select("person_key").distinct()

    def attr_pred(self, cond: Attr, path: str) -> ir.BooleanValue | ir.Table:
        """The leaf as a predicate on ``profiles``, or as persons when it is not one (an
        attribute nobody has, ``is not set``)."""
        kind = self.ctx.attr_types.get(cond.field, "string")
        p = self.ctx.table("profiles")
        column = self.ctx.attr_columns.get(cond.field, cond.field)
        if cond.op in RELATIVE and kind != "datetime":
            raise ConditionError(f"`{cond.op}` needs a datetime attribute", path)
        if cond.op in (Op.contains, Op.starts_with) and kind != "string":
            raise ConditionError(f"`{cond.op}` needs a text attribute", path)
        if column not in p.columns:  # nobody has it
            return self.universe() if cond.op is Op.not_set else self.empty()
        value = typed_attr(p[column], kind)
        if cond.op is Op.not_set:
            return self.universe().difference(self.persons_where(value.notnull()))
        if cond.op is Op.is_set:
            pred = value.notnull()
        elif cond.op in RELATIVE:
            assert isinstance(cond.value, Duration)
            span = timedelta(seconds=cond.value.seconds())
            as_of = self.ctx.as_of.astimezone(UTC)
            if cond.op is Op.in_last:
                pred = (value > ibis.literal(as_of - span, type=TS)) & (value <= self.as_of)
            elif cond.op is Op.in_next:
                pred = (value >= self.as_of) & (value < ibis.literal(as_of + span, type=TS))
            else:
                key = value.month() * 100 + value.day()
                pred = key.isin(anniversary_keys(as_of.date(), cond.value))
        else:
            want: Any
            if isinstance(cond.value, list):
                want = [ref.condition_value(v, kind, path) for v in cond.value]
            else:
                want = ref.condition_value(cond.value, kind, path)
            pred = compare(value, cond.op, want, PLAN_DTYPES.get(kind, dt.string))
        return pred

    # events
    def events(self, name: str, where: list[Compare], window: Window, path: str) -> ir.Table:
        """The events named ``name`` that the window lets count and ``where`` accepts (one
        filter when no join is needed: fewer nodes for Ibis to compile, ~0.1 s a query)."""
        e = self.ctx.table("events")
        preds = [e.person_key >= 0, e.ts <= self.as_of, e.event == name]
        preds += self._window_preds(e, window)
        joined = window.since_event is not None or any(c.field.startswith("item.") for c in where)
        if joined:
            e = e.filter(*preds)
            preds = []
            if window.since_event is not None:
                e = self._since(e, window.since_event)
            if any(c.field.startswith("item.") for c in where):
                e = self._with_item(e)
        preds += [self.filter(e, c, f"{path}.where[{i}]") for i, c in enumerate(where)]
        return e.filter(*preds) if preds else e

    def _window_preds(self, e: ir.Table, window: Window) -> list[ir.BooleanValue]:
        """The window's bounds on ``ts`` (``since`` is a join: ``_since``)."""
        as_of = self.ctx.as_of.astimezone(UTC)
        preds = []
        if window.last is not None:
            low = as_of - timedelta(seconds=window.last.seconds())
            preds.append(e.ts > ibis.literal(low, type=TS))
        if window.start is not None:
            preds.append(e.ts >= ibis.literal(window.start.astimezone(UTC), type=TS))
        if window.end is not None:
            preds.append(e.ts < ibis.literal(window.end.astimezone(UTC), type=TS))
        return preds

    def _since(self, e: ir.Table, anchor: str) -> ir.Table:
        """The events strictly after the person's latest ``anchor`` event."""
        a = self.ctx.table("events")
        a = a.filter(a.person_key >= 0, a.ts <= self.as_of, a.event == anchor)
        anchors = a.group_by("person_key").aggregate(__anchor=a.ts.max())
        j = e.join(anchors, "person_key")
        return j.filter(j.ts > j["__anchor"]).drop("__anchor")

    def _with_item(self, e: ir.Table) -> ir.Table:
        """Adds ``__item``: the properties of the item named by the event's ``item_id`` (of
        several items with that id, the one of the smallest item_type, then source)."""
        items = self.ctx.table("items")
        ranked = items.mutate(
            __rank=ibis.row_number().over(
                group_by=items.item_id, order_by=[items.item_type, items.source]
            )
        )
        first = ranked.filter(ranked["__rank"] == 0).select(
            __iid=ranked.item_id, __item=as_json(ranked.properties)
        )
        e = e.mutate(__item_id=self.prop_text(e, "item_id"))
        j = e.left_join(first, e["__item_id"] == first["__iid"])
        return j.drop("__iid", "__item_id")

    def prop_text(self, e: ir.Table, name: str) -> ir.StringValue:
        """The property as text (``reference.prop_text``). With complete columns a text column
        says it alone; another type's text differs from the JSON's (``12.0`` for ``12``), so
        the JSON says it."""
        typed = PROP_PREFIX + name
        if self.ctx.props_in_columns and typed in e.columns and e[typed].type().is_string():
            return e[typed]
        raw = json_text(as_json(e.properties)[name], self.ctx.spark)
        if typed in e.columns and not self.ctx.props_in_columns:
            return ibis.coalesce(e[typed].cast("string"), raw)
        return raw

    def prop_number(self, e: ir.Table, name: str) -> ir.FloatingValue:
        """The property as a number (``reference.prop_number``); with complete columns from
        the column alone (a text column: the text that reads as a number)."""
        typed = PROP_PREFIX + name
        if self.ctx.props_in_columns and typed in e.columns:
            column = e[typed]
            if column.type().is_numeric():
                return column.cast("float64")
            if column.type().is_string():
                return as_number(column)
        raw = as_number(json_text(as_json(e.properties)[name], self.ctx.spark))
        if typed in e.columns and e[typed].type().is_numeric():
            return ibis.coalesce(e[typed].cast("float64"), raw)
        return raw

    def filter(self, e: ir.Table, cmp: Compare, path: str) -> ir.BooleanValue:
        """An event filter (``reference.filter_matches``)."""
        item = cmp.field.startswith("item.")

        def text() -> ir.StringValue:
            if item:
                return json_text(e["__item"][cmp.field[5:]], self.ctx.spark)
            return self.prop_text(e, cmp.field)

        def number() -> ir.FloatingValue:
            return as_number(text()) if item else self.prop_number(e, cmp.field)

        if cmp.op is Op.not_set:
            return text().isnull()
        if cmp.op is Op.is_set:
            return text().notnull()
        if cmp.op in RELATIVE:
            raise ConditionError(
                f"`{cmp.op}` compares a person's date, not an event property", path
            )
        if cmp.op in (Op.contains, Op.starts_with):
            return compare(text(), cmp.op, ref.prop_text(cmp.value), dt.string)
        if ref.numeric_filter(cmp):
            v = cmp.value
            want = [float(x) for x in v] if isinstance(v, list) else float(v)  # type: ignore[arg-type]
            return compare(number(), cmp.op, want, dt.float64)
        v = cmp.value
        if isinstance(v, list) and None in v:
            return ibis.literal(False)
        if v is None:
            return ibis.literal(False)
        want_text = [ref.prop_text(x) for x in v] if isinstance(v, list) else ref.prop_text(v)
        return compare(text(), cmp.op, want_text, dt.string)

    # behaviour
    def did(self, did: Did, path: str) -> ir.Table:
        e = self.events(did.event, did.where, did.window, path)
        if did.agg == "count":
            m = e.count()
        elif did.agg == "distinct":
            m = self.prop_text(e, did.property or "").nunique()
        else:
            n = self.prop_number(e, did.property or "")
            m = {"sum": n.sum(), "avg": n.mean(), "min": n.min(), "max": n.max()}[did.agg]
        per = e.group_by("person_key").aggregate(__m=m)
        measure = per["__m"]  # a count is never NULL
        if did.agg not in ("count", "distinct"):
            measure = measure.cast("float64")
        if did.agg == "sum":
            measure = measure.fill_null(0.0)
        pred = compare(measure, did.op, float(did.threshold), dt.float64)
        zero_ok = did.agg in ("count", "sum", "distinct") and ref.compare(
            did.op, 0.0, float(did.threshold)
        )
        if zero_ok:  # everyone but the persons with events who fail
            return self.universe().difference(per.filter(~pred).select("person_key"))
        return per.filter(pred).select("person_key")

    def _step(self, step: Step, window: Window, path: str) -> ir.Table:
        e = self.events(step.event, step.where, window, path)
        return e.select("person_key", "ts").distinct()

    def sequence(self, seq: Sequence, path: str) -> ir.Table:
        ref.check_sequence(seq, path)
        if not ref.is_plain(seq):  # strict, counted or referring steps: ``_pattern_persons``
            return _pattern_persons(self, seq, path)
        within = ibis.interval(seconds=seq.within.seconds())
        first = self._step(seq.steps[0], seq.window, f"{path}.steps[0]")
        if seq.then_not is not None:
            last_start = self.ctx.as_of.astimezone(UTC) - timedelta(seconds=seq.within.seconds())
            a = first.filter(first.ts <= ibis.literal(last_start, type=TS))
            b = self._step(seq.then_not, seq.window, f"{path}.then_not")
            b = b.select(__pb=b.person_key, __tb=b.ts)
            hit = a.join(
                b,
                [
                    a.person_key == b["__pb"],
                    b["__tb"] > a.ts,
                    b["__tb"] <= a.ts + within,
                ],
            ).select("person_key", "ts")
            return a.difference(hit).select("person_key").distinct()
        chains = first.select("person_key", __t1=first.ts, __tl=first.ts)
        for k, step in enumerate(seq.steps[1:], start=1):
            s = self._step(step, seq.window, f"{path}.steps[{k}]")
            s = s.select(__pk=s.person_key, __tk=s.ts)
            j = chains.join(
                s,
                [
                    chains.person_key == s["__pk"],
                    s["__tk"] > chains["__tl"],
                    s["__tk"] <= chains["__t1"] + within,
                ],
            )
            chains = j.group_by(["person_key", "__t1"]).aggregate(__tl=j["__tk"].min())
        if seq.excluding is not None:
            x = self._step(seq.excluding, seq.window, f"{path}.excluding")
            x = x.select(__px=x.person_key, __tx=x.ts)
            broken = chains.join(
                x,
                [
                    chains.person_key == x["__px"],
                    x["__tx"] > chains["__t1"],
                    x["__tx"] < chains["__tl"],
                ],
            ).select("person_key", "__t1", "__tl")
            chains = chains.select("person_key", "__t1", "__tl").difference(broken)
        return chains.select("person_key").distinct()


# -- patterns: strict, counted and referring steps; trigger matches (backtests) -----------------
def trigger_matches(
    cond: Condition,
    con: BaseBackend | BatchContext,
    start: datetime,
    end: datetime,
    *,
    tables: Mapping[str, str] | None = None,
) -> ir.Table:
    """The matches a lead rule's trigger makes with ``fired_at`` in ``[start, end)``: one row
    each (``person_key``, ``fired_at``, ``key``, ``evidence``: the evidence events' ids), the
    same as the stream engine reports for the same events (``to_stream.Trigger``). The
    matching policy is sequential per person (a match bars the next from overlapping it), so
    the warehouse filters (``_pattern_events``) and the stream's own automaton reads each
    person's flagged events once (``to_stream.replay``). ``con`` is a backend, or a
    ``BatchContext`` (its tables and typing; its ``as_of`` becomes ``end``)."""
    import pyarrow as pa

    from rapport.conditions.to_stream import replay

    trigger = ref.check_trigger(cond)
    if isinstance(con, BatchContext):
        ctx = BatchContext(
            con.con, end, con.attr_types, con.tables, con.attr_columns, con.props_in_columns
        )
    else:
        ctx = BatchContext(con, end, tables=dict(tables or DEFAULT_TABLES))
    c = _Compiler(ctx)
    within = timedelta(0) if isinstance(trigger, EventIs) else _within(trigger)
    plain, persons = _pattern_events(c, trigger, start - within, "$")
    out: dict[str, list[Any]] = {"person_key": [], "fired_at": [], "key": [], "evidence": []}
    for person, recs in persons:
        for m in replay(plain, recs, end):
            if start <= m.fired_at < end:
                out["person_key"].append(person)
                out["fired_at"].append(m.fired_at)
                out["key"].append(m.key)
                out["evidence"].append([x.id for x in m.evidence])
    schema = pa.schema(
        [
            ("person_key", pa.int64()),
            ("fired_at", pa.timestamp("us", tz="UTC")),
            ("key", pa.string()),
            ("evidence", pa.list_(pa.string())),
        ]
    )
    return ibis.memtable(pa.table(out, schema=schema))


def _within(seq: Sequence) -> timedelta:
    return timedelta(seconds=seq.within.seconds())


def _pattern_events(
    c: _Compiler, cond: EventIs | Sequence, low: datetime | None, path: str
) -> tuple[Condition, list[tuple[int, list[Any]]]]:
    """The events a pattern reads (every event when a step is ``next``) up to ``as_of``, of
    the persons with a first step at or after ``low``, per person in time order, each with one
    flag per step for its plain filters (computed here, with the warehouse's typing) and the
    text of every property a reference compares; and the pattern rewritten to read those
    flags (a step's plain filters become ``__w<k> = true``)."""
    from rapport.conditions.model import Ref
    from rapport.stream.state import EventRec

    if isinstance(cond, EventIs):
        steps: list[tuple[str, Step]] = [("event", Step(event=cond.event, where=cond.where))]
        strict, anchor = False, None
    else:
        steps = [(f"steps[{i}]", s) for i, s in enumerate(cond.steps)]
        steps += [(n, s) for n in ("excluding", "then_not") if (s := getattr(cond, n))]
        strict, anchor = any(s.next for s in cond.steps), cond.window.since_event
    refs = [f for _, s in steps for f in s.where if isinstance(f.value, Ref)]
    fields = sorted({f.field for f in refs} | {f.value.field for f in refs})  # type: ignore[union-attr]
    e = c.ctx.table("events")
    e = e.filter(e.person_key >= 0, e.ts <= c.as_of)
    if not strict:
        names = {s.event for _, s in steps} | ({anchor} if anchor else set())
        e = e.filter(e.event.isin(sorted(names)))
    if any(f.startswith("item.") for f in fields) or any(
        f.field.startswith("item.") for _, s in steps for f in s.where
    ):
        e = c._with_item(e)
    flags: dict[str, ir.BooleanValue] = {}
    for k, (where, s) in enumerate(steps):
        flag = e.event == s.event
        for i, cmp in enumerate(s.where):
            if not isinstance(cmp.value, Ref):
                flag = flag & c.filter(e, cmp, f"{path}.{where}.where[{i}]")
        flags[f"__w{k}"] = flag.fill_null(False)
    texts = {
        f"__v{i}": json_text(e["__item"][f[5:]], c.ctx.spark)
        if f.startswith("item.")
        else c.prop_text(e, f)
        for i, f in enumerate(fields)
    }
    ids = e.event_id if "event_id" in e.columns else ibis.null("string")
    e = e.select("person_key", "ts", "event", event_id=ids, **flags, **texts)
    firsts = e.filter(e["__w0"])
    if low is not None:
        firsts = firsts.filter(firsts.ts >= ibis.literal(low.astimezone(UTC), type=TS))
    e = e.semi_join(firsts.select("person_key").distinct(), "person_key")
    rows = e.order_by(["person_key", "ts", "event_id"]).to_pyarrow().to_pylist()

    def flagged(k: int, s: Step) -> Step:
        kept = [f for f in s.where if isinstance(f.value, Ref)]
        flag = Compare(field=f"__w{k}", op=Op.eq, value=True)
        return s.model_copy(update={"where": [flag, *kept]})

    plain: Condition
    if isinstance(cond, EventIs):
        plain = EventIs(event=cond.event, where=flagged(0, steps[0][1]).where)
    else:
        update: dict[str, Any] = {
            n: flagged(k, s) for k, (n, s) in enumerate(steps) if not n.startswith("steps")
        }
        update["steps"] = [flagged(k, s) for k, (n, s) in enumerate(steps) if n[:6] == "steps["]
        plain = cond.model_copy(update=update)
    persons: list[tuple[int, list[Any]]] = []
    for row in rows:
        if not persons or persons[-1][0] != row["person_key"]:
            persons.append((row["person_key"], []))
        props: dict[str, Any] = {f"__w{k}": row[f"__w{k}"] for k in range(len(steps))}
        item: dict[str, Any] = {}
        for i, name in enumerate(fields):
            if name.startswith("item."):
                item[name[5:]] = row[f"__v{i}"]
            else:
                props[name] = row[f"__v{i}"]
        ts = row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=UTC)
        persons[-1][1].append(EventRec(ts, row["event"], props, item or None, row["event_id"]))
    return plain, persons


def _pattern_persons(c: _Compiler, seq: Sequence, path: str) -> ir.Table:
    """The boolean form of a sequence with strict, counted or referring steps: the persons
    with a first step inside the window, their flagged events read by the stream predicate
    (some chain exists as of ``as_of``); a ``person_key`` memtable for the set operations."""
    import pyarrow as pa

    from rapport.conditions.to_stream import compile as stream
    from rapport.stream.state import PersonState

    as_of, w = c.ctx.as_of, seq.window
    low = as_of - timedelta(seconds=w.last.seconds()) if w.last is not None else w.start
    plain, persons = _pattern_events(c, seq, low, path)
    pred = stream(plain)
    keys = [k for k, recs in persons if pred(PersonState(k, events=recs), as_of)]
    return ibis.memtable(pa.table({"person_key": pa.array(keys, pa.int64())}))
