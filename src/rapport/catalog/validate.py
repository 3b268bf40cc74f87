"""The compiled tracking plan: checks a Segment-shaped message on the collector's hot path.

Compiling turns each event type into a dict of small rule objects and a tuple of required names,
so checking a message is a handful of dict look-ups and ``type(v) in`` tests — no pydantic, no
allocation unless something is wrong. The violation types are the five of Segment Protocols.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from rapport.catalog.models import DataType, EventKind, PlanOut, PropertyOut, is_iso_datetime
from rapport.catalog.store import Stamp

UNPLANNED_EVENT = "unplanned_event"
REQUIRED_MISSING = "required_missing"
DATATYPE_MISMATCH = "datatype_mismatch"
ADDITIONAL_PROPERTIES = "additional_properties"
OTHER = "other"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Violation(msgspec.Struct, frozen=True):
    """One way a message breaks the plan. ``path`` is a JSON path such as ``$.properties.price``."""

    type: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "path": self.path, "message": self.message}


_TYPES: dict[str, frozenset[type]] = {
    DataType.string: frozenset({str}),
    DataType.integer: frozenset({int}),  # type(True) is bool, so booleans never pass as numbers
    DataType.number: frozenset({int, float}),
    DataType.boolean: frozenset({bool}),
    DataType.datetime: frozenset({str}),
}

_ARTICLE = {
    DataType.string: "a string",
    DataType.integer: "an integer",
    DataType.number: "a number",
    DataType.boolean: "a boolean (true/false)",
    DataType.datetime: "an ISO-8601 date-time string",
}


class _Rule:
    """One compiled property: accepted Python types, then optional allowed set and range."""

    __slots__ = (
        "name",
        "data_type",
        "types",
        "is_datetime",
        "allowed",
        "low",
        "high",
        "fast",
        "allowed_text",
    )

    def __init__(self, prop: PropertyOut) -> None:
        self.name = prop.name
        self.data_type = DataType(prop.type)
        self.types = _TYPES[self.data_type]
        self.is_datetime = self.data_type is DataType.datetime
        self.allowed = frozenset(prop.allowed_values) if prop.allowed_values else None
        self.allowed_text = ", ".join(repr(v) for v in prop.allowed_values or ())
        self.low = prop.min
        self.high = prop.max
        plain = not (self.is_datetime or self.allowed) and self.low is None and self.high is None
        #: the types that need no further check: the common case costs one set look-up
        self.fast = self.types if plain else frozenset()


class _Spec:
    """The rules of one event type (its own properties over the common ones)."""

    __slots__ = ("rules", "required", "closed")

    def __init__(self, props: list[PropertyOut], closed: bool) -> None:
        self.rules = {prop.name: _Rule(prop) for prop in props}
        self.required = tuple(prop.name for prop in props if prop.required)
        #: closed specs report undeclared properties; open ones only check the declared
        self.closed = closed


def _path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if _IDENTIFIER.match(key) else f"{prefix}[{key!r}]"


def _describe(value: Any) -> str:
    kind = type(value)
    if kind is bool:
        return f"the boolean {'true' if value else 'false'}"
    if kind is int or kind is float:
        return f"the number {value!r}"
    if kind is str:
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if kind is dict:
        return "an object"
    if kind is list:
        return "an array"
    return kind.__name__


def _check(
    props: Any, spec: _Spec, prefix: str, out: list[Violation], *, enforce_required: bool
) -> None:
    if props is None:
        props = {}
    elif type(props) is not dict:
        out.append(Violation(OTHER, prefix, f"{prefix} must be an object, got {_describe(props)}"))
        return
    rules = spec.rules
    for key, value in props.items():
        rule = rules.get(key)
        if rule is None:
            if spec.closed:
                out.append(
                    Violation(
                        ADDITIONAL_PROPERTIES,
                        _path(prefix, key),
                        f"property '{key}' is not in the tracking plan for this event",
                    )
                )
            continue
        if type(value) in rule.fast:
            continue
        if value is None:  # an explicit null means "not set"
            continue
        if type(value) not in rule.types or (rule.is_datetime and not is_iso_datetime(value)):
            out.append(
                Violation(
                    DATATYPE_MISMATCH,
                    _path(prefix, key),
                    f"'{key}' must be {_ARTICLE[rule.data_type]}, got {_describe(value)}",
                )
            )
            continue
        if rule.allowed is not None and value not in rule.allowed:
            out.append(
                Violation(
                    OTHER,
                    _path(prefix, key),
                    f"'{key}' is {value!r}, not one of: {rule.allowed_text}",
                )
            )
        elif rule.low is not None and value < rule.low:
            out.append(
                Violation(
                    OTHER,
                    _path(prefix, key),
                    f"'{key}' is {value!r}, below the minimum {rule.low:g}",
                )
            )
        elif rule.high is not None and value > rule.high:
            out.append(
                Violation(
                    OTHER,
                    _path(prefix, key),
                    f"'{key}' is {value!r}, above the maximum {rule.high:g}",
                )
            )
    if enforce_required:
        for name in spec.required:
            if props.get(name) is None:
                out.append(
                    Violation(
                        REQUIRED_MISSING,
                        _path(prefix, name),
                        f"required property '{name}' is missing",
                    )
                )


class CompiledPlan:
    """An immutable, precompiled tracking plan; get the current one with ``current_plan``."""

    def __init__(self, plan: PlanOut, stamp: Stamp = ()) -> None:
        self.plan = plan
        self.stamp = stamp
        common = plan.common_properties
        self._kinds = {event.name: EventKind(event.kind).value for event in plan.events}
        self._events = {
            event.name: _Spec(
                [p for p in common if p.name not in {q.name for q in event.properties}]
                + event.properties,
                closed=True,
            )
            for event in plan.events
        }
        #: for events the plan does not know (and page/screen calls): check common ones only
        self._loose = _Spec(common, closed=False)
        self._users = _Spec(plan.user_properties, closed=False)
        self._event_types = {p.name: p.type.value for e in plan.events for p in e.properties}
        self._event_types.update({p.name: p.type.value for p in common})
        self._items: dict[str, dict[str, str]] = {}
        for prop in plan.item_properties:
            self._items.setdefault(prop.item_type or "", {})[prop.name] = prop.type.value
        everything = [*common, *plan.user_properties, *plan.item_properties]
        everything += [p for e in plan.events for p in e.properties]
        self._pii = frozenset(p.name for p in everything if p.pii)

    def check(self, message: dict[str, Any]) -> list[Violation]:
        """Every violation of the plan in a Segment message (track, identify, page, screen...).

        An empty plan (no event type) accepts every event name. Identify traits are checked
        for type, allowed values and range only: traits the plan does not declare are fine.
        """
        out: list[Violation] = []
        kind = message.get("type")
        if kind is None and "event" in message:
            kind = "track"
        if kind == "track":
            name = message.get("event")
            spec = self._events.get(name) if type(name) is str else None
            if spec is None:
                if type(name) is not str or not name:
                    out.append(Violation(OTHER, "$.event", "a track call needs an event name"))
                elif self._events:
                    out.append(
                        Violation(
                            UNPLANNED_EVENT,
                            "$.event",
                            f"event '{name}' is not in the tracking plan",
                        )
                    )
                spec = self._loose
            _check(message.get("properties"), spec, "$.properties", out, enforce_required=True)
        elif kind == "identify":
            _check(message.get("traits"), self._users, "$.traits", out, enforce_required=False)
        elif kind == "page" or kind == "screen":
            _check(
                message.get("properties"), self._loose, "$.properties", out, enforce_required=False
            )
        context = message.get("context")
        if type(context) is dict and "traits" in context:
            _check(context["traits"], self._users, "$.context.traits", out, enforce_required=False)
        return out

    def event_kind(self, name: str) -> str | None:
        """``"user"`` or ``"system"`` for a planned event, None for an unplanned one."""
        return self._kinds.get(name)

    def event_names(self) -> list[str]:
        return list(self._kinds)

    def event_properties(self, name: str) -> dict[str, str]:
        """Name -> data type of what event ``name`` may carry (common properties included)."""
        spec = self._events.get(name, self._loose)
        return {rule.name: rule.data_type.value for rule in spec.rules.values()}

    def declared_event_properties(self) -> dict[str, str]:
        """Name -> data type over every event type: the typed columns of the events table.

        One name has one type across events (the plan refuses conflicting definitions).
        """
        return dict(self._event_types)

    def user_properties(self) -> dict[str, str]:
        return {rule.name: rule.data_type.value for rule in self._users.rules.values()}

    def item_types(self) -> list[str]:
        return sorted(self._items)

    def item_properties(self, item_type: str) -> dict[str, str]:
        return dict(self._items.get(item_type, {}))

    def pii_fields(self) -> set[str]:
        """Names of properties flagged PII in any scope (mask them for non-admin roles)."""
        return set(self._pii)
