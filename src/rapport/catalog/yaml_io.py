"""The tracking plan as one YAML file: export it, review it, import it (merge or replace).

Import validates the whole file before writing anything and reports every error with its YAML
path and line (``events.view_product.properties.price.type: unknown type 'money' (line 12)``).
Properties keep their ids across imports: rows are updated in place, not recreated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, Engine, delete, select, update

from rapport import accounts
from rapport.catalog.models import (
    DataType,
    EventKind,
    EventTypeBody,
    ItemPropertyBody,
    PlanOut,
    PropertyBody,
    PropertyOut,
    Scope,
)
from rapport.catalog.plan import (
    Invalid,
    get_plan,
    insert_property,
    property_values,
    writing,
)
from rapport.db.tables import event_types, properties

HEADER = (
    "# Rapport tracking plan. Import with `rapport plan import FILE [--replace]`.\n"
    "# A property is `name: type` or a mapping with type, description, required,\n"
    "# allowed_values, min, max, pii. Types: string, integer, number, boolean, datetime.\n"
)
SEQ_TAG = "tag:yaml.org,2002:seq"
SECTIONS = ("events", "common_properties", "user_properties", "item_properties")
EVENT_KEYS = ("kind", "description", "properties")
#: the columns an import compares to decide whether a property changed
COMPARED = (
    "name",
    "data_type",
    "description",
    "required",
    "allowed_values",
    "min_value",
    "max_value",
    "pii",
)


class PlanImportError(Invalid):
    """Every problem of a plan file, each prefixed with its YAML path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(self.errors)


class ImportSummary(BaseModel):
    events_created: int = 0
    events_updated: int = 0
    events_deleted: int = 0
    events_unchanged: int = 0
    properties_created: int = 0
    properties_updated: int = 0
    properties_deleted: int = 0
    properties_unchanged: int = 0


# -- export ------------------------------------------------------------------------------------
def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def _prop_yaml(prop: PropertyOut) -> str | dict[str, Any]:
    out: dict[str, Any] = {"type": prop.type.value}
    if prop.description:
        out["description"] = prop.description
    if prop.required:
        out["required"] = True
    if prop.allowed_values is not None:
        out["allowed_values"] = list(prop.allowed_values)
    if prop.min is not None:
        out["min"] = _number(prop.min)
    if prop.max is not None:
        out["max"] = _number(prop.max)
    if prop.pii:
        out["pii"] = True
    return out["type"] if len(out) == 1 else out


def plan_to_dict(plan: PlanOut) -> dict[str, Any]:
    """The YAML document's structure (also handy for JSON)."""
    events: dict[str, Any] = {}
    for event in plan.events:
        entry: dict[str, Any] = {"kind": event.kind.value}
        if event.description:
            entry["description"] = event.description
        entry["properties"] = {p.name: _prop_yaml(p) for p in event.properties}
        events[event.name] = entry
    items: dict[str, dict[str, Any]] = {}
    for prop in plan.item_properties:
        items.setdefault(prop.item_type or "", {})[prop.name] = _prop_yaml(prop)
    return {
        "events": events,
        "common_properties": {p.name: _prop_yaml(p) for p in plan.common_properties},
        "user_properties": {p.name: _prop_yaml(p) for p in plan.user_properties},
        "item_properties": items,
    }


class _Dumper(yaml.SafeDumper):
    """Block mappings, but allowed-value lists on one line: ``[fridge, washer]``."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence(SEQ_TAG, data, flow_style=True)
)


def export_plan(engine: Engine) -> str:
    """The whole plan as YAML; ``import_plan(..., replace=True)`` of it changes nothing."""
    body = yaml.dump(
        plan_to_dict(get_plan(engine)),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return HEADER + body


# -- parsing -----------------------------------------------------------------------------------
Key = tuple[str, str | None, str | None, str]  # (scope, event, item_type, name)


@dataclass
class _Parsed:
    #: event -> (kind, description); None where the file leaves it out
    events: dict[str, tuple[EventKind | None, str | None]] = field(default_factory=dict)
    props: dict[Key, PropertyBody] = field(default_factory=dict)
    paths: dict[Key, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _line_map(
    node: yaml.Node | None, path: str = "", out: dict[str, int] | None = None
) -> dict[str, int]:
    """YAML path -> 1-based line, for error messages."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[child] = key_node.start_mark.line + 1
            _line_map(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}.{index}"
            out[child] = item.start_mark.line + 1
            _line_map(item, child, out)
    return out


