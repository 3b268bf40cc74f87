"""Journeys on the stream engine: each live journey is one rule, each person a position.

A person's ``Position`` (node, since, wait deadline, entry seq) is kept in the state's memo
and in ``JourneyRule.known`` (loaded from ``journey_positions``: a memo is cleared when a late
event rewrites history, and a new engine starts from the table). On an event: a wait already
due before it ends first, then the goal (leave), a wait-until event, or the entry trigger
(with the entry rule) moves the person; the steps run at **event time** until a wait, whose
deadline the core times on the watermark (``compiled.deadline``). Sends, webhooks, leads and
manual tag values are outputs: ``JourneyProvider.apply`` writes positions, the log, the outbox
and ``manual_tag_values`` in one transaction, keys ``journey:<id>:<person>:<node>:<seq>``
(a re-read chunk sends nothing twice).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, meta
from sqlalchemy import func, select

from rapport.accounts import now
from rapport.campaigns.model import CampaignError
from rapport.campaigns.plan import render_for
from rapport.conditions.to_stream import StreamRule, compile_rule
from rapport.db.tables import journey_log, journey_positions, journeys
from rapport.delivery.errors import DeliveryError
from rapport.delivery.outbox import enqueue_many, utc
from rapport.journeys.model import CYCLE_LOOKBACK
from rapport.journeys.store import live
from rapport.stream.core import Reads, reads_of
from rapport.stream.state import Retention

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import Connection

    from rapport.journeys.model import Journey, Node
    from rapport.stream.state import EventRec, PersonState
    from rapport.workspace import Workspace

KIND = "journey"
#: steps one judgement may run (a definition without a waitless cycle never gets near)
MAX_STEPS = 200
_TEMPLATE_NAMES = {"person_key", "coupon", "link", "qr"}


@dataclass(slots=True)
class Position:
    seq: int
    node: str | None
    since: datetime
    deadline: datetime | None
    entered_at: datetime
    status: str  # active | done | goal | merged


@dataclass(slots=True)
class Step:
    node: str | None
    action: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Moves:
    """What one judgement did to one person: where they are now and the steps on the way."""

    journey: int
    person: int
    position: Position
    steps: list[Step]


def bucket(journey: int, person: int) -> int:
    """0..99, the same for a person and journey everywhere (A/B splits)."""
    digest = hashlib.sha256(f"{journey}:{person}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _template_attrs(content: dict[str, Any]) -> set[str]:
    env = Environment(autoescape=False)  # noqa: S701 - parsed for names only, never rendered
    names: set[str] = set()
    for source in content.values():
        names |= meta.find_undeclared_variables(env.parse(str(source)))
    return names - _TEMPLATE_NAMES


def _always(state: PersonState, as_of: datetime, event: EventRec | None = None) -> bool:
    return True


class JourneyRule:
    """One live journey for the engine (``stream.core.Rule``)."""

    def __init__(self, journey: Journey, attr_types: dict[str, str], known: dict[int, Position]):
        self.journey = journey
        self.key = f"{KIND}:{journey.id}"
        self.known = known
        j = journey
        self.entry = compile_rule(j.entry).predicate
        self.goal = compile_rule(j.goal).predicate if j.goal is not None else None
        self.until = {n: compile_rule(c).predicate for n, c in j.until.items()}
        branches = {n: compile_rule(c, attr_types=attr_types) for n, c in j.conditions.items()}
        self.branches = {n: r.predicate for n, r in branches.items()}
        waited = [c.event for c in j.until.values()] + [c.event for c in j.cycles.values()]
        interest: set[str] | None = {j.entry.event, *waited}
        if j.goal is not None:
            interest.add(j.goal.event)  # type: ignore[union-attr]
        # a cycle reads a year of its own event only: the other events need not stay as long
        cycles = frozenset((c.event, CYCLE_LOOKBACK) for c in j.cycles.values())
        retention = Retention(events=cycles)
        reads = Reads()
        for n, r in branches.items():
            interest = None if interest is None or r.interest is None else interest | r.interest
            retention = retention.merge(r.retention)
            reads = reads.merge(reads_of(j.conditions[n]))
        attrs = set().union(
            *(_template_attrs(n.params["content"]) for n in j.nodes.values() if n.kind == "send")
        )
        self.reads = reads.merge(Reads(attrs=frozenset(attrs)))
        self.horizon = timedelta(0)  # timers are rebuilt from ``watched``
        self.compiled = StreamRule(
            _always,
            self._deadline,
            None if interest is None else frozenset(interest),
            retention,
        )

    # -- positions ----------------------------------------------------------------------------
    def position(self, state: PersonState) -> Position | None:
        pos = state.memo.get(self.key)
        if pos is None:
            pos = self.known.get(state.person)
        return pos

    def _keep(self, state: PersonState, pos: Position) -> None:
        state.memo[self.key] = pos
        self.known[state.person] = pos

    def _deadline(self, state: PersonState, at: datetime) -> datetime | None:
        pos = self.position(state)
        return pos.deadline if pos is not None and pos.status == "active" else None

    # -- the seam -----------------------------------------------------------------------------
    def on_event(self, state: PersonState, at: datetime, event: EventRec) -> Moves | None:
        old = self.position(state)
        pos = replace(old) if old is not None else None
        steps: list[Step] = []
        t = event.ts
        if pos is not None and pos.status == "active":
            pos = self._due(state, pos, t, steps, inclusive=False)
        if pos is not None and pos.status == "active" and t >= pos.entered_at:
            if self.goal is not None and self.goal(state, t, event):
                steps.append(Step(pos.node, "goal", t, {"event": event.event}))
                pos.status, pos.node, pos.deadline = "goal", None, None
            elif self._until(state, pos, event):
                node = self.journey.nodes[pos.node or ""]
                steps.append(Step(pos.node, "event", t, {"event": event.event}))
                self._walk(state, pos, node.after("event"), t, steps)
        # after a goal too: an entry rule of every time restarts the journey (repurchase)
        if self._may_enter(pos, t) and self.entry(state, t, event):
            seq = pos.seq + 1 if pos is not None else 1
            pos = Position(seq, None, t, None, t, "active")
            steps.append(Step(None, "entered", t, {"event": event.event}))
            self._walk(state, pos, self.journey.first, t, steps)
        if pos is not None and pos.status == "active":
            pos = self._due(state, pos, at, steps, inclusive=True)
        return self._moved(state, pos, steps)

    def _until(self, state: PersonState, pos: Position, event: EventRec) -> bool:
        """Whether ``event`` ends the person's wait-until-event."""
        test = self.until.get(pos.node or "")
        return test is not None and event.ts >= pos.since and test(state, event.ts, event)

    def on_timer(self, state: PersonState, at: datetime) -> Moves | None:
        old = self.position(state)
        if old is None or old.status != "active":
            return None
        steps: list[Step] = []
        pos = self._due(state, replace(old), at, steps, inclusive=True)
        return self._moved(state, pos, steps)

    def on_merge(self, survivor: int, merged_away: int, at: datetime) -> Moves | None:
        pos = self.known.get(merged_away)
        if pos is None or pos.status != "active":
            return None
        pos = replace(pos, status="merged", node=None, deadline=None)
        self.known[merged_away] = pos
        return Moves(self.journey.id, merged_away, pos, [Step(None, "merged", at)])

    def watched(self) -> Iterable[int]:
        return [p for p, pos in self.known.items() if pos.status == "active" and pos.deadline]

    # -- running the graph --------------------------------------------------------------------
    def _moved(self, state: PersonState, pos: Position | None, steps: list[Step]) -> Moves | None:
        if pos is None or not steps:
            return None
        self._keep(state, pos)
        return Moves(self.journey.id, state.person, pos, steps)

    def _may_enter(self, pos: Position | None, t: datetime) -> bool:
        if pos is None:
            return True
        if pos.status == "active" or t <= pos.entered_at:  # a replayed entry event, too
            return False
        j = self.journey
        if j.entry_rule == "once_per" and j.period is not None:
            return t >= pos.entered_at + j.period
        return j.entry_rule == "every_time"

    def _due(
        self, state: PersonState, pos: Position, limit: datetime, steps: list[Step], inclusive: bool
    ) -> Position:
        """End the waits due before ``limit`` (at it too when ``inclusive``), in time order."""
        while pos.status == "active" and pos.deadline is not None:
            due = pos.deadline
            if due > limit or (due == limit and not inclusive):
                break
            node = self.journey.nodes.get(pos.node or "")
            steps.append(Step(pos.node, "waited", due))
            label = "timeout" if node is not None and "until" in node.params else ""
            self._walk(state, pos, node.after(label) if node else None, due, steps)
        return pos

    def _walk(
        self, state: PersonState, pos: Position, nid: str | None, at: datetime, steps: list[Step]
    ) -> None:
        """Run from node ``nid`` at event time ``at`` until a wait or the end."""
        j = self.journey
        for _ in range(MAX_STEPS):
            node = j.nodes.get(nid) if nid is not None else None
            if node is None or node.kind == "exit":
                if node is not None:
                    steps.append(Step(nid, "exit", at))
                pos.status, pos.node, pos.since, pos.deadline = "done", None, at, None
                steps.append(Step(None, "done", at))
                return
            pos.node, pos.since, pos.deadline = node.id, at, None
            if node.kind == "wait":
                pos.deadline = at + self._length(state, node.id, at)
                steps.append(Step(node.id, "wait", at, {"until": pos.deadline.isoformat()}))
                return
            nid = self._act(state, pos, node, at, steps)
        pos.status, pos.node, pos.deadline = "done", None, None
        steps.append(Step(None, "stopped", at, {"why": f"more than {MAX_STEPS} steps"}))

    def _length(self, state: PersonState, nid: str, at: datetime) -> timedelta:
        """A wait's length from ``at``: fixed, or the person's own cycle as of ``at``."""
        cycle = self.journey.cycles.get(nid)
        if cycle is None:
            return self.journey.durations[nid]
        times = [r.ts for r in state.of(cycle.event) if at - CYCLE_LOOKBACK <= r.ts <= at]
        if len(times) < cycle.min_events:
            return cycle.fallback
        gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
        mid = len(gaps) // 2
        return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2

    def _act(
        self, state: PersonState, pos: Position, node: Node, at: datetime, steps: list[Step]
    ) -> str | None:
        """Do ``node`` (an output for ``apply`` where it sends); the next node's id."""
        p, person = node.params, state.person
        if node.kind == "branch":
            yes = self.branches[node.id](state, at, None)
            steps.append(Step(node.id, "branch", at, {"answer": "yes" if yes else "no"}))
            return node.after("yes" if yes else "no")
        if node.kind == "split":
            arm = _arm(p["shares"], bucket(self.journey.id, person))
            steps.append(Step(node.id, "split", at, {"arm": arm}))
            return node.after(arm)
        key = f"journey:{self.journey.id}:{person}:{node.id}:{pos.seq}"
        if node.kind == "send":
            attrs = {k: state.attrs[k] for k in state.attrs}
            try:
                fields = render_for(p["content"], person, attrs)
            except CampaignError as exc:
                steps.append(Step(node.id, "failed", at, {"error": str(exc)}))
                return node.after()
            payload = {**fields, "person_key": person, "journey": self.journey.id, "node": node.id}
            detail = {"channel": p["channel"], "key": key, "payload": payload}
            steps.append(Step(node.id, "send", at, detail))
        elif node.kind == "webhook":
            payload = {"journey": self.journey.name, "person_key": person, "node": node.id,
                       "at": at.isoformat(), **(p.get("payload") or {})}  # fmt: skip
            steps.append(Step(node.id, "webhook", at, {"channel": p["channel"], "key": key,
                                                       "payload": payload}))  # fmt: skip
        elif node.kind == "lead":
            steps.append(Step(node.id, "lead", at, {"rule": p["rule"], "key": key}))
        elif node.kind == "tag":
            by = f"journey:{self.journey.name}"  # the writer ``apply`` records
            steps.append(Step(node.id, "tag", at, {"tag": p["tag"], "value": p["value"], "by": by}))
        return node.after()


