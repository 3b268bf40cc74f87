"""Leads as CRM records: created by ``fire``, worked through their statuses, with history.

``fire`` is the one way a lead comes to exist (the stream engine and the offline runner call
it), inside the caller's metadata-DB transaction, so that the lead, its history, the rule's
counters and the delivery outbox row commit together or not at all:

1. the dedupe key (e.g. rule id + trigger event id) exists: nothing (a replay after a crash
   never duplicates a lead);
2. a lead of the same type for the same person was created within the rule's cooldown before
   ``at``: nothing, and the rule's ``suppressed`` counter goes up;

(The counters: a caller firing many leads in one transaction passes a ``Tally`` and
``flush``-es it last, in rule order: rules workers on other partitions update the same rule
rows, and per-lead updates in each worker's own order deadlocked them on PostgreSQL.)
3. otherwise the lead is inserted and routed: to a channel (an outbox message, sent by
   ``rapport.delivery``) or to a team (the inbox; an agent now if the team is working).

Statuses: ``new → assigned → contacted → converted | closed_lost | invalid``; see
``TRANSITIONS``. A change outside them is refused with what is allowed instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import Connection, Engine, func, insert, select, update

from rapport.accounts import now
from rapport.db.tables import lead_history, lead_notes, lead_rules, leads
from rapport.leads.routing import decide

if TYPE_CHECKING:
    from rapport.leads.rules import LeadRule
    from rapport.stream.state import PersonState

STATUSES = ("new", "assigned", "contacted", "converted", "closed_lost", "invalid")
#: a lead is contacted before it converts; new -> contacted: a channel (call centre) reached
#: the person without an agent of ours; assigned -> new: the agent gave the lead back
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("assigned", "contacted", "closed_lost", "invalid"),
    "assigned": ("new", "contacted", "closed_lost", "invalid"),
    "contacted": ("converted", "closed_lost", "invalid"),
    "converted": (),
    "closed_lost": (),
    "invalid": (),
}
OPEN = ("new", "assigned", "contacted")


class LeadError(ValueError):
    """A change the lead cannot take; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class LeadNotFound(LookupError):
    def __init__(self, lead_id: int) -> None:
        super().__init__(f"no lead {lead_id}")
        self.lead_id = lead_id