class _Reader:
    def __init__(self, lines: dict[str, int]) -> None:
        self.lines = lines
        self.parsed = _Parsed()

    def error(self, path: str, message: str) -> None:
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0]
        where = f" (line {self.lines[probe]})" if probe else ""
        self.parsed.errors.append(f"{path or '(document)'}: {message}{where}")

    def mapping(self, value: Any, path: str, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"{what} must be a mapping, got {type(value).__name__}")
            return {}
        good: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(f"{path}.{key}", f"name {key!r} must be a string (quote it)")
            else:
                good[key] = item
        return good

    def prop(
        self,
        value: Any,
        path: str,
        name: str,
        key: Key,
        item_type: str | None = None,
    ) -> None:
        spec = {"type": value} if isinstance(value, str) else value
        if not isinstance(spec, dict):
            self.error(path, "a property is a type name or a mapping with 'type'")
            return
        data: dict[str, Any] = {"name": name, **spec}
        model: type[PropertyBody] = PropertyBody
        if item_type is not None:
            data["item_type"] = item_type
            model = ItemPropertyBody
        if "type" not in spec:
            self.error(f"{path}.type", "missing (one of: " + ", ".join(DataType) + ")")
            return
        try:
            body = model(**data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(part) for part in err["loc"])
                where = path if loc in ("name", "item_type") else f"{path}.{loc}"
                if loc == "type" and err["type"] == "enum":
                    message = f"unknown type {spec['type']!r} (one of: " + ", ".join(DataType) + ")"
                elif err["type"] == "extra_forbidden":
                    message = (
                        "unknown field (allowed: "
                        + ", ".join(f for f in PropertyBody.model_fields if f != "name")
                        + ")"
                    )
                elif loc == "name":
                    message = (
                        f"name {name!r} must be snake_case (a-z, 0-9, _; starting with a letter)"
                    )
                else:
                    message = str(err["msg"]).removeprefix("Value error, ")
                self.error(where, message)
            return
        self.parsed.props[key] = body
        self.parsed.paths[key] = path

    def document(self, doc: Any) -> _Parsed:
        top = self.mapping(doc, "", "the plan")
        for section in top:
            if section not in SECTIONS:
                self.error(section, "unknown section (expected: " + ", ".join(SECTIONS) + ")")
        for name, entry in self.mapping(top.get("events"), "events", "events").items():
            self.event(name, entry, f"events.{name}")
        common = self.mapping(top.get("common_properties"), "common_properties", "a section")
        for name, value in common.items():
            key: Key = (Scope.event.value, None, None, name)
            self.prop(value, f"common_properties.{name}", name, key)
        users = self.mapping(top.get("user_properties"), "user_properties", "a section")
        for name, value in users.items():
            self.prop(value, f"user_properties.{name}", name, (Scope.user.value, None, None, name))
        items = self.mapping(top.get("item_properties"), "item_properties", "a section")
        for item_type, props in items.items():
            path = f"item_properties.{item_type}"
            for name, value in self.mapping(props, path, "an item type").items():
                key = (Scope.item.value, None, item_type, name)
                self.prop(value, f"{path}.{name}", name, key, item_type=item_type)
        return self.parsed

    def event(self, name: str, entry: Any, path: str) -> None:
        entry = self.mapping(entry, path, "an event")
        for key in entry:
            if key not in EVENT_KEYS:
                self.error(
                    f"{path}.{key}", "unknown field (allowed: " + ", ".join(EVENT_KEYS) + ")"
                )
        try:
            body = EventTypeBody.model_validate(
                {
                    "name": name,
                    "kind": entry.get("kind") or "user",
                    "description": entry.get("description") or "",
                }
            )
        except ValidationError as exc:
            for err in exc.errors():
                loc = str(err["loc"][0])
                if loc == "kind":
                    self.error(f"{path}.kind", f"unknown kind {entry['kind']!r} (user or system)")
                elif loc == "name":
                    self.error(path, f"event name {name!r} must be snake_case")
                else:
                    self.error(f"{path}.{loc}", str(err["msg"]))
            return
        self.parsed.events[name] = (
            body.kind if "kind" in entry else None,
            body.description if "description" in entry else None,
        )
        props_path = f"{path}.properties"
        for prop_name, value in self.mapping(
            entry.get("properties"), props_path, "a section"
        ).items():
            key = (Scope.event.value, name, None, prop_name)
            self.prop(value, f"{props_path}.{prop_name}", prop_name, key)


