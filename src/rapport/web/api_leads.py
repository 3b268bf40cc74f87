"""``/api/leads``: lead rules, the leads themselves, outcomes from call centres, teams and routes.

Who may do what: marketers (and admins) write rules; admins write teams and routes; sales
agents claim leads, change the status of their own leads and add notes; an API token of role
``sales`` (a call-centre system) reports outcomes for any lead, idempotently by its external id.

Personal data in a lead's evidence is masked unless the caller may see it: admins, and the
sales agent who owns the lead (they have to call the person). Errors are
``{"detail", "field"}``; a rule's validation adds ``errors``: every problem with its field
(``trigger``, ``conditions``, ``suppression``...) and its position (a JSON path or a text
``line, column``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rapport.accounts import Role, Scope, audit
from rapport.catalog.pii import mask, pii_fields
from rapport.conditions.validate import context
from rapport.leads import records, routing, rules
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/leads", tags=["leads"])
RULE_EDITORS = (Role.marketer,)  # and admins
AGENTS = (Role.sales,)  # and admins
READERS = (Role.sales, Role.marketer, Role.viewer)


class Problem(Exception):
    """An answer ``{"detail", "field"[, "errors"]}`` with ``status``."""

    def __init__(
        self, status: int, detail: str, field: str = "", errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.errors = status, detail, field, errors


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    body: dict[str, Any] = {"detail": exc.detail, "field": exc.field}
    if exc.errors is not None:
        body["errors"] = exc.errors
    return JSONResponse(body, status_code=exc.status)


def setup(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)


def rule_problem(exc: rules.RuleError) -> Problem:
    first = exc.errors[0]
    where = f" {first['path']}" if first["path"] not in ("", "$") else ""
    status = 409 if isinstance(exc, rules.RuleExists) else 422
    return Problem(
        status, f"{first['field']}{where}: {first['message']}", first["field"], exc.errors
    )


def lead_problem(exc: records.LeadError | records.LeadNotFound) -> Problem:
    if isinstance(exc, records.LeadNotFound):
        return Problem(404, str(exc), "lead_id")
    return Problem(exc.status, exc.message, exc.field)


def _ws(request: Request) -> Any:
    return request.app.state.ws


# -- rules ------------------------------------------------------------------------------------
class ValidateIn(BaseModel):
    """A whole rule, or only some of its parts (the editor validates while one types)."""

    model_config = ConfigDict(extra="allow")
    trigger: dict[str, Any] | str | None = None
    conditions: dict[str, Any] | str | None = None
    suppression: dict[str, Any] | str | None = None
    cooldown: dict[str, Any] | str | None = None
    mode: Literal["realtime", "offline"] = "realtime"
    schedule: str | None = None


@router.get("/rules")
def list_rules(request: Request, _: Principal = Depends(require(*READERS))) -> list[dict[str, Any]]:
    return rules.list_rules(_ws(request).db)


@router.post("/rules/validate")
def validate_rule(
    body: ValidateIn, request: Request, _: Principal = Depends(require(*READERS, scope=Scope.read))
) -> dict[str, Any]:
    """``{"valid", "errors": [{"field", "path", "message"}], "text"}``, never an HTTP error."""
    values = body.model_dump()
    try:
        definition = rules.checked_definition(values, context(_ws(request)))
    except rules.RuleError as exc:
        return {"valid": False, "errors": exc.errors}
    return {"valid": True, "errors": [], "definition": definition, "text": rules.texts(definition)}


@router.post("/rules", status_code=201)
def create_rule(
    body: rules.RuleIn, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> dict[str, Any]:
    ws = _ws(request)
    try:
        created = rules.create_rule(ws.db, body, context(ws), actor=who.name)
    except rules.RuleError as exc:
        raise rule_problem(exc) from None
    audit(ws.db, who.name, "lead_rule.create", body.name, status=body.status)
    return created


def _rule(request: Request, name: str) -> dict[str, Any]:
    try:
        return rules.get_rule(_ws(request).db, name)
    except rules.RuleNotFound as exc:
        raise Problem(404, str(exc), "name") from None


@router.get("/rules/{name}")
def get_rule(
    name: str, request: Request, _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    found = _rule(request, name)
    found["versions"] = rules.versions(_ws(request).db, name)
    return found


@router.patch("/rules/{name}")
def update_rule(
    name: str,
    body: rules.RulePatch,
    request: Request,
    who: Principal = Depends(require(*RULE_EDITORS)),
) -> dict[str, Any]:
    ws = _ws(request)
    _rule(request, name)
    try:
        updated = rules.update_rule(ws.db, name, body, context(ws), actor=who.name)
    except rules.RuleError as exc:
        raise rule_problem(exc) from None
    audit(ws.db, who.name, "lead_rule.update", name, version=updated["version"])
    return updated


def _set_status(request: Request, name: str, status: str, who: Principal) -> dict[str, Any]:
    _rule(request, name)
    try:
        out = rules.set_status(_ws(request).db, name, status)
    except rules.RuleError as exc:
        raise rule_problem(exc) from None
    audit(_ws(request).db, who.name, f"lead_rule.{status}", name)
    return out


@router.post("/rules/{name}/activate")
def activate(
    name: str, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> dict[str, Any]:
    return _set_status(request, name, "live", who)


@router.post("/rules/{name}/pause")
def pause(
    name: str, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> dict[str, Any]:
    return _set_status(request, name, "paused", who)


@router.delete("/rules/{name}", status_code=204)
def delete_rule(
    name: str, request: Request, who: Principal = Depends(require(*RULE_EDITORS))
) -> Response:
    _rule(request, name)
    rules.delete_rule(_ws(request).db, name)
    audit(_ws(request).db, who.name, "lead_rule.delete", name)
    return Response(status_code=204)


class BacktestIn(BaseModel):
    """The period (default: the 7 days before now) and what counts as converting."""

    model_config = ConfigDict(extra="forbid")
    start: datetime | None = Field(None, description="ISO-8601; UTC if naive")
    end: datetime | None = Field(None, description="exclusive; default now")
    goal: str = Field("order_paid", min_length=1, max_length=100, description="the goal event")
    days: int = Field(7, ge=1, le=365, description="converted: did the goal within these days")


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hours: float = Field(24, gt=0, le=24 * 31, description="the last N hours of event time")
    end: datetime | None = Field(None, description="default now")
    goal: str = Field("order_paid", min_length=1, max_length=100)
    days: int = Field(7, ge=1, le=365)


def _typed_rule(request: Request, name: str) -> rules.LeadRule:
    _rule(request, name)
    with _ws(request).db.connect() as conn:
        return rules.load(conn, name)


def masked_sample(ws: Any, who: Principal, result: dict[str, Any]) -> dict[str, Any]:
    """A backtest's result with personal data in its sample's evidence masked (as leads')."""
    if who.sees_pii:
        return result
    fields = pii_fields(ws.db)
    sample = [{**s, "evidence": mask(s["evidence"], fields)} for s in result["sample"]]
    return {**result, "sample": sample}


@router.post("/rules/{name}/backtest")
def backtest_rule(
    name: str,
    body: BacktestIn,
    request: Request,
    who: Principal = Depends(require(*RULE_EDITORS)),
) -> dict[str, Any]:
    """How many leads the rule (as saved) would have made in ``[start, end)``, and what became
    of those persons; writes nothing (``rapport.leads.backtest``)."""
    from rapport.leads import backtest

    rule = _typed_rule(request, name)
    end = _utc(body.end) or datetime.now(UTC)
    start = _utc(body.start) or end - timedelta(days=7)
    if start >= end:
        raise Problem(422, "start: the period must start before it ends", "start")
    result = backtest.backtest(_ws(request), rule, start, end, goal=body.goal, days=body.days)
    return masked_sample(_ws(request), who, result)


@router.post("/rules/{name}/dry-run")
def dry_run_rule(
    name: str,
    body: DryRunIn,
    request: Request,
    who: Principal = Depends(require(*RULE_EDITORS)),
) -> dict[str, Any]:
    """The live stream logic of the rule over the last ``hours`` of events, writing nothing."""
    from rapport.leads import backtest

    rule = _typed_rule(request, name)
    result = backtest.dry_run(
        _ws(request), rule, body.hours, _utc(body.end), goal=body.goal, days=body.days
    )
    return masked_sample(_ws(request), who, result)


# -- teams and routes (admins) ------------------------------------------------------------------
def _routing_problem(exc: Exception) -> Problem:
    if isinstance(exc, routing.RoutingNotFound):
        return Problem(404, str(exc), "name")
    assert isinstance(exc, routing.RoutingError)
    return Problem(409 if exc.message.endswith("exists") else 422, exc.message, exc.field)


@router.get("/teams")
def list_teams(request: Request, _: Principal = Depends(require(*READERS))) -> list[dict[str, Any]]:
    return routing.list_teams(_ws(request).db)


@router.post("/teams", status_code=201)
def create_team(
    body: routing.TeamIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    try:
        out = routing.create_team(_ws(request).db, body)
    except routing.RoutingError as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_team.create", body.name)
    return out


@router.patch("/teams/{name}")
def update_team(
    name: str,
    body: routing.TeamPatch,
    request: Request,
    who: Principal = Depends(require(Role.admin)),
) -> dict[str, Any]:
    # a null field means "unchanged", as an absent one does (not "set to null")
    body = routing.TeamPatch(**body.model_dump(exclude_none=True))
    try:
        out = routing.update_team(_ws(request).db, name, body)
    except (routing.RoutingError, routing.RoutingNotFound) as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_team.update", name)
    return out


@router.delete("/teams/{name}", status_code=204)
def delete_team(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    try:
        routing.delete_team(_ws(request).db, name)
    except routing.RoutingNotFound as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_team.delete", name)
    return Response(status_code=204)


@router.get("/routes")
def list_routes(
    request: Request, _: Principal = Depends(require(*READERS))
) -> list[dict[str, Any]]:
    return routing.list_routes(_ws(request).db)


@router.post("/routes", status_code=201)
def create_route(
    body: routing.RouteIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    try:
        out = routing.create_route(_ws(request).db, body)
    except routing.RoutingError as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_route.create", body.name)
    return out


@router.put("/routes/{name}")
def replace_route(
    name: str,
    body: routing.RouteIn,
    request: Request,
    who: Principal = Depends(require(Role.admin)),
) -> dict[str, Any]:
    try:
        out = routing.replace_route(_ws(request).db, name, body)
    except (routing.RoutingError, routing.RoutingNotFound) as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_route.update", name)
    return out


@router.delete("/routes/{name}", status_code=204)
def delete_route(
    name: str, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    try:
        routing.delete_route(_ws(request).db, name)
    except routing.RoutingNotFound as exc:
        raise _routing_problem(exc) from None
    audit(_ws(request).db, who.name, "lead_route.delete", name)
    return Response(status_code=204)


@router.post("/assign-waiting")
def assign_waiting(request: Request, _: Principal = Depends(require(Role.admin))) -> dict[str, int]:
    """Hand the leads waiting for their team's working hours to agents now (the scheduler
    calls ``routing.assign_waiting`` itself)."""
    return {"assigned": routing.assign_waiting(_ws(request))}


# -- leads ----------------------------------------------------------------------------------
def masked(request: Request, who: Principal, lead: dict[str, Any]) -> dict[str, Any]:
    """The lead with personal data in its evidence masked unless ``who`` may see it."""
    if who.sees_pii or (who.role is Role.sales and lead.get("owner") == who.name):
        return lead
    fields = pii_fields(_ws(request).db)
    out = {**lead, "evidence": mask(lead["evidence"], fields)}
    if "notes" in out:  # agents write what the person told them: the notes follow the evidence
        out["notes"] = [{**n, "body": "*** (masked)"} for n in out["notes"]]
    return out


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("")
def list_leads(
    request: Request,
    status: str | None = Query(None, description="new, assigned, contacted, ..."),
    type_: str | None = Query(None, alias="type", description="lead type"),
    owner: str | None = Query(None, description="an agent; `me`; `-` for unassigned"),
    team: str | None = None,
    since: datetime | None = Query(None, description="created from (ISO-8601; UTC if naive)"),
    until: datetime | None = Query(None, description="created before"),
    person: int | None = Query(None, description="a person's id"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    who: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """Leads newest first, filtered and paged."""
    if status and status not in records.STATUSES:
        raise Problem(422, f"{status!r} is not one of {', '.join(records.STATUSES)}", "status")
    rows, total = records.list_leads(
        _ws(request).db,
        status=status,
        lead_type=type_,
        owner=who.name if owner == "me" else owner,
        team=team,
        since=_utc(since),
        until=_utc(until),
        person_key=person,
        limit=limit,
        offset=offset,
    )
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "leads": [masked(request, who, r) for r in rows],
    }


def _lead(request: Request, lead_id: int) -> dict[str, Any]:
    try:
        return records.get_lead(_ws(request).db, lead_id)
    except records.LeadNotFound as exc:
        raise lead_problem(exc) from None


@router.get("/{lead_id}")
def get_lead(
    lead_id: int, request: Request, who: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    """The lead with its evidence, history and notes."""
    return masked(request, who, _lead(request, lead_id))


@router.post("/{lead_id}/claim")
def claim(
    lead_id: int, request: Request, who: Principal = Depends(require(*AGENTS))
) -> dict[str, Any]:
    """Assign the lead to me."""
    try:
        records.claim(_ws(request).db, lead_id, who.name)
    except (records.LeadError, records.LeadNotFound) as exc:
        raise lead_problem(exc) from None
    return masked(request, who, _lead(request, lead_id))


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str = Field(description="the new status")
    note: str | None = Field(None, max_length=5000)


@router.post("/{lead_id}/status")
def change_status(
    lead_id: int, body: StatusIn, request: Request, who: Principal = Depends(require(*AGENTS))
) -> dict[str, Any]:
    """Move the lead on (allowed transitions only); agents change their own leads."""
    try:
        records.change_status(
            _ws(request).db,
            lead_id,
            body.status,
            who.name,
            note=body.note,
            owner_only=who.name if who.role is Role.sales else None,
        )
    except (records.LeadError, records.LeadNotFound) as exc:
        raise lead_problem(exc) from None
    return masked(request, who, _lead(request, lead_id))


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: str = Field(min_length=1, max_length=5000)


@router.post("/{lead_id}/notes", status_code=201)
def add_note(
    lead_id: int, body: NoteIn, request: Request, who: Principal = Depends(require(*AGENTS))
) -> dict[str, Any]:
    try:
        return records.add_note(_ws(request).db, lead_id, who.name, body.body)
    except (records.LeadError, records.LeadNotFound) as exc:
        raise lead_problem(exc) from None


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str = Field(description="contacted, converted, closed_lost or invalid")
    note: str | None = Field(None, max_length=5000)
    external_id: str | None = Field(
        None, max_length=200, description="the call's id in your system: a repeat is ignored"
    )


@router.post("/{lead_id}/outcome")
def outcome(
    lead_id: int, body: OutcomeIn, request: Request, who: Principal = Depends(require(*AGENTS))
) -> dict[str, Any]:
    """An external call-centre system reports what came of a lead. Sending the same
    ``external_id`` again answers the lead as it is, with ``"duplicate": true``."""
    try:
        lead, changed = records.change_status(
            _ws(request).db,
            lead_id,
            body.status,
            who.name,
            note=body.note,
            external_id=body.external_id,
        )
    except (records.LeadError, records.LeadNotFound) as exc:
        raise lead_problem(exc) from None
    return {"lead_id": lead.id, "status": lead.status, "duplicate": not changed}
