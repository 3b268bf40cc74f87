"""``/api/identity``: the identity rules (types, blocklist, survivorship) and the review queue.

Admins edit the rules and run matching; marketers (and admins) decide match candidates;
everyone signed in reads. Compared values in candidates' evidence and blocked values are
personal data: masked for roles that may not see it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from rapport.accounts import Role, audit
from rapport.catalog.pii import mask_value, pii_fields
from rapport.identity import config as cfg
from rapport.identity import matching
from rapport.identity.resolve import block
from rapport.ingest.normalize import InvalidValue
from rapport.web.auth import Principal, require
from rapport.web.params import MAX_OFFSET

router = APIRouter(prefix="/api/identity", tags=["identity"])


class TypeIn(BaseModel):
    priority: int = Field(description="higher wins when a limit forces a choice")
    max_per_person: int | None = Field(None, description="distinct values per person; null: any")
    merge: bool = Field(True, description="false: identifies a person but never merges two")
    normaliser: str = Field("trim", description=" | ".join(cfg.NORMALISERS))
    pattern: str | None = Field(None, description="regex the normalised value must match")
    paths: list[str] = Field(default_factory=list, description="e.g. traits.mobile, userId")
    scope_path: str | None = Field(None, description="e.g. context.wechat.appid")
    shared_after: int | None = Field(None, description="auto-block after this many refusals")
    description: str = ""


class BlockIn(BaseModel):
    reason: str = Field(min_length=1, description="why; shown in the history")
    id_type: str | None = Field(None, description="only for this type (null: every type)")
    value: str | None = Field(None, description="an exact value (normalised for its type)")
    pattern: str | None = Field(None, description="or a regular expression")


class RuleIn(BaseModel):
    property: str = Field(min_length=1)
    rule: str = Field(description=" | ".join(cfg.SURVIVORSHIP_RULES))
    sources: list[str] = Field(default_factory=list, description="for source_priority, best first")


class RulesIn(BaseModel):
    rules: list[RuleIn]


class MatchIn(BaseModel):
    merge_threshold: float = Field(default=matching.MERGE_THRESHOLD, gt=0, le=1)
    review_threshold: float = Field(default=matching.REVIEW_THRESHOLD, gt=0, le=1)


# -- identifier types -----------------------------------------------------------------------
def types_list(db: Any) -> list[dict[str, Any]]:
    return [t.as_dict() for t in sorted(cfg.load(db).types, key=lambda t: (-t.priority, t.name))]


def save_type(db: Any, name: str, body: TypeIn) -> dict[str, Any]:
    """Validate and store; ``ConfigError`` -> 422 naming the field."""
    t = cfg.IdentifierTypeConfig(name=name, **body.model_dump() | {"paths": tuple(body.paths)})
    try:
        cfg.validate_type(t)
        cfg.save_type(db, t)
    except cfg.ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    found = cfg.load(db).type(name)
    assert found is not None
    return found.as_dict()


@router.get("/types")
def list_types(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    """Identifier types, highest priority first."""
    return types_list(request.app.state.ws.db)


@router.put("/types/{name}")
def put_type(
    name: str, body: TypeIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Create or replace a type. New priorities and limits apply to links resolved from now
    on; ``rapport identity rebuild`` re-applies them to everything."""
    db = request.app.state.ws.db
    saved = save_type(db, name, body)
    audit(db, who.name, "identity.type", name, **body.model_dump())
    return saved


# -- blocklist ------------------------------------------------------------------------------
def blocklist(db: Any, sees_pii: bool) -> list[dict[str, Any]]:
    rows = [b.as_dict() for b in cfg.load(db).blocklist]
    if not sees_pii:
        for row in rows:
            row["value"] = mask_value(row["value"])
    return rows


def add_block(ws: Any, body: BlockIn, actor: str) -> dict[str, Any]:
    """Store the entry and detach the known values it matches (their persons are split)."""
    try:
        block_id, detached = block(
            ws,
            reason=body.reason.strip(),
            actor=actor,
            id_type=body.id_type,
            value=body.value,
            pattern=body.pattern,
        )
    except cfg.ConfigError as exc:
        raise HTTPException(422, str(exc)) from None
    except InvalidValue as exc:
        raise HTTPException(422, f"value: {exc}") from None
    entry = next(b for b in cfg.load(ws.db).blocklist if b.id == block_id)
    return entry.as_dict() | {"detached": detached}


@router.get("/blocklist")
def list_blocklist(request: Request, who: Principal = Depends(require())) -> list[dict[str, Any]]:
    """Blocked values and patterns; ``auto`` marks shared values found by the graph."""
    return blocklist(request.app.state.ws.db, who.sees_pii)