def parse_plan(text: str) -> _Parsed:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlanImportError([f"(document): not valid YAML{where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise PlanImportError([f"(document): not valid YAML: {exc}"]) from None
    return _Reader(_line_map(node)).document(doc)


# -- import ------------------------------------------------------------------------------------
def _existing(conn: Connection) -> tuple[dict[str, int], dict[Key, tuple[int, dict[str, Any]]]]:
    events = {
        row.name: row.id for row in conn.execute(select(event_types.c.id, event_types.c.name))
    }
    names = {v: k for k, v in events.items()}
    props: dict[Key, tuple[int, dict[str, Any]]] = {}
    for row in conn.execute(select(properties)).mappings():
        event = names.get(row["event_type_id"]) if row["event_type_id"] is not None else None
        key = (row["scope"], event, row["item_type"], row["name"])
        props[key] = (row["id"], {col: row[col] for col in COMPARED})
    return events, props


def _type_clashes(parsed: _Parsed, existing: dict[Key, str], replace: bool) -> list[str]:
    """Event properties of one name with different types, named by their YAML path."""
    final: dict[Key, str] = {} if replace else dict(existing)
    final.update({k: b.type.value for k, b in parsed.props.items() if k[0] == Scope.event.value})
    by_name: dict[str, dict[str, list[Key]]] = {}
    for key, dtype in final.items():
        if key[0] == Scope.event.value:
            by_name.setdefault(key[3], {}).setdefault(dtype, []).append(key)
    errors = []
    for name, types in by_name.items():
        if len(types) < 2:
            continue
        where = "; ".join(
            f"{dtype} on " + ", ".join(k[1] or "all events" for k in keys)
            for dtype, keys in sorted(types.items())
        )
        first = next(parsed.paths[k] for ks in types.values() for k in ks if k in parsed.paths)
        errors.append(
            f"{first}.type: event property '{name}' has different types ({where}); one name "
            "has one type across events because it is one column of the events table"
        )
    return errors


def import_plan(
    engine: Engine, text: str, replace: bool = False, actor: str = "system"
) -> ImportSummary:
    """Load a YAML plan: add and update what the file declares (and, with ``replace``, delete
    what it does not). All or nothing: any error leaves the plan untouched.
    """
    parsed = parse_plan(text)
    if parsed.errors:
        raise PlanImportError(parsed.errors)
    summary = ImportSummary()
    with writing(engine, actor, "plan.import", "plan", replace=replace) as conn:
        events, props = _existing(conn)
        existing_types = {k: v[1]["data_type"] for k, v in props.items()}
        clashes = _type_clashes(parsed, existing_types, replace)
        if clashes:
            raise PlanImportError(clashes)
        now = accounts.now()
        for name, (kind, description) in parsed.events.items():
            if name not in events:
                events[name] = conn.execute(
                    event_types.insert().values(
                        name=name,
                        kind=(kind or EventKind.user).value,
                        description=description or "",
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
                summary.events_created += 1
                continue
            row = conn.execute(select(event_types).where(event_types.c.name == name)).one()
            # Left out: a merge keeps what is there (never turns a system event into a user
            # event by omission); a replace means the defaults.
            new_kind = kind.value if kind else (EventKind.user.value if replace else row.kind)
            new_description = (
                description if description is not None else ("" if replace else row.description)
            )
            if (row.kind, row.description or "") == (new_kind, new_description or ""):
                summary.events_unchanged += 1
                continue
            conn.execute(
                update(event_types)
                .where(event_types.c.id == row.id)
                .values(kind=new_kind, description=new_description or "", updated_at=now)
            )
            summary.events_updated += 1
        for key, body in parsed.props.items():
            scope, event, item_type, _name = key
            event_id = events[event] if event is not None else None
            if key not in props:
                insert_property(conn, body, Scope(scope), event_id, item_type)
                summary.properties_created += 1
                continue
            prop_id, old = props[key]
            new = property_values(body)
            if old == new:
                summary.properties_unchanged += 1
                continue
            conn.execute(
                update(properties).where(properties.c.id == prop_id).values(**new, updated_at=now)
            )
            summary.properties_updated += 1
        if replace:
            gone = [key for key in props if key not in parsed.props]
            ids = [props[key][0] for key in gone]
            if ids:
                conn.execute(delete(properties).where(properties.c.id.in_(ids)))
            summary.properties_deleted = len(ids)
            for name in set(events) - set(parsed.events):
                conn.execute(delete(properties).where(properties.c.event_type_id == events[name]))
                conn.execute(delete(event_types).where(event_types.c.id == events[name]))
                summary.events_deleted += 1
    return summary
