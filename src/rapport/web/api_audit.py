"""``GET /api/audit``: the audit log for admins, newest first, filtered by actor, action, time.

What is recorded: sign-ins (``login``, ``login.failed``), token changes, exports, erasures and
every change to users, sources, the plan, rules, campaigns, journeys and placements (see
docs/operations.md, "Security").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Engine, func, or_, select

from rapport.accounts import Role
from rapport.db.tables import audit_log
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/audit", tags=["audit"])

MAX_LIMIT = 1000


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None


def _where(actor: str | None, action: str | None, since: datetime | None) -> list[Any]:
    clauses: list[Any] = []
    if actor:
        clauses.append(audit_log.c.actor == actor)
    if action:  # "campaign" matches campaign.create, campaign.send ...
        clauses.append(
            or_(
                audit_log.c.action == action,
                audit_log.c.action.startswith(action.rstrip(".") + ".", autoescape=True),
            )
        )
    if since is not None:
        clauses.append(audit_log.c.at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
    return clauses


def query(
    engine: Engine,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEntry]:
    """Matching entries, newest first."""
    stmt = (
        select(audit_log)
        .where(*_where(actor, action, since))
        .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(max(1, min(limit, MAX_LIMIT)))
        .offset(max(0, offset))
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    out = []
    for r in rows:
        item = dict(r)
        if item["at"].tzinfo is None:
            item["at"] = item["at"].replace(tzinfo=UTC)
        out.append(AuditEntry.model_validate(item))
    return out


def count(
    engine: Engine,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
) -> int:
    with engine.connect() as conn:
        stmt = select(func.count()).select_from(audit_log).where(*_where(actor, action, since))
        return int(conn.execute(stmt).scalar_one())


def actions(engine: Engine) -> list[str]:
    """Every action recorded so far (for the console's filter)."""
    with engine.connect() as conn:
        stmt = select(audit_log.c.action).distinct().order_by(audit_log.c.action)
        return [r.action for r in conn.execute(stmt)]


@router.get("", response_model=list[AuditEntry])
def api_query(
    request: Request,
    actor: str | None = Query(None, description="who: a username, or token:<name>"),
    action: str | None = Query(None, description="an action (token.rotate) or its family (token)"),
    since: datetime | None = Query(None, description="ISO-8601; UTC if no offset"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    _: Principal = Depends(require(Role.admin)),
) -> list[AuditEntry]:
    """The audit log, newest first."""
    return query(request.app.state.ws.db, actor, action, since, limit, offset)
