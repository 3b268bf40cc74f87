"""``/api/conditions``: parse the text form, print a tree as text, validate against the plan.

What the console's audience builder and rule editors call while the user types. Every error is
``{"path", "message"}``: a text position (``line 1, column 14``) for the text form, a JSON path
(``$.all[2].where[0].field``) for the tree.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator

from rapport.accounts import Scope
from rapport.conditions import text as condition_text
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import Condition, from_json, to_json
from rapport.conditions.validate import context
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/conditions", tags=["conditions"])
READ = require(scope=Scope.read)  # parsing, printing and checking change nothing

#: the ``kind`` tags pydantic puts in an error's location after a union position
_KINDS = frozenset({"and", "or", "not", "attr", "tag", "segment", "did", "sequence", "event"})


class TextIn(BaseModel):
    text: str = Field(description="e.g. did pay sum(amount) >= 100 in last 30 days")


class ConditionIn(BaseModel):
    condition: dict[str, Any] = Field(description="the JSON form (a node with `kind`)")


class ValidateIn(BaseModel):
    """Either the JSON form or the text form."""

    condition: dict[str, Any] | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ValidateIn:
        if (self.condition is None) == (self.text is None):
            raise ValueError("send either `condition` (JSON) or `text`")
        return self


def _error(exc: ConditionError) -> dict[str, str]:
    return {"path": exc.path, "message": exc.message}


def _json_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location (``condition, and, all, 0, did, where, 0, op``) as a JSON path."""
    path, expect_kind, previous = "$", True, None
    for part in loc[1:]:
        if expect_kind and part in _KINDS:
            expect_kind = False
            continue
        if isinstance(part, int):
            path += f"[{part}]"
            expect_kind = previous in ("all", "any")
        else:
            path += f".{part}"
            expect_kind = part == "cond"
        previous = part
    return path


def _tree(data: dict[str, Any]) -> Condition:
    """The tree of a JSON form; ``ConditionErrors`` lists every problem pydantic found."""
    try:
        return from_json(data)
    except ValidationError as exc:
        raise ConditionErrors(
            [
                ConditionError(str(e["msg"]).removeprefix("Value error, "), _json_path(e["loc"]))
                for e in exc.errors()
            ]
        ) from None


class ConditionErrors(Exception):
    def __init__(self, errors: list[ConditionError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


def _unprocessable(errors: list[ConditionError]) -> JSONResponse:
    return JSONResponse({"detail": [_error(e) for e in errors]}, status_code=422)


@router.post("/parse", response_model=None)
def parse(body: TextIn, _: Principal = Depends(READ)) -> dict[str, Any] | JSONResponse:
    """The tree of a text condition and its canonical text; 422 names the line and column."""
    try:
        cond = condition_text.parse(body.text)
        printed = condition_text.to_text(cond)
    except ConditionError as exc:
        return _unprocessable([exc])
    return {"condition": to_json(cond), "text": printed}


@router.post("/print", response_model=None)
def print_(body: ConditionIn, _: Principal = Depends(READ)) -> dict[str, Any] | JSONResponse:
    """The text form of a JSON condition; 422 lists what is malformed, with JSON paths."""
    try:
        return {"text": condition_text.to_text(_tree(body.condition))}
    except ConditionErrors as exc:
        return _unprocessable(exc.errors)
    except ConditionError as exc:
        return _unprocessable([exc])


@router.post("/validate")
def validate(request: Request, body: ValidateIn, _: Principal = Depends(READ)) -> dict[str, Any]:
    """Every problem of a condition: syntax, then the events, properties, attributes, tags
    and segments it names against the tracking plan and the workspace."""
    try:
        if body.text is not None:
            cond = condition_text.parse(body.text)
        else:
            assert body.condition is not None
            cond = _tree(body.condition)
    except ConditionErrors as exc:
        return {"valid": False, "errors": [_error(e) for e in exc.errors]}
    except ConditionError as exc:
        return {"valid": False, "errors": [_error(exc)]}
    errors = context(request.app.state.ws).check(cond)
    return {"valid": not errors, "errors": [_error(e) for e in errors]}
