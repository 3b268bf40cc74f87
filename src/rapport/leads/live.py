"""Realtime lead rules in the stream engine: a rule fires as its trigger matches.

Every **live, realtime** rule becomes a stream rule (``LeadStreamRule``): its trigger compiled
with ``to_stream.compile_trigger``, its person conditions and suppression with
``compile_rule`` (one predicate: ``conditions and not suppression``). The engine feeds it the
events its trigger and conditions read; on each trigger ``Match`` the predicate is judged at
the match's own time (``fired_at``: the last event of a chain, or ``A + T`` for an absence),
and a match that passes becomes a ``Hit``. Absences mature on the engine's timers (event
time). Paused and draft rules are not loaded; a saved change reaches the engine through
``LeadProvider.version`` (the engine then rebuilds its rules and states).

``LeadProvider.apply`` fires the chunk's hits in one metadata-DB transaction through
``records.fire`` (dedupe, cooldown, routing, outbox), in time order. The dedupe key is
``"{rule id}:{match key}"`` — not the version: a re-saved rule must not fire its old matches
again — and the match key hashes the evidence events' ids, so a chunk re-read after a crash,
a restarted engine re-finding an absence, or a backtest of the same events all name the same
lead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from rapport.conditions.model import And, Condition, Not
from rapport.conditions.reference import Match, match_key
from rapport.db.tables import lead_rules
from rapport.leads.records import Tally, fire, flush
from rapport.leads.rules import LeadRule, live_rules
from rapport.stream.engine import Reads, horizon_of, reads_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from rapport.conditions.to_stream import Predicate, StreamRule, Trigger
    from rapport.stream.state import EventRec, PersonState
    from rapport.workspace import Workspace

KIND = "lead"


def person_condition(rule: LeadRule) -> Condition | None:
    """What the person must satisfy when the trigger matches: conditions and not suppression."""
    parts: list[Condition] = []
    if rule.conditions is not None:
        parts.append(rule.conditions)
    if rule.suppression is not None:
        parts.append(Not(cond=rule.suppression))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(all=parts)


def evidence_of(match: Match) -> list[dict[str, Any]]:
    """The events that made the lead, as the lead record stores them."""
    return [
        {
            "id": e.id,
            "event": e.event,
            "ts": e.ts.isoformat(),
            "properties": e.props,
            "item": e.item,
        }
        for e in match.evidence
    ]


def dedupe_key(rule: LeadRule, match: Match) -> str:
    return f"{rule.id}:{match.key}"


@dataclass(frozen=True, slots=True)
class Hit:
    """A trigger match whose person passed the conditions: a lead to fire."""

    rule: LeadRule
    person: int
    match: Match
    state: PersonState | None = None

    def order(self) -> tuple[datetime, int, str]:
        return self.match.fired_at, self.rule.id, self.match.key


class LeadStreamRule:
    """One realtime rule for the engine (``stream.engine.Rule``)."""

    def __init__(self, rule: LeadRule, attr_types: dict[str, str]) -> None:
        from rapport.conditions.to_stream import (
            StreamRule,
            compile_rule,
            compile_trigger,
        )

        self.rule = rule
        self.key = f"{KIND}:{rule.id}"
        self.trigger: Trigger = compile_trigger(rule.trigger)
        cond = person_condition(rule)
        check = compile_rule(cond, attr_types=attr_types) if cond is not None else None
        self.check: Predicate | None = check.predicate if check is not None else None
        self.absence = getattr(rule.trigger, "then_not", None) is not None
        interest: frozenset[str] | None = self.trigger.interest
        retention = self.trigger.retention
        if check is not None:
            if interest is not None:
                interest = None if check.interest is None else interest | check.interest
            retention = retention.merge(check.retention)
        self.reads: Reads = reads_of(rule.condition())
        self.horizon: timedelta = horizon_of(rule.trigger)
        trigger = self.trigger

        def deadline(state: PersonState, at: datetime) -> datetime | None:
            return trigger.deadline(state)

        self.compiled: StreamRule = StreamRule(
            check.predicate if check is not None else _always,
            deadline if self.absence else None,  # only an absence matures with time
            interest,
            retention,
            trigger.accepts,  # no match starts, grows or ends on an event it rejects
        )

    def hits(self, state: PersonState, matches: list[Match]) -> list[Hit]:
        """The matches whose person passes the conditions at the match's time."""
        if not matches:
            return []
        check = self.check
        return [
            Hit(self.rule, state.person, m, state)
            for m in matches
            if check is None or check(state, m.fired_at, None)
        ]

    def on_event(self, state: PersonState, at: datetime, event: EventRec) -> list[Hit] | None:
        found = self.trigger.on_event(state, event)
        if self.absence:
            # a wait already due at ``at`` (a late event, or one due at this very time): the
            # engine does not time a deadline that is not after ``at``, so fire it now
            found += self.trigger.on_timer(state, at)
        return self.hits(state, found) or None

    def on_timer(self, state: PersonState, at: datetime) -> list[Hit] | None:
        if not self.absence:
            return None  # only an absence matures with time
        return self.hits(state, self.trigger.on_timer(state, at)) or None

    def on_merge(self, survivor: int, merged_away: int, at: datetime) -> None:
        return None  # leads stay with the person they were made for

    def watched(self) -> Iterable[int]:
        return ()  # pending absences are rebuilt from the events within the horizon


