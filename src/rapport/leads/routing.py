"""Where a lead goes: ordered routes to a channel or a sales team, and who in the team gets it.

A **route** says "leads of this type (and, optionally, of persons matching a condition) go to
channel X" (outbound call list, SMS, a webhook: ``rapport.delivery`` sends them) or "to team Y"
(the console inbox). Routes are tried in ``position`` order; a rule names one route or says
``auto`` (the first route that matches). No route matches: the lead waits in the inbox, with no
team.

A **team** has agents (users with role ``sales``), a strategy — ``round_robin`` (the agent after
the previous one) or ``least_load`` (fewest open leads, then list order) — and working hours
in its time zone. Outside them a lead waits unassigned and ``assign_waiting`` hands it out at
the next opening. Everything is decided from the metadata DB and the given time: deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from rapport.accounts import Role, now
from rapport.conditions.model import from_json
from rapport.conditions.reference import evaluate
from rapport.db.tables import lead_routes, lead_team_agents, lead_teams, leads, users

if TYPE_CHECKING:
    from rapport.stream.state import PersonState
    from rapport.workspace import Workspace

STRATEGIES = ("round_robin", "least_load")
OPEN_STATUSES = ("new", "assigned", "contacted")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class RoutingError(ValueError):
    """A team or route that cannot be saved; ``field`` says which part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RoutingNotFound(LookupError):
    pass


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\- ]{1,100}$")
    strategy: Literal["round_robin", "least_load"] = "round_robin"
    timezone: str = "UTC"
    days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], description="ISO weekdays")
    opens: str = Field("09:00", description="HH:MM, the team's local time")
    closes: str = Field("18:00", description="HH:MM; before `opens`: the shift ends next day")
    agents: list[str] = Field(default_factory=list, description="usernames of sales users")


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: Literal["round_robin", "least_load"] | None = None
    timezone: str | None = None
    days: list[int] | None = None
    opens: str | None = None
    closes: str | None = None
    agents: list[str] | None = None


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    position: int = 0
    lead_type: str | None = Field(None, description="empty: any type")
    condition: dict[str, Any] | None = Field(None, description="on the person (JSON form)")
    target_kind: Literal["channel", "team"]
    target: str = Field(min_length=1, max_length=100)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a lead goes: ``channel`` (sent by delivery) or ``team`` (+ ``owner`` when an
    agent could be picked now)."""

    route: str | None = None
    channel: str | None = None
    team: str | None = None
    owner: str | None = None


# -- teams ---------------------------------------------------------------------------------------
def _check_team(conn: Connection, values: dict[str, Any]) -> None:
    if "timezone" in values:
        try:
            ZoneInfo(values["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise RoutingError(
                "timezone", f"{values['timezone']!r} is not a time zone (e.g. Asia/Shanghai)"
            ) from None
    for key in ("opens", "closes"):
        if key in values and not _HHMM.match(values[key]):
            raise RoutingError(key, f"{values[key]!r} is not HH:MM (24-hour)")
    if "days" in values:
        bad = [d for d in values["days"] if d not in range(1, 8)]
        if bad or not values["days"]:
            raise RoutingError("days", "ISO weekdays 1 (Monday) to 7 (Sunday), at least one")
    if values.get("agents"):
        found = dict(
            conn.execute(
                select(users.c.username, users.c.role).where(users.c.username.in_(values["agents"]))
            ).all()
        )
        for name in values["agents"]:
            if name not in found:
                raise RoutingError("agents", f"no user named {name!r}")
            if found[name] != Role.sales.value:
                raise RoutingError(
                    "agents", f"{name!r} has role {found[name]!r}; agents are `sales` users"
                )


def _set_agents(conn: Connection, team_id: int, agents: list[str]) -> None:
    conn.execute(delete(lead_team_agents).where(lead_team_agents.c.team_id == team_id))
    for position, name in enumerate(dict.fromkeys(agents)):
        conn.execute(
            insert(lead_team_agents).values(team_id=team_id, username=name, position=position)
        )


def _team_out(conn: Connection, row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["created_at"] = row.created_at.isoformat()
    out["agents"] = _agents(conn, row.id)
    out["open_leads"] = {a: n for a, n in _loads(conn, out["agents"]).items()}
    return out


def _agents(conn: Connection, team_id: int) -> list[str]:
    return list(
        conn.execute(
            select(lead_team_agents.c.username)
            .where(lead_team_agents.c.team_id == team_id)
            .order_by(lead_team_agents.c.position)
        ).scalars()
    )


def _loads(conn: Connection, agents: list[str]) -> dict[str, int]:
    counts: dict[str, int] = dict(
        conn.execute(  # type: ignore[arg-type]
            select(leads.c.owner, func.count())
            .where(leads.c.owner.in_(agents), leads.c.status.in_(OPEN_STATUSES))
            .group_by(leads.c.owner)
        ).all()
    )
    return {a: int(counts.get(a, 0)) for a in agents}


def list_teams(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(lead_teams).order_by(lead_teams.c.name)).all()
        return [_team_out(conn, r) for r in rows]


def get_team(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(lead_teams).where(lead_teams.c.name == name)).first()
        if row is None:
            raise RoutingNotFound(f"no team named {name!r}")
        return _team_out(conn, row)


def create_team(engine: Engine, body: TeamIn) -> dict[str, Any]:
    values = body.model_dump()
    agents = values.pop("agents")
    with engine.begin() as conn:
        _check_team(conn, {**values, "agents": agents})
        if conn.execute(select(lead_teams.c.id).where(lead_teams.c.name == body.name)).first():
            raise RoutingError("name", f"a team named {body.name!r} exists")
        team_id = conn.execute(
            insert(lead_teams).values(**values, created_at=now())
        ).inserted_primary_key[0]  # type: ignore[index]
        _set_agents(conn, team_id, agents)
    return get_team(engine, body.name)


def update_team(engine: Engine, name: str, patch: TeamPatch) -> dict[str, Any]:
    values = patch.model_dump(exclude_unset=True)
    with engine.begin() as conn:
        team_id = conn.execute(select(lead_teams.c.id).where(lead_teams.c.name == name)).scalar()
        if team_id is None:
            raise RoutingNotFound(f"no team named {name!r}")
        _check_team(conn, values)
        agents = values.pop("agents", None)
        if values:
            conn.execute(update(lead_teams).where(lead_teams.c.id == team_id).values(**values))
        if agents is not None:
            _set_agents(conn, team_id, agents)
    return get_team(engine, name)


def delete_team(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        if not conn.execute(delete(lead_teams).where(lead_teams.c.name == name)).rowcount:
            raise RoutingNotFound(f"no team named {name!r}")


def is_open(team: Any, at: datetime) -> bool:
    """Whether ``team`` (a row or dict with timezone, days, opens, closes) works at ``at``.
    A shift that closes before it opens (22:00-06:00) runs past midnight."""

    def get(key: str) -> Any:
        return team[key] if isinstance(team, dict) else getattr(team, key)

    local = at.astimezone(ZoneInfo(get("timezone")))
    opens = time.fromisoformat(get("opens"))
    closes = time.fromisoformat(get("closes"))
    t, day = local.time(), local.isoweekday()
    if opens <= closes:
        return day in get("days") and opens <= t < closes
    if t >= opens:
        return day in get("days")
    yesterday = 7 if day == 1 else day - 1
    return yesterday in get("days") and t < closes


def pick_agent(conn: Connection, team: Any) -> str | None:
    """The agent who gets the next lead of ``team`` (a row), by its strategy; None when the
    team has no agent. Round-robin remembers the last agent in the team's row."""
    agents = _agents(conn, team.id)
    if not agents:
        return None
    if team.strategy == "least_load":
        loads = _loads(conn, agents)
        return min(agents, key=lambda a: (loads[a], agents.index(a)))
    last = team.last_agent
    chosen = agents[(agents.index(last) + 1) % len(agents)] if last in agents else agents[0]
    conn.execute(update(lead_teams).where(lead_teams.c.id == team.id).values(last_agent=chosen))
    return chosen


