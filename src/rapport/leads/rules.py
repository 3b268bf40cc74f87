"""Lead rules: who is worth contacting now, and why (PRODUCT.md section 4).

A rule is a **trigger** (an ``EventIs`` with where-filters, or a ``Sequence``: ``A then B``,
``A then not B within T``), optional **conditions** on the person (any condition tree: tags,
segments, attributes, behaviour), an optional **suppression** (true: no lead), a **cooldown**
(no second lead of the type for the person within it), a score, a priority and a route.

Each of the three trees is given as JSON (a node with ``kind``) or as text (the condition
language's sentence form) and stored as JSON. Rules are checked before they are saved: errors
name the field (``trigger``, ``conditions``, ``suppression``, ``cooldown``...) and where in it
(a JSON path or a text position), with "did you mean" for unknown names.

**Versions.** A lead records its rule's id and version. Changing the logic (trigger,
conditions, suppression, cooldown) of a rule that has been live makes a new version; a draft
is edited in place (no lead can point at it yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Connection, Engine, delete, insert, select, update

from rapport.accounts import now
from rapport.conditions import text as condition_text
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    And,
    Condition,
    Did,
    Duration,
    EventIs,
    Not,
    Or,
    Sequence,
    from_json,
    to_json,
)
from rapport.conditions.reference import check_sequence
from rapport.conditions.validate import ValidationContext
from rapport.db.tables import lead_routes, lead_rule_versions, lead_rules

STATUSES = ("draft", "live", "paused")
MODES = ("realtime", "offline")
LOGIC = ("trigger", "conditions", "suppression", "cooldown")
DEFAULT_COOLDOWN = Duration(amount=7, unit="days")  # type: ignore[arg-type]
#: schedules that need no cron text (``rapport.jobs`` understands both)
NAMED_SCHEDULES = ("daily", "hourly")

ConditionInput = dict[str, Any] | str


class RuleError(ValueError):
    """Every problem of a rule: ``errors`` is a list of ``{"field", "path", "message"}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{e['field']} {e['path']}: {e['message']}".strip() for e in errors)
        )
        self.errors = errors


class RuleExists(RuleError):
    pass


class RuleNotFound(LookupError):
    def __init__(self, name: str | int) -> None:
        super().__init__(f"no lead rule {name!r}")
        self.name = name


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleIn(_In):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$", description="letters, digits, _ - .")
    lead_type: str = Field(min_length=1, max_length=200, description="what sales will read")
    description: str = ""
    trigger: ConditionInput = Field(description="an event (with where) or a sequence")
    conditions: ConditionInput | None = Field(None, description="on the person")
    suppression: ConditionInput | None = Field(None, description="true: no lead")
    cooldown: dict[str, Any] | str | None = Field(None, description='{"amount": 7, "unit": "days"}')
    score: int = Field(50, ge=0, le=100)
    priority: int = Field(3, ge=1, le=5, description="1 is the most urgent")
    route: str = Field("auto", min_length=1, max_length=100)
    mode: Literal["realtime", "offline"] = "realtime"
    schedule: str | None = Field(None, max_length=100)
    status: Literal["draft", "live", "paused"] = "draft"
    owner: str = ""


class RulePatch(_In):
    lead_type: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    trigger: ConditionInput | None = None
    conditions: ConditionInput | None = None
    suppression: ConditionInput | None = None
    cooldown: dict[str, Any] | str | None = None
    score: int | None = Field(None, ge=0, le=100)
    priority: int | None = Field(None, ge=1, le=5)
    route: str | None = Field(None, min_length=1, max_length=100)
    mode: Literal["realtime", "offline"] | None = None
    schedule: str | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class LeadRule:
    """A saved rule, typed: what ``rapport.leads.records.fire`` and the engines take."""

    id: int
    name: str
    lead_type: str
    version: int
    trigger: Condition
    conditions: Condition | None
    suppression: Condition | None
    cooldown: Duration
    score: int
    priority: int
    route: str
    mode: str
    schedule: str | None
    status: str

    def condition(self) -> Condition:
        """The whole rule as one tree: ``trigger and conditions and not suppression``."""
        parts: list[Condition] = [self.trigger]
        if self.conditions is not None:
            parts.append(self.conditions)
        if self.suppression is not None:
            parts.append(Not(cond=self.suppression))
        return parts[0] if len(parts) == 1 else And(all=parts)