def _always(state: PersonState, as_of: datetime, event: EventRec | None = None) -> bool:
    return True


def stream_rules(ws: Workspace, rules: Iterable[LeadRule]) -> list[LeadStreamRule]:
    from rapport.segments.bitmaps import attr_types

    types = attr_types(ws)
    return [LeadStreamRule(r, types) for r in rules]


def with_ids(ws: Workspace, hits: list[Hit]) -> list[Hit]:
    """Hits whose evidence carries the warehouse's event ids (and a match key made of them).

    The engine's states may hold events without their ``event_id``; then the ids are looked up
    by (person, event, time), one query for the whole chunk, so that the dedupe key is the same
    as a backtest's (which reads the ids). Of several events of one person, name and time, the
    smallest id stands for them."""
    missing = [h for h in hits if any(e.id is None for e in h.match.evidence)]
    todo = {id(h) for h in missing}
    if not missing:
        return hits
    import ibis
    import pyarrow as pa

    wanted = {(h.person, e.event, e.ts) for h in missing for e in h.match.evidence}
    people = pa.table({"person_key": pa.array(sorted({p for p, _, _ in wanted}), pa.int64())})
    with ws.warehouse.connect() as con:
        ev = con.table("events")
        q = ev.filter(
            ev.event.isin(sorted({n for _, n, _ in wanted})),
            ev.ts.isin(sorted({t for _, _, t in wanted})),
        ).join(ibis.memtable(people), "person_key")
        rows = q.select("person_key", "event", "ts", "event_id").to_pyarrow().to_pylist()
    ids: dict[tuple[int, str, datetime], str] = {}
    for r in rows:
        slot = (r["person_key"], r["event"], r["ts"])
        if slot not in ids or r["event_id"] < ids[slot]:
            ids[slot] = r["event_id"]
    out = []
    for h in hits:
        if id(h) in todo:
            chain = tuple(_with_id(e, ids.get((h.person, e.event, e.ts))) for e in h.match.evidence)
            h = Hit(h.rule, h.person, Match(h.match.fired_at, chain, match_key(chain)), h.state)
        out.append(h)
    return out


def _with_id(rec: EventRec, event_id: str | None) -> EventRec:
    from rapport.stream.state import EventRec

    if rec.id is not None or event_id is None:
        return rec
    return EventRec(rec.ts, rec.event, rec.props, rec.item, event_id)


def fire_hits(ws: Workspace, hits: list[Hit]) -> int:
    """Fire ``hits`` in time order in one transaction; how many leads were created."""
    created, tally = 0, Tally()
    with ws.db.begin() as conn:
        for h in sorted(with_ids(ws, hits), key=Hit.order):
            lead = fire(
                conn,
                h.rule,
                h.person,
                evidence_of(h.match),
                h.match.fired_at,
                dedupe_key(h.rule, h.match),
                person=h.state,
                tally=tally,
            )
            created += lead is not None
        flush(conn, tally)
    return created


class LeadProvider:
    """The workspace's live realtime lead rules, as stream rules."""

    name = KIND

    def __init__(self) -> None:
        self.live: dict[int, LeadStreamRule] = {}

    def version(self, ws: Workspace) -> Any:
        t = lead_rules
        query = select(func.count(), func.max(t.c.updated_at))
        with ws.db.connect() as conn:
            return tuple(conn.execute(query).one())

    def rules(self, ws: Workspace) -> list[LeadStreamRule]:
        with ws.db.connect() as conn:
            found = live_rules(conn, mode="realtime")
        self.live = {r.rule.id: r for r in stream_rules(ws, found)}
        return list(self.live.values())

    def begin(self, ws: Workspace) -> None:
        return None

    def apply(self, ws: Workspace, outputs: list[Any]) -> None:
        fire_hits(ws, [h for hits in outputs for h in hits])