# -- routes --------------------------------------------------------------------------------------
def list_routes(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(lead_routes).order_by(lead_routes.c.position, lead_routes.c.id))
        return [{**dict(r._mapping), "created_at": r.created_at.isoformat()} for r in rows]


def _check_route(conn: Connection, body: RouteIn) -> dict[str, Any]:
    values = body.model_dump()
    if body.condition is not None:
        try:
            values["condition"] = from_json(body.condition).model_dump(
                mode="json", exclude_none=True
            )
        except ValueError as exc:
            raise RoutingError("condition", str(exc).splitlines()[-1].strip()) from None
    if body.target_kind == "channel":
        from rapport.db.tables import channels  # rapport.delivery's: leads sit above it

        found = conn.execute(select(channels.c.id).where(channels.c.name == body.target))
        if found.first() is None:
            known = conn.execute(select(channels.c.name).order_by(channels.c.name)).scalars()
            raise RoutingError(
                "target",
                f"no delivery channel named {body.target!r} "
                f"(configured: {', '.join(known) or 'none'})",
            )
    if body.target_kind == "team":
        found = conn.execute(select(lead_teams.c.id).where(lead_teams.c.name == body.target))
        if found.first() is None:
            raise RoutingError("target", f"no team named {body.target!r}: create it first")
    return values