def _arm(shares: dict[str, int], b: int) -> str:
    """The arm whose slice of 0..99 (in proportion to its share) holds ``b``."""
    total, edge = sum(shares.values()), 0
    for arm, share in shares.items():
        edge += share
        if b * total < edge * 100:
            return arm
    return arm


# -- the provider ---------------------------------------------------------------------------------
def load_known(conn: Connection, journey_id: int) -> dict[int, Position]:
    t = journey_positions
    rows = conn.execute(select(t).where(t.c.journey_id == journey_id)).all()
    return {
        r.person_key: Position(
            r.seq, r.node, utc(r.since), utc(r.deadline), utc(r.entered_at), r.status
        )
        for r in rows
    }


class JourneyProvider:
    """The live journeys of a workspace, as stream rules."""

    name = KIND

    def __init__(self) -> None:
        self.live: dict[int, JourneyRule] = {}

    def version(self, ws: Workspace) -> Any:
        query = select(func.count(), func.max(journeys.c.updated_at))
        with ws.db.connect() as conn:
            return tuple(conn.execute(query).one())

    def rules(self, ws: Workspace) -> list[JourneyRule]:
        from rapport.segments.bitmaps import attr_types

        types = attr_types(ws)
        with ws.db.connect() as conn:
            self.live = {j.id: JourneyRule(j, types, load_known(conn, j.id)) for j in live(conn)}
        return list(self.live.values())

    def begin(self, ws: Workspace) -> None:
        return None

    def apply(self, ws: Workspace, outputs: list[Any]) -> None:
        with ws.db.begin() as conn:
            write(conn, outputs)


