"""A journey's definition and its checks (done on save: errors name the node).

```json
{"entry": {"event": "register"} | "register where ...",   # an ``EventIs`` (JSON or text)
          | {"schedule": "daily at 09:00", "audience": "vip"},  # members enter (``jobs``)
 "entry_rule": "once" | "every_time" | {"once_per": {"amount": 30, "unit": "days"}},
 "goal": {"event": "order_paid"},                           # optional: leaving on it
 "nodes": [{"id": "w1", "kind": "wait", "params": {"duration": "1 days"}, "next": "b1"}, ...]}
```

The first node is where a person starts. ``next`` is a node id, or for labelled exits a
mapping: ``branch`` {yes, no}, ``wait`` until an event {event, timeout}, ``split`` {arm: id}.
A missing ``next`` ends the journey there.
A wait is a ``duration``, an event ``until`` with a ``timeout``, or the person's own
``cycle`` (the median interval between their events of that name, with a fallback).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rapport.conditions.model import Condition, EventIs
from rapport.conditions.validate import ValidationContext
from rapport.jobs.schedule import ScheduleError
from rapport.jobs.schedule import parse as parse_schedule
from rapport.leads.rules import RuleError, parse_condition, parse_cooldown

#: how far back a wait's purchase cycle looks at the person's events (and the rule keeps them)
CYCLE_LOOKBACK = timedelta(days=365)
#: the system event a scheduled entry's job emits per audience member (``journeys.jobs``)
SCHEDULED = "journey_scheduled"
SCHEDULED_PLAN = f"""
events:
  {SCHEDULED}:
    kind: system
    description: A scheduled journey entry let a member of its audience in (emitted by Rapport).
    properties:
      journey:
        type: string
        required: true
      audience: string
      person: integer
"""
KINDS = ("wait", "branch", "split", "send", "tag", "lead", "webhook", "exit")
STATUSES = ("draft", "live", "paused")
#: the labels a node's ``next`` mapping must have, per kind (others take a plain id)
LABELS = {"branch": ("yes", "no")}


class JourneyError(ValueError):
    """Every problem of a definition: ``errors`` is a list of ``{"node", "message"}``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['node']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str
    params: dict[str, Any]
    next: dict[str, str]  # label -> node id ("" label: the only exit)

    def after(self, label: str = "") -> str | None:
        return self.next.get(label)


@dataclass(frozen=True, slots=True)
class Cycle:
    """A wait as long as the person's own cycle: the median interval between their
    ``event`` events (``CYCLE_LOOKBACK``), ``fallback`` with fewer than ``min_events``."""

    event: str
    fallback: timedelta
    min_events: int


@dataclass(frozen=True, slots=True)
class Journey:
    """A saved journey, typed: what the stream rule runs."""

    id: int
    name: str
    status: str
    entry: EventIs
    entry_rule: str  # once | every_time | once_per
    period: timedelta | None
    goal: EventIs | None
    nodes: dict[str, Node]
    first: str
    #: parsed per node: a wait's length / timeout, a wait's event, a branch's condition,
    #: a wait on the person's own cycle
    durations: dict[str, timedelta]
    until: dict[str, EventIs]
    conditions: dict[str, Condition]
    cycles: dict[str, Cycle]
    #: a scheduled entry (``{"schedule", "audience"}``): its job's schedule text and audience
    schedule: str | None = None
    audience: str | None = None


def _err(node: str, message: str) -> dict[str, str]:
    return {"node": node, "message": message}


def _event(field: str, raw: Any, errors: list[dict[str, str]]) -> EventIs | None:
    if isinstance(raw, dict) and "kind" not in raw:
        raw = {"kind": "event", **raw}
    try:
        cond = parse_condition(field, raw)
    except RuleError as exc:
        errors += [_err(field, f"{e['path']} {e['message']}") for e in exc.errors]
        return None
    if not isinstance(cond, EventIs):
        errors.append(_err(field, "must be one event with filters ({'event': ..., 'where': ...})"))
        return None
    return cond


def _duration(node: str, raw: Any, errors: list[dict[str, str]]) -> timedelta | None:
    try:
        return timedelta(seconds=parse_cooldown(raw).seconds())
    except RuleError as exc:
        errors += [_err(node, f"duration {e['message']}") for e in exc.errors]
        return None


def _next(raw: Any) -> dict[str, str]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        return {"": raw}
    return {str(k): str(v) for k, v in dict(raw).items()}