# -- parsing and checking ----------------------------------------------------------------------
def _err(field: str, path: str, message: str) -> dict[str, str]:
    return {"field": field, "path": path, "message": message}


def parse_condition(field: str, value: ConditionInput) -> Condition:
    """A tree from its JSON or text form; ``RuleError`` names the field and where."""
    if isinstance(value, str):
        try:
            return condition_text.parse(value)
        except ConditionError as exc:
            raise RuleError([_err(field, exc.path, exc.message)]) from None
    try:
        return from_json(value)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"][1:])
            errors.append(_err(field, path, str(e["msg"]).removeprefix("Value error, ")))
        raise RuleError(errors) from None


def parse_cooldown(value: dict[str, Any] | str | None) -> Duration:
    """``{"amount": 7, "unit": "days"}`` or ``"7 days"``; zero is refused (it would let the
    same person get the same lead for every matching event)."""
    if value is None:
        return DEFAULT_COOLDOWN
    if isinstance(value, str):
        number, _, unit = value.strip().partition(" ")
        value = {"amount": number, "unit": unit.strip() or "days"}
    try:
        amount = int(value.get("amount", 0))
    except (TypeError, ValueError):
        raise RuleError([_err("cooldown", "$.amount", "must be a whole number")]) from None
    if amount <= 0:
        raise RuleError(
            [
                _err(
                    "cooldown",
                    "$.amount",
                    "must be longer than 0: a cooldown of 0 would push "
                    "the same lead again for every matching event",
                )
            ]
        )
    try:
        return Duration.model_validate({**value, "amount": amount})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise RuleError(
            [_err("cooldown", "$." + ".".join(str(p) for p in e["loc"]), e["msg"])]
        ) from None


def _shape(field: str, cond: Condition, trigger: bool) -> list[dict[str, str]]:
    """Structural checks the plan cannot make: where ``EventIs`` may stand, sequence shapes,
    windows that cannot be met."""
    errors: list[dict[str, str]] = []
    if trigger and not isinstance(cond, EventIs | Sequence):
        errors.append(
            _err(
                field,
                "$",
                f"a trigger is an event (`event view_product where ...`) or a "
                f"sequence (`sequence A then B within 30 minutes`), not `{cond.kind}`",
            )
        )

    def walk(c: Condition, path: str) -> None:
        if isinstance(c, And):
            for i, item in enumerate(c.all):
                walk(item, f"{path}.all[{i}]")
        elif isinstance(c, Or):
            for i, item in enumerate(c.any):
                walk(item, f"{path}.any[{i}]")
        elif isinstance(c, Not):
            walk(c.cond, f"{path}.cond")
        elif isinstance(c, EventIs) and not trigger:
            errors.append(
                _err(
                    field,
                    path,
                    "`event ...` (the current event) belongs in the trigger; "
                    "use `did ...` for the person's past behaviour",
                )
            )
        elif isinstance(c, Sequence):
            try:
                check_sequence(c, path)
            except ConditionError as exc:
                errors.append(_err(field, exc.path, exc.message))
            last = c.window.last
            if last is not None and c.within.seconds() > last.seconds():
                errors.append(
                    _err(
                        field,
                        path + ".within",
                        f"`within {c.within.amount} {c.within.unit}`"
                        f" is longer than the window it sits in (last {last.amount} "
                        f"{last.unit}): the sequence could never complete inside it",
                    )
                )
        elif isinstance(c, Did):
            w = c.window
            if w.start is not None and w.end is not None and w.start >= w.end:
                errors.append(_err(field, path + ".window", "the window starts after it ends"))

    walk(cond, "$")
    return errors