def write(conn: Connection, outputs: list[Moves]) -> None:
    """The chunk's messages, log rows and last positions, in the caller's transaction: sends
    and webhooks batched per channel (``enqueue_many``: a key already queued is skipped), log
    rows and positions in one statement each."""
    from rapport.leads.records import Tally, fire, flush
    from rapport.leads.rules import load

    tally: Tally = {}
    rows: list[dict[str, Any]] = []
    by_channel: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    by_tag: dict[tuple[str, str], list[tuple[int, Any, dict[str, Any]]]] = {}
    last: dict[tuple[int, int], Position] = {}
    for moves in outputs:
        jid, person, pos = moves.journey, moves.person, moves.position
        last[(jid, person)] = pos
        entered = max((i for i, s in enumerate(moves.steps) if s.action == "entered"), default=0)
        for i, step in enumerate(moves.steps):
            seq = pos.seq if i >= entered else pos.seq - 1  # a goal, then a new entry
            detail = dict(step.detail)
            if step.action in ("send", "webhook"):
                message = {"key": detail["key"], "payload": detail.pop("payload"),
                           "person_key": person, "origin": f"journey:{jid}"}  # fmt: skip
                by_channel.setdefault(detail["channel"], []).append((message, detail))
            elif step.action == "lead":
                try:
                    rule = load(conn, detail["rule"])
                    lead = fire(conn, rule, person, [], step.at, detail["key"], tally=tally)
                    detail["lead"] = lead.id if lead is not None else None
                except LookupError as exc:
                    detail["error"] = str(exc)
            elif step.action == "tag":
                by = detail.pop("by", f"journey:{jid}")
                by_tag.setdefault((detail["tag"], by), []).append((person, detail["value"], detail))
            key = f"{jid}:{person}:{seq}:{step.at.timestamp()}:{step.node}:{step.action}"
            rows.append({"journey_id": jid, "person_key": person, "seq": seq, "node": step.node,
                         "action": step.action, "at": step.at, "detail": detail,
                         "key": key[:200]})  # fmt: skip
    for channel, queued in by_channel.items():
        try:
            with conn.begin_nested():
                enqueue_many(conn, channel=channel, messages=[m for m, _ in queued])
        except DeliveryError as exc:
            for _, detail in queued:
                detail["error"] = str(exc)
    flush(conn, tally)
    for (tag, by), values in by_tag.items():
        _set_tags(conn, tag, by, values)
    if rows:
        conn.execute(_insert(conn, journey_log).on_conflict_do_nothing(), rows)
    if last:
        _upsert_positions(conn, last)


