"""``/api/recommend/{kind}``: a person's (or an item's) recommendations from the in-memory
model (``rapport recommend build`` makes it; a new build is picked up within a minute).

``person`` is a person key (a merged-away key follows its survivor) or an identifier written
``type:value`` (``mobile:13800138000``); ``item`` asks for the item-based kinds of one item.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request

from rapport.identity import profile
from rapport.ingest.normalize import InvalidValue
from rapport.recommend.model import KINDS, Model
from rapport.recommend.serve import NoModel, Served
from rapport.warehouse import WarehouseBusy
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/recommend", tags=["recommend"])


def setup(app: FastAPI) -> None:
    app.state.recommend = Served(app.state.ws.warehouse)


def served_model(request: Request) -> Model:
    try:
        return request.app.state.recommend.model()
    except NoModel as exc:
        raise HTTPException(503, str(exc)) from None
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None


def resolve_person(ws: Any, model: Model, text: str) -> int:
    """The person key ``text`` names: a key the model knows, the survivor of a merged key,
    or the holder of a ``type:value`` identifier."""
    text = text.strip()
    try:
        if text.isdigit():
            key = int(text)
            return key if key in model.persons else profile.current_person(ws, key)
        id_type, sep, value = text.partition(":")
        if not sep or not value:
            raise HTTPException(422, "person: a person key or an identifier as type:value")
        found = profile.find_person(ws, id_type, value)
    except profile.PersonNotFound as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except InvalidValue as exc:
        raise HTTPException(422, f"person: not a usable {id_type} ({exc})") from None
    except WarehouseBusy as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    except ValueError as exc:  # an unknown identifier type
        raise HTTPException(422, f"person: {exc}") from None
    if found is None:
        raise HTTPException(404, f"no person has the {id_type} {value!r}")
    return found


def listing(model: Model, kind: str, person: int | None, item: str | None, n: int) -> list:
    return [
        {
            "item_id": rec.item_id,
            "name": model.name(rec.item_id),
            "category": found.category if (found := model.items.get(rec.item_id)) else None,
            "price": found.price if found else None,
            "score": rec.score,
            "reason": rec.reason,
        }
        for rec in model.recommend(kind, person, n, item=item)
    ]


@router.get("/{kind}")
def recommend(
    kind: str,
    request: Request,
    person: str | None = Query(None, description="person key, or an identifier type:value"),
    item: str | None = Query(None, description="an item id (item-based kinds only)"),
    n: int = Query(10, ge=1, le=100),
    _: Principal = Depends(require()),
) -> dict[str, Any]:
    """``kind``: guess_you_like | repurchase | cross_sell | up_sell."""
    if kind not in KINDS:
        raise HTTPException(404, f"no kind {kind!r}; one of {', '.join(KINDS)}")
    if (person is None) == (item is None):
        raise HTTPException(422, "give exactly one of person or item")
    if item is not None and kind == "repurchase":
        raise HTTPException(422, "repurchase is per person: give person")
    model = served_model(request)
    key = resolve_person(request.app.state.ws, model, person) if person is not None else None
    if item is not None and item not in model.items:
        raise HTTPException(404, f"no item {item!r} in the model")
    return {
        "kind": kind,
        "person": key,
        "item": item,
        "model_as_of": model.as_of.isoformat(),
        "items": listing(model, kind, key, item, n),
    }
