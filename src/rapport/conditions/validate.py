"""Check a condition against the tracking plan, the tags, the segments and the profile.

A tree can be well formed and still name an event nobody tracks (``view_prodcut``), a property
the event does not carry (``prise``) or compare an integer with text. ``validate`` lists every
such problem at once, each a ``ConditionError`` with the JSON path of the offending field and,
when a known name is close, what was probably meant. ``context(ws)`` gathers what it checks
against from a workspace.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from rapport.catalog import CompiledPlan, current_plan
from rapport.catalog.models import is_iso_datetime
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    RELATIVE,
    UNARY,
    And,
    Attr,
    Compare,
    Condition,
    Did,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Ref,
    Sequence,
    Step,
    Window,
)
from rapport.db.tables import segments as segments_table
from rapport.db.tables import tags as tags_table

if TYPE_CHECKING:
    from rapport.workspace import Workspace

NUMERIC = frozenset({"integer", "number"})
#: the stages of the built-in lifecycle segmentation, defined here once: conditions sit below
#: segments, and ``rapport.segments.lifecycle`` imports them from here
LIFECYCLE_STAGES = ("new_not_activated", "retained", "silent", "lost")
#: columns of ``profiles`` that are not attributes
PROFILE_FIXED = frozenset({"person_key", "updated_at"})

_ARTICLE = {
    "string": "text",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true/false)",
    "datetime": "a date/time (2026-01-01 or 2026-01-01T08:00:00Z)",
}


@dataclass(frozen=True)
class ValidationContext:
    """What a condition may name: the plan, tag names, segment -> bucket names, attributes."""

    plan: CompiledPlan
    tags: set[str] = field(default_factory=set)
    segments: dict[str, set[str]] = field(default_factory=dict)
    attrs: dict[str, str] = field(default_factory=dict)

    def check(self, cond: Condition) -> list[ConditionError]:
        return validate(cond, self.plan, tags=self.tags, segments=self.segments, attrs=self.attrs)


def validate(
    cond: Condition,
    plan: CompiledPlan,
    *,
    tags: set[str],
    segments: dict[str, set[str]],
    attrs: dict[str, str],
) -> list[ConditionError]:
    """Every problem of ``cond`` against the plan and the workspace's names, in tree order.

    ``attrs`` maps a profile attribute to its plan type (string|integer|number|boolean|
    datetime). A plan without event types accepts any event, like the collector does.
    """
    checker = _Checker(plan, tags, segments, attrs)
    checker.cond(cond, "$")
    return checker.errors


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return f'the text "{value}"'


def _fits(value: Any, data_type: str) -> bool:
    if value is None:
        return True
    if data_type == "string":
        return isinstance(value, str)
    if data_type == "integer":
        if isinstance(value, float):
            return math.isfinite(value) and value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if data_type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if data_type == "boolean":
        return isinstance(value, bool)
    if data_type == "datetime":
        return isinstance(value, str) and is_iso_datetime(value)
    return True


class _Checker:
    def __init__(
        self,
        plan: CompiledPlan,
        tags: set[str],
        segments: dict[str, set[str]],
        attrs: dict[str, str],
    ) -> None:
        self.plan = plan
        self.events = set(plan.event_names())
        self.items: dict[str, str] = {}
        for item_type in plan.item_types():
            for name, data_type in plan.item_properties(item_type).items():
                self.items.setdefault(name, data_type)
        self.tags = tags
        self.segments = segments
        self.attrs = attrs
        self.errors: list[ConditionError] = []

    def error(self, message: str, path: str) -> None:
        self.errors.append(ConditionError(message, path))

    # the tree
    def cond(self, cond: Condition, path: str) -> None:
        if isinstance(cond, And):
            for index, item in enumerate(cond.all):
                self.cond(item, f"{path}.all[{index}]")
        elif isinstance(cond, Or):
            for index, item in enumerate(cond.any):
                self.cond(item, f"{path}.any[{index}]")
        elif isinstance(cond, Not):
            self.cond(cond.cond, f"{path}.cond")
        elif isinstance(cond, Attr):
            self.attr(cond, path)
        elif isinstance(cond, HasTag):
            if cond.tag not in self.tags:
                self.error(
                    f"unknown tag `{cond.tag}`{_suggest(cond.tag, self.tags)}", path + ".tag"
                )
        elif isinstance(cond, InSegment):
            self.segment(cond, path)
        elif isinstance(cond, Did):
            self.did(cond, path)
        elif isinstance(cond, Sequence):
            named: dict[str, str] = {}  # step name -> its event
            for index, step in enumerate(cond.steps):
                self.step(step, f"{path}.steps[{index}]", named)
                if step.alias is not None:
                    named[step.alias] = step.event
            if cond.excluding is not None:
                self.step(cond.excluding, f"{path}.excluding", named)
            if cond.then_not is not None:
                self.step(cond.then_not, f"{path}.then_not", named)
            self.window(cond.window, path + ".window")
        elif isinstance(cond, EventIs):
            self.step(Step(event=cond.event, where=cond.where), path)

    def attr(self, cond: Attr, path: str) -> None:
        data_type = self.attrs.get(cond.field)
        if data_type is None:
            hint = _suggest(cond.field, self.attrs)
            self.error(f"unknown attribute `{cond.field}`{hint}", path + ".field")
            return
        self.compare(cond, data_type, f"`{cond.field}`", path)

    def segment(self, cond: InSegment, path: str) -> None:
        buckets = self.segments.get(cond.segment)
        if buckets is None:
            hint = _suggest(cond.segment, self.segments)
            self.error(f"unknown segment `{cond.segment}`{hint}", path + ".segment")
            return
        if cond.bucket is None or cond.bucket in buckets:
            return
        if not buckets:
            message = f"`{cond.segment}` is an audience: it has no buckets"
        else:
            message = f"unknown bucket `{cond.bucket}` of segment `{cond.segment}`"
            message += (
                _suggest(cond.bucket, buckets) or f" (its buckets: {', '.join(sorted(buckets))})"
            )
        self.error(message, path + ".bucket")

    # behaviour
    def event(self, event: str, path: str) -> bool:
        """Whether ``event`` is planned (an empty plan accepts any event)."""
        if not self.events or event in self.events:
            return True
        self.error(f"unknown event `{event}`{_suggest(event, self.events)}", path)
        return False

    def prop_type(self, event: str, name: str, path: str) -> str | None:
        """The declared type of event property (or ``item.<prop>``) ``name``; None if unknown
        (and then an error says so) or not checkable (the event is unknown)."""
        if name.startswith("item."):
            prop = name.removeprefix("item.")
            if prop in self.items:
                return self.items[prop]
            if self.items:
                self.error(f"unknown item property `{prop}`{_suggest(prop, self.items)}", path)
            return None
        if not self.events or event not in self.events:
            return None
        known = self.plan.event_properties(event)
        if name in known:
            return known[name]
        self.error(f"unknown property `{name}` on event {event}{_suggest(name, known)}", path)
        return None

    def step(self, step: Step, path: str, named: dict[str, str] | None = None) -> None:
        if not self.event(step.event, path + ".event"):
            return
        for index, where in enumerate(step.where):
            here = f"{path}.where[{index}]"
            data_type = self.prop_type(step.event, where.field, here + ".field")
            if isinstance(where.value, Ref):
                self.ref(where, where.value, data_type, named or {}, here)
            elif data_type is not None:
                self.compare(where, data_type, f"`{where.field}`", here)

    def ref(
        self, where: Compare, ref: Ref, data_type: str | None, named: dict[str, str], path: str
    ) -> None:
        """A step reference: the named step's event carries the property, and the two sides
        are alike (numbers with numbers, other types with their own)."""
        event = named.get(ref.alias)
        if event is None:  # the model refuses this; kept for trees built around it
            self.error(f"`{ref.ref}` refers to no earlier step", path + ".value")
            return
        if self.events and event not in self.events:
            return
        other = self.prop_type(event, ref.field, path + ".value")
        if data_type is None or other is None:
            return
        if (data_type in NUMERIC) != (other in NUMERIC) or (
            data_type not in NUMERIC and data_type != other
        ):
            self.error(
                f"`{where.field}` is {data_type} but `{ref.ref}` is {other}: a reference "
                "compares like with like",
                path + ".value",
            )

    def did(self, cond: Did, path: str) -> None:
        self.step(Step(event=cond.event, where=cond.where), path)
        self.window(cond.window, path + ".window")
        if cond.property is None or (self.events and cond.event not in self.events):
            return
        data_type = self.prop_type(cond.event, cond.property, path + ".property")
        aggregated = cond.agg in ("sum", "avg", "min", "max")
        if data_type is not None and aggregated and data_type not in NUMERIC:
            self.error(
                f"`{cond.agg}` needs a numeric property; `{cond.property}` is {data_type}",
                path + ".property",
            )

    def window(self, window: Window, path: str) -> None:
        if window.since_event is not None:
            self.event(window.since_event, path + ".since_event")

    # values
    def compare(self, cond: Compare, data_type: str, what: str, path: str) -> None:
        op, value = cond.op, cond.value
        if op in UNARY:
            return
        if op in RELATIVE:
            if data_type != "datetime":
                self.error(f"`{op.value}` needs a date/time; {what} is {data_type}", path + ".op")
            return
        if op in (Op.contains, Op.starts_with) and data_type != "string":
            self.error(f"`{op.value}` needs text; {what} is {data_type}", path + ".op")
            return
        values = value if isinstance(value, list) else [value]
        for index, one in enumerate(values):
            if not _fits(one, data_type):
                at = f"{path}.value[{index}]" if isinstance(value, list) else path + ".value"
                self.error(
                    f"{what} is {_ARTICLE.get(data_type, data_type)}, not {_describe(one)}", at
                )


# -- from a workspace --------------------------------------------------------------------------
def context(ws: Workspace) -> ValidationContext:
    """The plan, tags, segments (with buckets) and profile attributes of ``ws``.

    Attributes are the plan's user properties (typed) and the columns of the ``profiles``
    table (text); a warehouse another process holds only leaves out the latter.
    """
    plan = current_plan(ws.db)
    with ws.db.connect() as conn:
        tag_names = {str(name) for name in conn.execute(select(tags_table.c.name)).scalars()}
        rows = conn.execute(
            select(segments_table.c.name, segments_table.c.kind, segments_table.c.definition)
        ).all()
    segments = {str(row.name): _buckets(row.kind, row.definition or {}) for row in rows}
    attrs = {column: "string" for column in _profile_columns(ws)}
    attrs.update(plan.user_properties())
    return ValidationContext(plan, tag_names, segments, attrs)


def _buckets(kind: str, definition: dict[str, Any]) -> set[str]:
    names = {str(b["name"]) for b in definition.get("buckets") or [] if isinstance(b, dict)}
    if kind == "lifecycle" and not names:
        names = set(LIFECYCLE_STAGES)
    if definition.get("other"):
        names.add("other")
    return names


#: warehouse file -> (monotonic time, profile columns): validation runs while a user types,
#: and the warehouse may be held by the loader for a moment
_columns_cache: dict[str, tuple[float, list[str]]] = {}
COLUMNS_TTL_S = 30.0


def _profile_columns(ws: Workspace) -> list[str]:
    from rapport.warehouse import WarehouseBusy

    key = str(ws.settings.warehouse_file)
    cached = _columns_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < COLUMNS_TTL_S:
        return cached[1]
    try:
        with ws.warehouse.connect(wait=1.0) as con:
            columns = []
            if "profiles" in con.list_tables():
                columns = [c for c in con.table("profiles").columns if c not in PROFILE_FIXED]
    except WarehouseBusy:
        return cached[1] if cached is not None else []
    _columns_cache[key] = (time.monotonic(), columns)
    return columns