def create_route(engine: Engine, body: RouteIn) -> dict[str, Any]:
    with engine.begin() as conn:
        values = _check_route(conn, body)
        if conn.execute(select(lead_routes.c.id).where(lead_routes.c.name == body.name)).first():
            raise RoutingError("name", f"a route named {body.name!r} exists")
        conn.execute(insert(lead_routes).values(**values, created_at=now()))
    return next(r for r in list_routes(engine) if r["name"] == body.name)


def replace_route(engine: Engine, name: str, body: RouteIn) -> dict[str, Any]:
    with engine.begin() as conn:
        values = _check_route(conn, body)
        done = conn.execute(update(lead_routes).where(lead_routes.c.name == name).values(**values))
        if not done.rowcount:
            raise RoutingNotFound(f"no route named {name!r}")
    return next(r for r in list_routes(engine) if r["name"] == body.name)


def delete_route(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        if not conn.execute(delete(lead_routes).where(lead_routes.c.name == name)).rowcount:
            raise RoutingNotFound(f"no route named {name!r}")


def _matches(row: Any, lead_type: str, person: PersonState | None, at: datetime) -> bool:
    if row.lead_type and row.lead_type != lead_type:
        return False
    if row.condition is None:
        return True
    if person is None:  # a person condition needs the person: the route does not apply
        return False
    return evaluate(from_json(row.condition), person, at, attr_types={})


def decide(
    conn: Connection,
    route: str,
    lead_type: str,
    at: datetime,
    person: PersonState | None = None,
) -> Decision:
    """Where a new lead goes, and (team, open now) which agent gets it."""
    rows = conn.execute(select(lead_routes).order_by(lead_routes.c.position, lead_routes.c.id))
    candidates = [r for r in rows if route == "auto" or r.name == route]
    chosen = next((r for r in candidates if _matches(r, lead_type, person, at)), None)
    if chosen is None:
        return Decision()
    if chosen.target_kind == "channel":
        return Decision(route=chosen.name, channel=chosen.target)
    team = conn.execute(select(lead_teams).where(lead_teams.c.name == chosen.target)).first()
    if team is None:
        return Decision(route=chosen.name)
    owner = pick_agent(conn, team) if is_open(team, at) else None
    return Decision(route=chosen.name, team=team.name, owner=owner)


def assign_waiting(ws: Workspace | Engine, at: datetime | None = None) -> int:
    """Give every waiting lead (a team, no owner, status new) of an open team to an agent,
    oldest first; returns how many were assigned. Idempotent; the scheduler calls it."""
    from rapport.leads.records import assign

    engine = ws if isinstance(ws, Engine) else ws.db
    at = at or now()
    assigned = 0
    with engine.begin() as conn:
        teams = {t.name: t for t in conn.execute(select(lead_teams)) if is_open(t, at)}
        if not teams:
            return 0
        waiting = conn.execute(
            select(leads.c.id, leads.c.team)
            .where(leads.c.team.in_(teams), leads.c.owner.is_(None), leads.c.status == "new")
            .order_by(leads.c.created_at, leads.c.id)
        ).all()
        for lead_id, team_name in waiting:
            team = conn.execute(select(lead_teams).where(lead_teams.c.name == team_name)).one()
            agent = pick_agent(conn, team)
            if agent is None:
                continue
            assign(conn, lead_id, agent, "routing", at, note="assigned at the team's opening")
            assigned += 1
    return assigned