def check_schedule(mode: str, schedule: str | None) -> list[dict[str, str]]:
    if mode == "offline" and not schedule:
        return [
            _err(
                "schedule",
                "$",
                "an offline rule needs a schedule: daily, hourly or cron text such as `0 8 * * *`",
            )
        ]
    if schedule and schedule not in NAMED_SCHEDULES and not croniter.is_valid(schedule):
        return [
            _err(
                "schedule",
                "$",
                f"{schedule!r} is not daily, hourly or cron text "
                "(minute hour day month weekday, e.g. `0 8 * * *`)",
            )
        ]
    return []


def checked_definition(values: dict[str, Any], ctx: ValidationContext | None) -> dict[str, Any]:
    """The stored ``definition`` of ``values`` (trigger/conditions/suppression/cooldown, JSON
    or text), or ``RuleError`` listing every problem, against ``ctx`` when given."""
    errors: list[dict[str, str]] = []
    definition: dict[str, Any] = {}
    for field in ("trigger", "conditions", "suppression"):
        raw = values.get(field)
        if raw is None or raw == "" or raw == {}:
            if field == "trigger":
                errors.append(_err("trigger", "$", "a rule needs a trigger"))
            continue
        try:
            cond = parse_condition(field, raw)
        except RuleError as exc:
            errors += exc.errors
            continue
        errors += _shape(field, cond, trigger=field == "trigger")
        if ctx is not None:
            errors += [_err(field, e.path, e.message) for e in ctx.check(cond)]
        definition[field] = to_json(cond)
    try:
        definition["cooldown"] = parse_cooldown(values.get("cooldown")).model_dump(mode="json")
    except RuleError as exc:
        errors += exc.errors
    errors += check_schedule(values.get("mode") or "realtime", values.get("schedule"))
    if errors:
        raise RuleError(errors)
    return definition


def texts(definition: dict[str, Any]) -> dict[str, str | None]:
    """The text form of each tree (what the editor shows)."""
    out: dict[str, str | None] = {}
    for field in ("trigger", "conditions", "suppression"):
        value = definition.get(field)
        out[field] = condition_text.to_text(from_json(value)) if value else None
    return out


def check_route(conn: Connection, route: str) -> None:
    """``auto`` or the name of a route (``rapport.leads.routing``)."""
    if route == "auto":
        return
    names = list(conn.execute(select(lead_routes.c.name).order_by(lead_routes.c.name)).scalars())
    if route not in names:
        known = ", ".join(names) or "none yet"
        raise RuleError(
            [_err("route", "$", f"no route named {route!r} (routes: {known}); or `auto`")]
        )