class LeadOut(msgspec.Struct, frozen=True):
    id: int
    person_key: int
    lead_type: str
    rule_id: int | None
    rule_version: int | None
    evidence: list[dict[str, Any]]
    score: int
    priority: int
    status: str
    owner: str | None
    team: str | None
    channel: str | None
    route: str | None
    dedupe_key: str
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None = None
    due_by: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out = msgspec.structs.asdict(self)
        for key in ("created_at", "updated_at", "assigned_at", "due_by"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out


def _utc(value: Any) -> Any:
    """SQLite hands back naive date-times; every time here is UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _out(row: Any) -> LeadOut:
    return LeadOut(**{f: _utc(getattr(row, f)) for f in LeadOut.__struct_fields__})


def _history(
    conn: Connection,
    lead_id: int,
    at: datetime,
    actor: str,
    action: str,
    from_status: str | None = None,
    to_status: str | None = None,
    note: str | None = None,
    external_id: str | None = None,
) -> None:
    conn.execute(
        insert(lead_history).values(
            lead_id=lead_id,
            at=at,
            actor=actor,
            action=action,
            from_status=from_status,
            to_status=to_status,
            note=note,
            external_id=external_id,
        )
    )


def payload(lead: LeadOut, rule_name: str | None = None) -> dict[str, Any]:
    """What a channel receives (the webhook body, the call list row's source)."""
    out = lead.to_dict()
    out["rule"] = {"id": lead.rule_id, "name": rule_name, "version": lead.rule_version}
    for key in ("rule_id", "rule_version", "owner", "updated_at", "assigned_at", "dedupe_key"):
        out.pop(key)
    return out


# -- creating -----------------------------------------------------------------------------------
#: counter increments held until the end of a transaction: ``(rule id, column) -> n``
Tally = dict[tuple[int, str], int]


def _count(conn: Connection, rule_id: int, column: str, tally: Tally | None) -> None:
    if tally is None:
        conn.execute(_increment(rule_id, column, 1))
    else:
        tally[(rule_id, column)] = tally.get((rule_id, column), 0) + 1


def _increment(rule_id: int, column: str, n: int) -> Any:
    return (
        update(lead_rules)
        .where(lead_rules.c.id == rule_id)
        .values({column: lead_rules.c[column] + n})
    )


def flush(conn: Connection, tally: Tally) -> None:
    """Apply ``tally``'s counts, in rule order: call it last before the commit, so the rule rows
    are locked briefly and in the same order by every process."""
    for (rule_id, column), n in sorted(tally.items()):
        conn.execute(_increment(rule_id, column, n))
    tally.clear()


def fire(
    conn: Connection,
    rule: LeadRule,
    person_key: int,
    evidence: list[dict[str, Any]],
    at: datetime,
    dedupe_key: str,
    *,
    person: PersonState | None = None,
    due_by: datetime | None = None,
    tally: Tally | None = None,
) -> LeadOut | None:
    """Create the lead of ``rule`` for ``person_key`` (see the module docstring); None when
    the dedupe key exists or the cooldown suppresses it. ``person`` (the stream engine's
    state) lets routes with a person condition apply. Runs in ``conn``'s transaction."""
    at = at.astimezone(UTC)
    exists = conn.execute(select(leads.c.id).where(leads.c.dedupe_key == dedupe_key)).first()
    if exists is not None:
        return None
    since = at - timedelta(seconds=rule.cooldown.seconds())
    recent = conn.execute(
        select(leads.c.id)
        .where(
            leads.c.person_key == person_key,
            leads.c.lead_type == rule.lead_type,
            leads.c.created_at > since,
            leads.c.created_at <= at,
        )
        .limit(1)
    ).first()
    if recent is not None:
        _count(conn, rule.id, "suppressed", tally)
        return None
    decision = decide(conn, rule.route, rule.lead_type, at, person)
    values: dict[str, Any] = {
        "person_key": person_key,
        "lead_type": rule.lead_type,
        "rule_id": rule.id,
        "rule_version": rule.version,
        "evidence": evidence,
        "score": rule.score,
        "priority": rule.priority,
        "status": "assigned" if decision.owner else "new",
        "owner": decision.owner,
        "team": decision.team,
        "channel": decision.channel,
        "route": decision.route,
        "dedupe_key": dedupe_key,
        "created_at": at,
        "updated_at": at,
        "assigned_at": at if decision.owner else None,
        "due_by": due_by,
    }
    lead_id = conn.execute(insert(leads), values).inserted_primary_key[0]  # type: ignore[index]
    where = decision.channel or decision.team
    steps: list[tuple[str, str, str | None, str | None, str]] = [
        ("rule:" + rule.name, "created", None, "new", f"rule {rule.name} v{rule.version}"),
        (
            "routing",
            "routed",
            None,
            None,
            f"route {decision.route}: {where}" if where else "no route matched: inbox",
        ),
    ]
    if decision.owner:
        steps.append(("routing", "assigned", "new", "assigned", decision.owner))
    conn.execute(
        insert(lead_history),
        [
            {
                "lead_id": lead_id,
                "at": at,
                "actor": actor,
                "action": action,
                "from_status": before,
                "to_status": after,
                "note": note,
                "external_id": None,
            }
            for actor, action, before, after, note in steps
        ],
    )
    _count(conn, rule.id, "fired", tally)
    lead = LeadOut(id=lead_id, **values)
    if decision.channel:
        from rapport.delivery.outbox import enqueue

        enqueue(
            conn,
            channel=decision.channel,
            payload=payload(lead, rule.name),
            key=f"lead:{lead_id}",
            person_key=person_key,
            origin=f"lead:{lead_id}",
        )
    return lead


# -- working a lead -----------------------------------------------------------------------------
def _locked(conn: Connection, lead_id: int) -> Any:
    row = conn.execute(select(leads).where(leads.c.id == lead_id).with_for_update()).first()
    if row is None:
        raise LeadNotFound(lead_id)
    return row


def _check_transition(current: str, to: str) -> None:
    if to not in STATUSES:
        raise LeadError("status", f"{to!r} is not a status; one of {', '.join(STATUSES)}")
    allowed = TRANSITIONS[current]
    if to not in allowed:
        instead = f"from {current}: {', '.join(allowed)}" if allowed else f"{current} is final"
        raise LeadError("status", f"a lead cannot go from {current} to {to} ({instead})", 409)


def assign(
    conn: Connection, lead_id: int, owner: str, actor: str, at: datetime, note: str | None = None
) -> LeadOut:
    """Give an open lead to ``owner`` (status assigned unless it is further along)."""
    row = _locked(conn, lead_id)
    if row.status not in OPEN:
        raise LeadError("status", f"lead {lead_id} is {row.status}: it cannot be assigned", 409)
    status = "assigned" if row.status == "new" else row.status
    conn.execute(
        update(leads)
        .where(leads.c.id == lead_id)
        .values(owner=owner, status=status, assigned_at=at, updated_at=at)
    )
    _history(conn, lead_id, at, actor, "assigned", row.status, status, note or owner)
    return _out(conn.execute(select(leads).where(leads.c.id == lead_id)).one())


def claim(engine: Engine, lead_id: int, username: str) -> LeadOut:
    """Assign an open lead to oneself; refused when another agent has it."""
    at = now()
    with engine.begin() as conn:
        row = _locked(conn, lead_id)
        if row.owner and row.owner != username:
            raise LeadError("owner", f"lead {lead_id} is {row.owner}'s already", 409)
        return assign(conn, lead_id, username, username, at, note=f"claimed by {username}")


def change_status(
    engine: Engine,
    lead_id: int,
    to: str,
    actor: str,
    note: str | None = None,
    external_id: str | None = None,
    owner_only: str | None = None,
) -> tuple[LeadOut, bool]:
    """Move the lead to ``to`` (allowed transitions only) with an optional note; returns the
    lead and whether it changed. An ``external_id`` already recorded for this lead (an
    outcome reported twice) changes nothing. ``owner_only``: refuse unless this user owns it."""
    at = now()
    with engine.begin() as conn:
        row = _locked(conn, lead_id)
        if external_id is not None:
            seen = conn.execute(
                select(lead_history.c.id).where(
                    lead_history.c.lead_id == lead_id, lead_history.c.external_id == external_id
                )
            ).first()
            if seen is not None:
                return _out(row), False
        if owner_only is not None and row.owner != owner_only:
            whose = f"{row.owner}'s" if row.owner else "nobody's: claim it first"
            raise LeadError("owner", f"lead {lead_id} is {whose}", 403)
        _check_transition(row.status, to)
        values: dict[str, Any] = {"status": to, "updated_at": at}
        if to == "new":
            values["owner"] = None
        conn.execute(update(leads).where(leads.c.id == lead_id).values(**values))
        action = "outcome" if external_id is not None else "status"
        _history(conn, lead_id, at, actor, action, row.status, to, note, external_id)
        return _out(conn.execute(select(leads).where(leads.c.id == lead_id)).one()), True


def add_note(engine: Engine, lead_id: int, author: str, body: str) -> dict[str, Any]:
    body = body.strip()
    if not body:
        raise LeadError("body", "a note cannot be empty")
    at = now()
    with engine.begin() as conn:
        _locked(conn, lead_id)
        note_id = conn.execute(
            insert(lead_notes).values(lead_id=lead_id, at=at, author=author, body=body)
        ).inserted_primary_key[0]  # type: ignore[index]
        conn.execute(update(leads).where(leads.c.id == lead_id).values(updated_at=at))
    return {"id": note_id, "at": at.isoformat(), "author": author, "body": body}


# -- reading ------------------------------------------------------------------------------------
def get_lead(engine: Engine, lead_id: int) -> dict[str, Any]:
    """The lead with its rule's name, its history and its notes (oldest first)."""
    with engine.connect() as conn:
        row = conn.execute(select(leads).where(leads.c.id == lead_id)).first()
        if row is None:
            raise LeadNotFound(lead_id)
        out = _out(row).to_dict()
        out["rule_name"] = conn.execute(
            select(lead_rules.c.name).where(lead_rules.c.id == row.rule_id)
        ).scalar()
        out["history"] = [
            {**dict(h._mapping), "at": h.at.isoformat()}
            for h in conn.execute(
                select(lead_history)
                .where(lead_history.c.lead_id == lead_id)
                .order_by(lead_history.c.at, lead_history.c.id)
            )
        ]
        out["notes"] = [
            {**dict(n._mapping), "at": n.at.isoformat()}
            for n in conn.execute(
                select(lead_notes)
                .where(lead_notes.c.lead_id == lead_id)
                .order_by(lead_notes.c.at, lead_notes.c.id)
            )
        ]
        out["allowed"] = list(TRANSITIONS[row.status])
    return out


def list_leads(
    engine: Engine,
    *,
    status: str | None = None,
    lead_type: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    person_key: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Leads newest first, filtered; and how many match in all. ``owner="-"``: unassigned."""
    filters = []
    if status:
        filters.append(leads.c.status == status)
    if lead_type:
        filters.append(leads.c.lead_type == lead_type)
    if owner == "-":
        filters.append(leads.c.owner.is_(None))
    elif owner:
        filters.append(leads.c.owner == owner)
    if team:
        filters.append(leads.c.team == team)
    if since is not None:
        filters.append(leads.c.created_at >= since)
    if until is not None:
        filters.append(leads.c.created_at < until)
    if person_key is not None:
        filters.append(leads.c.person_key == person_key)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(leads).where(*filters)).scalar_one()
        rows = conn.execute(
            select(leads)
            .where(*filters)
            .order_by(leads.c.created_at.desc(), leads.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_out(r).to_dict() for r in rows], int(total)


def lead_types(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(leads.c.lead_type).distinct().order_by(leads.c.lead_type)).scalars()
        )
