"""Placement definitions in the metadata DB: a default content and variants, each shown to an
existing audience (or one bucket of a segmentation) by priority.

Checked on save so that the hot path never meets a bad definition: content is a JSON object of
at most ``MAX_CONTENT_BYTES``, variant names are unique, and every audience exists (an unknown
one is named in the error, with a suggestion when one is close).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import delete, insert, select, update

from rapport.conditions.model import InSegment
from rapport.conditions.validate import context
from rapport.db.tables import placements
from rapport.personalize.choose import personalizer
from rapport.personalize.errors import PlacementError, PlacementExists, PlacementNotFound

if TYPE_CHECKING:
    from rapport.workspace import Workspace

MAX_CONTENT_BYTES = 16 * 1024  # a banner's fields, not a page: keeps answers small and fast
MAX_VARIANTS = 50
NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


def _content(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:  # e.g. an integer past 64 bits: a 422, not a crash
        raise ValueError(f"cannot be stored as JSON: {exc}") from None
    if size > MAX_CONTENT_BYTES:
        raise ValueError(f"is {size:,} bytes of JSON; at most {MAX_CONTENT_BYTES:,}")
    return value


class VariantIn(BaseModel):
    name: str = Field("", max_length=100, description="unique in the placement; blank: audience")
    audience: str = Field(..., min_length=1, max_length=100, description="an existing segment")
    bucket: str | None = Field(None, max_length=100, description="a bucket of a segmentation")
    content: dict[str, Any] = Field(..., description="free-form: title, image, link, text…")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher wins")
    active: bool = True

    _check_content = field_validator("content")(_content)

    @model_validator(mode="after")
    def _named(self) -> VariantIn:
        self.bucket = self.bucket or None
        if not self.name:
            self.name = self.audience if self.bucket is None else f"{self.audience}/{self.bucket}"
        return self


class PlacementIn(BaseModel):
    name: str = Field(..., pattern=NAME.pattern)
    description: str = Field("", max_length=2000)
    default: dict[str, Any] = Field(default_factory=dict, description="shown when no variant")
    variants: list[VariantIn] = Field(default_factory=list, max_length=MAX_VARIANTS)

    _check_default = field_validator("default")(_content)


def check(ws: Workspace, body: PlacementIn) -> None:
    """Raise ``PlacementError`` for a duplicate variant name or an unknown audience/bucket."""
    seen: set[str] = set()
    names = context(ws)
    for i, v in enumerate(body.variants):
        if v.name in seen or v.name == "default":
            raise PlacementError(f"variants[{i}].name", f"{v.name!r} is used twice or reserved")
        seen.add(v.name)
        problems = names.check(InSegment(segment=v.audience, bucket=v.bucket))
        if problems:
            where = "bucket" if problems[0].path.endswith(".bucket") else "audience"
            raise PlacementError(f"variants[{i}].{where}", problems[0].message)


def _public(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "description": row.description,
        "default": row.default_content,
        "variants": row.variants,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def list_placements(ws: Workspace) -> list[dict[str, Any]]:
    with ws.db.connect() as conn:
        return [_public(r) for r in conn.execute(select(placements).order_by(placements.c.name))]


def get_placement(ws: Workspace, name: str) -> dict[str, Any]:
    with ws.db.connect() as conn:
        row = conn.execute(select(placements).where(placements.c.name == name)).first()
    if row is None:
        raise PlacementNotFound(name)
    return _public(row)


def _values(body: PlacementIn) -> dict[str, Any]:
    return {
        "description": body.description,
        "default_content": body.default,
        "variants": [v.model_dump() for v in body.variants],
        "updated_at": datetime.now(UTC),
    }


def create_placement(ws: Workspace, body: PlacementIn) -> dict[str, Any]:
    check(ws, body)
    values = _values(body)
    with ws.db.begin() as conn:
        if conn.execute(select(placements.c.id).where(placements.c.name == body.name)).first():
            raise PlacementExists("name", f"a placement named {body.name!r} already exists")
        conn.execute(
            insert(placements).values(name=body.name, created_at=values["updated_at"], **values)
        )
    _changed(ws)
    return get_placement(ws, body.name)


def update_placement(ws: Workspace, name: str, body: PlacementIn) -> dict[str, Any]:
    """Replace the placement's definition (``body.name`` must be ``name``: no renames)."""
    if body.name != name:
        raise PlacementError("name", "a placement cannot be renamed; create a new one")
    check(ws, body)
    with ws.db.begin() as conn:
        done = conn.execute(
            update(placements).where(placements.c.name == name).values(**_values(body))
        )
    if not done.rowcount:
        raise PlacementNotFound(name)
    _changed(ws)
    return get_placement(ws, name)


def delete_placement(ws: Workspace, name: str) -> None:
    with ws.db.begin() as conn:
        done = conn.execute(delete(placements).where(placements.c.name == name))
    if not done.rowcount:
        raise PlacementNotFound(name)
    _changed(ws)


def _changed(ws: Workspace) -> None:
    """This process sees its own edits at once; others within ``choose.RECHECK_S``."""
    personalizer(ws).invalidate()