def _set_tags(
    conn: Connection, tag: str, by: str, values: list[tuple[int, Any, dict[str, Any]]]
) -> None:
    """The tag steps' manual values (``set_by`` the journey), in the caller's transaction; a
    tag deleted or changed since the journey was saved is an error on the step, not a failed
    chunk."""
    from rapport.tags.definitions import TagError
    from rapport.tags.manual import set_in
    from rapport.tags.store import TagNotFound

    try:
        with conn.begin_nested():
            set_in(conn, tag, [(person, value) for person, value, _ in values], by)
    except (TagError, TagNotFound) as exc:
        for _, _, detail in values:
            detail["error"] = str(exc)


def _insert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT, which has ``ON CONFLICT`` (the metadata DB is SQLite or
    PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table)


def _upsert_positions(conn: Connection, last: dict[tuple[int, int], Position]) -> None:
    at = now()
    values = [
        {"journey_id": jid, "person_key": person, "seq": p.seq, "node": p.node,
         "since": p.since, "deadline": p.deadline, "entered_at": p.entered_at,
         "status": p.status, "updated_at": at}
        for (jid, person), p in last.items()
    ]  # fmt: skip
    stmt = _insert(conn, journey_positions)
    changed = ("seq", "node", "since", "deadline", "entered_at", "status", "updated_at")
    stmt = stmt.on_conflict_do_update(
        index_elements=["journey_id", "person_key"],
        set_={c: stmt.excluded[c] for c in changed},
    )
    conn.execute(stmt, values)