@router.post("/blocklist", status_code=status.HTTP_201_CREATED)
def post_blocklist(
    body: BlockIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Block an exact value (normalised for ``id_type``) or a regex; persons it had merged are
    split at once."""
    ws = request.app.state.ws
    entry = add_block(ws, body, who.name)
    audit(ws.db, who.name, "identity.block", str(entry["id"]), reason=body.reason)
    return entry


@router.delete("/blocklist/{block_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_blocklist(
    block_id: int, request: Request, who: Principal = Depends(require(Role.admin))
) -> Response:
    """Unblock: new records link through the value again; persons split by the block stay
    apart until ``rapport identity rebuild``."""
    db = request.app.state.ws.db
    if cfg.remove_block(db, block_id) is None:
        raise HTTPException(404, f"no blocklist entry {block_id}")
    audit(db, who.name, "identity.unblock", str(block_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- survivorship ---------------------------------------------------------------------------
def rules_view(ws: Any) -> dict[str, Any]:
    from rapport.identity.survivorship import known_properties

    saved = cfg.survivorship(ws.db)
    with ws.warehouse.connect() as con:
        properties = sorted(set(known_properties(con, ws.db)) | set(saved))
    return {
        "default": cfg.DEFAULT_SURVIVORSHIP,
        "available": list(cfg.SURVIVORSHIP_RULES),
        "properties": properties,
        "rules": [
            {"property": r.property, "rule": r.rule, "sources": list(r.sources)}
            for r in sorted(saved.values(), key=lambda r: r.property)
        ],
    }


def save_rules(db: Any, rules: list[RuleIn]) -> None:
    try:
        cfg.save_survivorship(
            db,
            [
                cfg.SurvivorshipRule(
                    r.property.strip(), r.rule, tuple(s.strip() for s in r.sources)
                )
                for r in rules
            ],
        )
    except cfg.ConfigError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/survivorship")
def get_survivorship(request: Request, _: Principal = Depends(require())) -> dict[str, Any]:
    """The rule of each property that has one (others: ``default``) and the known properties."""
    return rules_view(request.app.state.ws)


@router.put("/survivorship")
def put_survivorship(
    body: RulesIn, request: Request, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Set the rules of the listed properties (the others keep theirs). ``POST
    /api/identity/profiles`` rebuilds the merged profiles with them."""
    ws = request.app.state.ws
    save_rules(ws.db, body.rules)
    audit(ws.db, who.name, "identity.survivorship", "", rules=[r.model_dump() for r in body.rules])
    return rules_view(ws)


@router.post("/profiles")
def post_profiles(request: Request, who: Principal = Depends(require(Role.admin))) -> dict:
    """Rebuild the warehouse table ``profiles`` (one row per person, merged values)."""
    from rapport.identity.survivorship import build_profiles

    ws = request.app.state.ws
    rows = build_profiles(ws)
    audit(ws.db, who.name, "identity.profiles", "", rows=rows)
    return {"profiles": rows}


@router.get("/conflicts")
def get_conflicts(request: Request, _: Principal = Depends(require())) -> list[dict[str, Any]]:
    """Per property, the persons whose sources disagree, with masked examples."""
    from rapport.identity.survivorship import conflict_report

    return conflict_report(request.app.state.ws)


# -- probabilistic matching and the review queue --------------------------------------------
def shown_candidate(candidate: dict[str, Any], sees_pii: bool, personal: frozenset[str]) -> dict:
    """The candidate for output; compared values masked unless the role sees personal data."""
    if sees_pii:
        return candidate
    evidence = dict(candidate.get("evidence") or {})
    fields = {}
    for name, field in (evidence.get("fields") or {}).items():
        if name in personal or name == "email_local":
            field = {**field, "a": mask_value(field.get("a")), "b": mask_value(field.get("b"))}
        fields[name] = field
    return {**candidate, "evidence": {**evidence, "fields": fields}}


@router.get("/candidates")
def list_candidates(
    request: Request,
    status_: str = Query(
        "pending", alias="status", description="pending | accepted | rejected | all"
    ),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    who: Principal = Depends(require()),
) -> dict[str, Any]:
    """Match candidates, most probable first, with the compared values and agreement levels."""
    if status_ not in (*matching.STATUSES, "all"):
        raise HTTPException(422, f"status: unknown status {status_!r}")
    db = request.app.state.ws.db
    rows, total = matching.list_candidates(db, None if status_ == "all" else status_, limit, offset)
    personal = pii_fields(db)
    return {
        "candidates": [shown_candidate(r, who.sees_pii, personal) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


def decide(ws: Any, candidate_id: int, accept: bool, actor: str) -> dict[str, Any]:
    try:
        if accept:
            out = matching.accept_candidate(ws, candidate_id, actor)
        else:
            out = matching.reject_candidate(ws, candidate_id, actor)
    except matching.CandidateError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    audit(ws.db, actor, f"identity.candidate.{out['status']}", str(candidate_id))
    return out


@router.post("/candidates/{candidate_id}/accept")
def accept(
    candidate_id: int, request: Request, who: Principal = Depends(require(Role.marketer))
) -> dict[str, Any]:
    """The two are one person: they are linked (a ``manual`` link in the history)."""
    return decide(request.app.state.ws, candidate_id, True, who.name)


@router.post("/candidates/{candidate_id}/reject")
def reject(
    candidate_id: int, request: Request, who: Principal = Depends(require(Role.marketer))
) -> dict[str, Any]:
    """Two different persons: the pair is never proposed again."""
    return decide(request.app.state.ws, candidate_id, False, who.name)


def run(ws: Any, body: MatchIn, actor: str) -> dict[str, Any]:
    try:
        summary = matching.run_matching(
            ws, merge_threshold=body.merge_threshold, review_threshold=body.review_threshold
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    audit(
        ws.db, actor, "identity.match", "", **{k: v for k, v in summary.items() if k != "refusals"}
    )
    return summary


@router.post("/match")
def post_match(
    request: Request, body: MatchIn | None = None, who: Principal = Depends(require(Role.admin))
) -> dict[str, Any]:
    """Run probabilistic matching now: sure pairs are linked, likely ones queued. A summary."""
    return run(request.app.state.ws, body or MatchIn(), who.name)