def parse(
    jid: int,
    name: str,
    status: str,
    definition: dict[str, Any],
    ctx: ValidationContext | None = None,
    channels: dict[str, str] | None = None,
    lead_rules: set[str] | None = None,
    tags: dict[str, dict[str, Any]] | None = None,
) -> Journey:
    """The typed journey, or ``JourneyError`` with every problem. ``ctx`` checks event names
    and conditions, ``channels`` (name -> kind) the send and webhook channels, ``lead_rules``
    the lead nodes' rules, ``tags`` (name -> tag row) the tag nodes' manual tags and values;
    each is skipped when None."""
    errors: list[dict[str, str]] = []
    raw_entry, schedule, audience = definition.get("entry"), None, None
    if isinstance(raw_entry, dict) and "schedule" in raw_entry:
        schedule, audience = _scheduled(raw_entry, errors)
        raw_entry = {"event": SCHEDULED, "where": [{"field": "journey", "op": "=", "value": name}]}
    entry = _event("entry", raw_entry, errors)
    goal = _event("goal", definition["goal"], errors) if definition.get("goal") else None
    rule = definition.get("entry_rule", "once")
    period = None
    if isinstance(rule, dict) and "once_per" in rule:
        period = _duration("entry_rule", rule["once_per"], errors)
        rule = "once_per"
    elif rule not in ("once", "every_time"):
        errors.append(_err("entry_rule", "must be once, every_time or {'once_per': duration}"))
    nodes: dict[str, Node] = {}
    for i, raw in enumerate(definition.get("nodes") or []):
        nid = str(raw.get("id") or f"#{i}")
        if nid in nodes:
            errors.append(_err(nid, "two nodes have this id"))
        kind = raw.get("kind")
        if kind not in KINDS:
            errors.append(_err(nid, f"unknown kind {kind!r} (one of {', '.join(KINDS)})"))
        nodes[nid] = Node(nid, str(kind), dict(raw.get("params") or {}), _next(raw.get("next")))
    if not nodes:
        errors.append(_err("nodes", "a journey needs at least one node"))
    durations: dict[str, timedelta] = {}
    until: dict[str, EventIs] = {}
    conditions: dict[str, Condition] = {}
    cycles: dict[str, Cycle] = {}
    for node in nodes.values():
        _check_node(node, nodes, durations, until, conditions, errors, channels, lead_rules)
        if node.kind == "tag" and tags is not None and node.params.get("tag"):
            errors += _check_tag(node, tags)
        cycle = _cycle(node, errors) if node.kind == "wait" and "cycle" in node.params else None
        if cycle is not None:
            cycles[node.id] = cycle
    if ctx is not None:
        cycle_events = [(n, EventIs(event=c.event)) for n, c in cycles.items()]
        checked = [("entry", entry), ("goal", goal), *until.items(), *conditions.items(),
                   *cycle_events]  # fmt: skip
        for where, cond in checked:
            if cond is not None:
                errors += [_err(where, f"{e.path} {e.message}") for e in ctx.check(cond)]
    errors += _cycles(nodes)
    if errors or entry is None:
        raise JourneyError(errors)
    return Journey(
        jid, name, status, entry, rule, period, goal, nodes, next(iter(nodes)),
        durations, until, conditions, cycles, schedule, audience,
    )  # fmt: skip