# -- the store --------------------------------------------------------------------------------
def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("created_at", "updated_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    out["text"] = texts(out["definition"])
    return out


def typed(row: Any) -> LeadRule:
    d = row.definition
    return LeadRule(
        id=row.id,
        name=row.name,
        lead_type=row.lead_type,
        version=row.version,
        trigger=from_json(d["trigger"]),
        conditions=from_json(d["conditions"]) if d.get("conditions") else None,
        suppression=from_json(d["suppression"]) if d.get("suppression") else None,
        cooldown=Duration.model_validate(d.get("cooldown") or DEFAULT_COOLDOWN.model_dump()),
        score=row.score,
        priority=row.priority,
        route=row.route,
        mode=row.mode,
        schedule=row.schedule,
        status=row.status,
    )


def _row(conn: Connection, key: str | int) -> Any:
    column = lead_rules.c.id if isinstance(key, int) else lead_rules.c.name
    row = conn.execute(select(lead_rules).where(column == key)).first()
    if row is None:
        raise RuleNotFound(key)
    return row


def load(conn: Connection, key: str | int) -> LeadRule:
    """The typed rule by id or name (for the engines)."""
    return typed(_row(conn, key))


def live_rules(conn: Connection, mode: str | None = None) -> list[LeadRule]:
    query = select(lead_rules).where(lead_rules.c.status == "live").order_by(lead_rules.c.id)
    if mode is not None:
        query = query.where(lead_rules.c.mode == mode)
    return [typed(r) for r in conn.execute(query)]


def list_rules(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_public(r) for r in conn.execute(select(lead_rules).order_by(lead_rules.c.name))]


def get_rule(engine: Engine, key: str | int) -> dict[str, Any]:
    with engine.connect() as conn:
        return _public(_row(conn, key))


def versions(engine: Engine, key: str | int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rule_id = _row(conn, key).id
        rows = conn.execute(
            select(lead_rule_versions)
            .where(lead_rule_versions.c.rule_id == rule_id)
            .order_by(lead_rule_versions.c.version.desc())
        )
        return [{**dict(r._mapping), "created_at": r.created_at.isoformat()} for r in rows]


def create_rule(
    engine: Engine, body: RuleIn, ctx: ValidationContext | None, actor: str = ""
) -> dict[str, Any]:
    values = body.model_dump()
    definition = checked_definition(values, ctx)
    stamp = now()
    with engine.begin() as conn:
        check_route(conn, body.route)
        if conn.execute(select(lead_rules.c.id).where(lead_rules.c.name == body.name)).first():
            raise RuleExists([_err("name", "$", f"a lead rule named {body.name!r} exists")])
        for field in LOGIC:
            values.pop(field)
        rule_id = conn.execute(
            insert(lead_rules).values(
                **values, definition=definition, version=1, created_at=stamp, updated_at=stamp
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        conn.execute(
            insert(lead_rule_versions).values(
                rule_id=rule_id,
                version=1,
                definition=definition,
                created_at=stamp,
                created_by=actor,
            )
        )
    return get_rule(engine, body.name)


def update_rule(
    engine: Engine,
    key: str | int,
    patch: RulePatch,
    ctx: ValidationContext | None,
    actor: str = "",
) -> dict[str, Any]:
    """Apply ``patch``; a logic change of a rule that has been live adds a version."""
    changes = patch.model_dump(exclude_unset=True)
    with engine.begin() as conn:
        row = _row(conn, key)
        if changes.get("route"):
            check_route(conn, changes["route"])
        values: dict[str, Any] = {k: v for k, v in changes.items() if k not in LOGIC}
        merged = {**row.definition, "mode": row.mode, "schedule": row.schedule}
        merged.update(changes)
        definition = checked_definition(merged, ctx)
        stamp = now()
        if definition != row.definition:
            values["definition"] = definition
            if row.status == "draft":
                conn.execute(
                    update(lead_rule_versions)
                    .where(
                        lead_rule_versions.c.rule_id == row.id,
                        lead_rule_versions.c.version == row.version,
                    )
                    .values(definition=definition, created_at=stamp, created_by=actor)
                )
            else:
                values["version"] = row.version + 1
                conn.execute(
                    insert(lead_rule_versions).values(
                        rule_id=row.id,
                        version=row.version + 1,
                        definition=definition,
                        created_at=stamp,
                        created_by=actor,
                    )
                )
        if values:
            conn.execute(
                update(lead_rules)
                .where(lead_rules.c.id == row.id)
                .values(**values, updated_at=stamp)
            )
    return get_rule(engine, row.id)


def set_status(engine: Engine, key: str | int, status: str) -> dict[str, Any]:
    """``live`` (activate), ``paused`` or back to ``draft`` (only if it never went live)."""
    if status not in STATUSES:
        raise RuleError([_err("status", "$", f"{status!r} is not one of {', '.join(STATUSES)}")])
    with engine.begin() as conn:
        row = _row(conn, key)
        if status == "draft" and row.status != "draft":
            raise RuleError(
                [_err("status", "$", "a rule that has been live cannot go back to draft: pause it")]
            )
        conn.execute(
            update(lead_rules)
            .where(lead_rules.c.id == row.id)
            .values(status=status, updated_at=now())
        )
    return get_rule(engine, row.id)


def delete_rule(engine: Engine, key: str | int) -> None:
    """The rule and its versions; its leads stay (their rule id becomes empty)."""
    with engine.begin() as conn:
        row = _row(conn, key)
        conn.execute(delete(lead_rules).where(lead_rules.c.id == row.id))
