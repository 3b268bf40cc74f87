"""Audiences kept current per event: the stream engine's first kind of rule.

Every **dynamic** audience whose condition the stream compiler accepts and that some event can
change is *live*: after each event of interest (or timer) the engine judges the person at
the event time, and when the answer differs from the membership the audience enters or exits
the person. Per chunk of events ``AudienceProvider.apply`` writes the changes through
``store.change_members`` (rows, bitmap, size) and logs one ``audience_entered`` /
``audience_exited`` system event per change, with a message id derived from (audience,
person, time, direction), so that a replayed chunk is deduplicated by the log.

Not live (batch only, ``status`` says why): static audiences, conditions the stream cannot
compile, and conditions of attributes, tags and segments only — those change when the batch
path recomputes profiles, tags and segments, not with an event. Between refreshes the batch
path stays the baseline: a person no event of interest has touched keeps the membership the
last refresh gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyroaring import BitMap
from sqlalchemy import func, select

from rapport.conditions.errors import ConditionError
from rapport.db.tables import segments as segments_table
from rapport.segments import system_events
from rapport.segments.audiences import KIND, condition_of
from rapport.segments.bitmaps import attr_types
from rapport.segments.store import change_members, list_segments, members
from rapport.stream.engine import Reads, horizon_of, reads_of

if TYPE_CHECKING:
    from rapport.conditions.model import Condition
    from rapport.conditions.to_stream import StreamRule
    from rapport.stream.state import EventRec, PersonState
    from rapport.workspace import Workspace

ENTERED = "audience_entered"
EXITED = "audience_exited"
EVENTS = (ENTERED, EXITED)

PLAN = f"""
events:
  {ENTERED}:
    kind: system
    description: A person entered a dynamic audience, judged per event (emitted by Rapport).
    properties:
      audience:
        type: string
        required: true
      person:
        type: integer
        required: true
  {EXITED}:
    kind: system
    description: A person left a dynamic audience, judged per event (emitted by Rapport).
    properties:
      audience:
        type: string
        required: true
      person:
        type: integer
        required: true
"""


@dataclass(frozen=True, slots=True)
class Change:
    audience: str
    person: int
    at: datetime
    entered: bool


def compile_live(cond: Condition, types: dict[str, str]) -> tuple[StreamRule | None, str | None]:
    """The stream rule of an audience condition, or None and why it is batch only."""
    from rapport.conditions.to_stream import compile_rule

    try:
        rule = compile_rule(cond, attr_types=types)
    except ConditionError as exc:
        return None, f"the stream path cannot evaluate it: {exc}"
    if rule.interest is not None and not rule.interest:
        return None, (
            "it reads only attributes, tags or segments: it changes when the batch path "
            "recomputes them, not with an event"
        )
    return rule, None


def status(ws: Workspace, segment: dict[str, Any]) -> dict[str, Any]:
    """``{"live": bool, "reason": str | None}`` of an audience (for the API and console)."""
    if segment.get("kind") != KIND:
        return {"live": False, "reason": "only audiences are kept current per event"}
    if segment.get("mode") != "dynamic":
        return {"live": False, "reason": "a static audience is a fixed list"}
    cond = condition_of(segment)
    if cond is None:
        return {"live": False, "reason": "it has no condition"}
    rule, reason = compile_live(cond, attr_types(ws))
    return {"live": rule is not None, "reason": reason}


class AudienceRule:
    """One live audience; ``members`` is the membership as the engine has judged it so far
    (re-read from the index before each pass that does work)."""

    def __init__(self, name: str, cond: Condition, compiled: StreamRule) -> None:
        self.name = name
        self.key = f"{KIND}:{name}"
        self.compiled = compiled
        self.reads: Reads = reads_of(cond)
        self.horizon: timedelta = horizon_of(cond)
        self.members = BitMap()

    def _judge(self, state: PersonState, at: datetime) -> Change | None:
        now = self.compiled.predicate(state, at, None)
        person = state.person
        if now == (person in self.members):
            return None
        if now:
            self.members.add(person)
        else:
            self.members.discard(person)
        return Change(self.name, person, at, now)

    def on_event(self, state: PersonState, at: datetime, event: EventRec) -> Change | None:
        if event.event in EVENTS and event.props.get("audience") == self.name:
            return None  # never react to our own entries and exits
        return self._judge(state, at)

    def on_timer(self, state: PersonState, at: datetime) -> Change | None:
        return self._judge(state, at)

    def on_merge(self, survivor: int, merged_away: int, at: datetime) -> Change | None:
        if merged_away not in self.members:
            return None
        self.members.discard(merged_away)
        return Change(self.name, merged_away, at, False)

    def watched(self) -> BitMap:
        return self.members


class AudienceProvider:
    """The live audiences of a workspace, as stream rules."""

    name = KIND

    def __init__(self) -> None:
        self.live: dict[str, AudienceRule] = {}

    def version(self, ws: Workspace) -> Any:
        t = segments_table
        query = select(func.count(), func.max(t.c.updated_at)).where(t.c.kind == KIND)
        with ws.db.connect() as conn:
            row = conn.execute(query).one()
        return tuple(row)

    def rules(self, ws: Workspace) -> list[AudienceRule]:
        types = attr_types(ws)
        self.live = {}
        for seg in list_segments(ws, KIND):
            cond = condition_of(seg) if seg["mode"] == "dynamic" else None
            if cond is None:
                continue
            compiled, _ = compile_live(cond, types)
            if compiled is not None:
                self.live[seg["name"]] = AudienceRule(seg["name"], cond, compiled)
        return list(self.live.values())

    def begin(self, ws: Workspace) -> None:
        for rule in self.live.values():
            rule.members = BitMap(members(ws, rule.name))  # a copy: the index caches its own

    def apply(self, ws: Workspace, outputs: list[Any]) -> None:
        """Write where each changed person ended up (only those: a batch refresh that ran
        meanwhile keeps the rest), then log every change."""
        touched: dict[str, BitMap] = {}
        for c in outputs:
            touched.setdefault(c.audience, BitMap()).add(c.person)
        for name, persons in sorted(touched.items()):
            rule = self.live.get(name)
            if rule is not None:
                change_members(ws, name, persons & rule.members, persons - rule.members)
        emit(ws, outputs)


def emit(ws: Workspace, changes: list[Change]) -> dict[str, int]:
    """One ``audience_entered`` / ``audience_exited`` per change, at the change's event time."""
    if not changes:
        return {"accepted": 0}
    source = system_events.system_source(ws, EVENTS, PLAN)
    member_ids = system_events.user_ids(ws, BitMap({c.person for c in changes}))
    messages = []
    for c in changes:
        event = ENTERED if c.entered else EXITED
        stamp = system_events.stamp(c.at)
        messages.append(
            system_events.message(
                event,
                c.person,
                c.at,
                f"audience:{c.audience}:{c.person}:{stamp}:{'in' if c.entered else 'out'}",
                {"audience": c.audience, "person": c.person},
                member_ids.get(c.person),
            )
        )
    return system_events.submit(ws, source, messages)