def _check_node(
    node: Node,
    nodes: dict[str, Node],
    durations: dict[str, timedelta],
    until: dict[str, EventIs],
    conditions: dict[str, Condition],
    errors: list[dict[str, str]],
    channels: dict[str, str] | None,
    lead_rules: set[str] | None,
) -> None:
    p, nid = node.params, node.id
    for label, target in node.next.items():
        if target not in nodes:
            errors.append(_err(nid, f"next{'.' + label if label else ''}: no node {target!r}"))
    labels: tuple[str, ...] = LABELS.get(node.kind, ("",))
    if node.kind == "wait" and "cycle" not in p:  # a cycle: ``_cycle``
        key = "timeout" if "until" in p else "duration"
        if (d := _duration(nid, p.get(key), errors)) is not None:
            durations[nid] = d
        if "until" in p:
            labels = ("event", "timeout")
            if (ev := _event(nid, p["until"], errors)) is not None:
                until[nid] = ev
    elif node.kind == "branch":
        try:
            conditions[nid] = parse_condition(nid, p.get("condition") or "")
        except RuleError as exc:
            errors += [_err(nid, f"condition {e['path']} {e['message']}") for e in exc.errors]
    elif node.kind == "split":
        shares = p.get("shares") or {}
        labels = tuple(shares)
        if not shares or any(not isinstance(v, int) or v <= 0 for v in shares.values()):
            errors.append(_err(nid, "shares: e.g. {'a': 50, 'b': 50} (whole numbers > 0)"))
    elif node.kind in ("send", "webhook"):
        channel = p.get("channel")
        kind = (channels or {}).get(channel or "")
        if channels is not None and kind is None:
            errors.append(_err(nid, f"unknown delivery channel {channel!r}"))
        elif node.kind == "webhook" and channels is not None and kind != "webhook":
            errors.append(_err(nid, f"channel {channel!r} is a {kind} channel, not a webhook"))
        if node.kind == "send" and not isinstance(p.get("content"), dict):
            errors.append(_err(nid, "content: field -> template, e.g. {'text': 'Hi {{ name }}'}"))
    elif node.kind == "tag" and not (p.get("tag") and p.get("value")):
        errors.append(_err(nid, "tag and value are required"))
    elif node.kind == "lead":
        rule = p.get("rule")
        if not rule or (lead_rules is not None and rule not in lead_rules):
            errors.append(_err(nid, f"rule: no lead rule {rule!r}"))
    if node.kind == "exit":
        labels = ()
    if node.next and set(node.next) - set(labels) and node.kind != "exit":
        want = ", ".join(labels) if labels != ("",) else "one node id"
        errors.append(_err(nid, f"next must name {want}"))
    elif node.kind == "exit" and node.next:
        errors.append(_err(nid, "an exit has no next"))


def _check_tag(node: Node, tags: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """A tag node sets a value of an existing manual tag, one its definition allows."""
    from rapport.tags.definitions import TagError
    from rapport.tags.manual import check_value

    name = str(node.params["tag"])
    tag = tags.get(name)
    if tag is None:
        return [_err(node.id, f"tag: no tag {name!r} (create it as a manual tag first)")]
    if tag["kind"] != "manual":
        return [_err(node.id, f"tag: {name!r} is a {tag['kind']} tag; a journey sets manual tags")]
    try:
        check_value(tag, node.params.get("value"))
    except TagError as exc:
        return [_err(node.id, f"{exc.field}: {exc.message}")]
    return []


def _scheduled(raw: dict[str, Any], errors: list[dict[str, str]]) -> tuple[str, str]:
    """``{"schedule": "daily at 09:00", "audience": "vip"}``: its schedule and audience."""
    schedule, audience = str(raw.get("schedule") or ""), str(raw.get("audience") or "")
    try:
        parse_schedule(schedule)
    except ScheduleError as exc:
        errors.append(_err("entry", f"schedule: {exc}"))
    if not audience:
        errors.append(_err("entry", "audience: the audience whose members enter at each run"))
    return schedule, audience


def _cycle(node: Node, errors: list[dict[str, str]]) -> Cycle | None:
    """``{"cycle": event, "fallback_days": 30, "min_orders": 2}``."""
    p = node.params
    event, fallback, least = p.get("cycle"), p.get("fallback_days"), p.get("min_orders", 2)
    if not isinstance(event, str) or not event:
        errors.append(_err(node.id, "cycle: the name of the event whose interval is the wait"))
    elif not isinstance(fallback, int) or fallback <= 0:
        errors.append(_err(node.id, "fallback_days: a whole number of days > 0"))
    elif not isinstance(least, int) or least < 2:
        errors.append(_err(node.id, "min_orders: a whole number >= 2 (an interval needs two)"))
    else:
        return Cycle(event, timedelta(days=fallback), least)
    return None


def _cycles(nodes: dict[str, Node]) -> list[dict[str, str]]:
    """A loop must pass a wait (else a person would run it forever in one event)."""
    graph = {
        n.id: [t for t in n.next.values() if t in nodes] if n.kind != "wait" else []
        for n in nodes.values()
    }
    colour: dict[str, int] = {}
    errors: list[dict[str, str]] = []

    def visit(nid: str) -> None:
        colour[nid] = 1
        for t in graph[nid]:
            if colour.get(t) == 1:
                errors.append(_err(t, "is on a cycle without a wait"))
            elif t not in colour:
                visit(t)
        colour[nid] = 2

    for nid in graph:
        if nid not in colour:
            visit(nid)
    return errors
