"""``/api/plan``: the tracking plan. Any signed-in role reads; admins write (audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from rapport import catalog
from rapport.accounts import Role
from rapport.catalog import (
    EventTypeBody,
    EventTypeOut,
    EventTypePatch,
    ImportSummary,
    ItemPropertyBody,
    PlanOut,
    PropertyBody,
    PropertyOut,
    PropertyPatch,
)
from rapport.web.auth import Principal, require

router = APIRouter(prefix="/api/plan", tags=["tracking plan"])
admin = require(Role.admin)
YAML = "application/yaml"
PropId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The property's id.")]


async def _plan_error(request: Request, exc: Exception) -> JSONResponse:
    """Every plan error becomes its HTTP status with the message (or the YAML errors list)."""
    assert isinstance(exc, catalog.PlanError)
    detail = exc.errors if isinstance(exc, catalog.PlanImportError) else str(exc)
    return JSONResponse({"detail": detail}, status_code=exc.status)


def setup(app: FastAPI) -> None:
    app.add_exception_handler(catalog.PlanError, _plan_error)


def _db(request: Request) -> Engine:
    db: Engine = request.app.state.ws.db
    return db


@router.get("")
def get_plan(request: Request, _: Principal = Depends(require())) -> PlanOut:
    """The whole plan: event types with their properties, common, user and item properties."""
    return catalog.get_plan(_db(request))


@router.get("/events")
def list_events(request: Request, _: Principal = Depends(require())) -> list[EventTypeOut]:
    return catalog.list_event_types(_db(request))


@router.post("/events", status_code=status.HTTP_201_CREATED)
def create_event(
    body: EventTypeBody, request: Request, who: Principal = Depends(admin)
) -> EventTypeOut:
    return catalog.create_event_type(_db(request), body, actor=who.name)


@router.get("/events/{name}")
def get_event(name: str, request: Request, _: Principal = Depends(require())) -> EventTypeOut:
    return catalog.get_event_type(_db(request), name)


@router.patch("/events/{name}")
def update_event(
    name: str, body: EventTypePatch, request: Request, who: Principal = Depends(admin)
) -> EventTypeOut:
    return catalog.update_event_type(_db(request), name, body, actor=who.name)


@router.delete("/events/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_event(name: str, request: Request, who: Principal = Depends(admin)) -> Response:
    """Delete an event type and its properties."""
    catalog.delete_event_type(_db(request), name, actor=who.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/events/{name}/properties", status_code=status.HTTP_201_CREATED)
def add_event_property(
    name: str, body: PropertyBody, request: Request, who: Principal = Depends(admin)
) -> PropertyOut:
    return catalog.add_event_property(_db(request), name, body, actor=who.name)


@router.post("/common-properties", status_code=status.HTTP_201_CREATED)
def add_common_property(
    body: PropertyBody, request: Request, who: Principal = Depends(admin)
) -> PropertyOut:
    """An event property every event may carry (channel, device...)."""
    return catalog.add_event_property(_db(request), None, body, actor=who.name)


@router.post("/user-properties", status_code=status.HTTP_201_CREATED)
def add_user_property(
    body: PropertyBody, request: Request, who: Principal = Depends(admin)
) -> PropertyOut:
    return catalog.add_user_property(_db(request), body, actor=who.name)


@router.post("/item-properties", status_code=status.HTTP_201_CREATED)
def add_item_property(
    body: ItemPropertyBody, request: Request, who: Principal = Depends(admin)
) -> PropertyOut:
    return catalog.add_item_property(_db(request), body, actor=who.name)


@router.get("/properties/{prop_id}")
def get_property(
    prop_id: PropId, request: Request, _: Principal = Depends(require())
) -> PropertyOut:
    return catalog.get_property(_db(request), prop_id)


@router.patch("/properties/{prop_id}")
def update_property(
    prop_id: PropId, body: PropertyPatch, request: Request, who: Principal = Depends(admin)
) -> PropertyOut:
    return catalog.update_property(_db(request), prop_id, body, actor=who.name)


@router.delete("/properties/{prop_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_property(prop_id: PropId, request: Request, who: Principal = Depends(admin)) -> Response:
    catalog.delete_property(_db(request), prop_id, actor=who.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/export", response_class=Response, responses={200: {"content": {YAML: {}}}})
def export_plan(request: Request, _: Principal = Depends(require())) -> Response:
    """The whole plan as YAML (the format of ``rapport plan import``)."""
    return Response(
        catalog.export_plan(_db(request)),
        media_type=YAML,
        headers={"Content-Disposition": 'attachment; filename="tracking-plan.yaml"'},
    )


@router.post(
    "/import",
    openapi_extra={
        "requestBody": {"required": True, "content": {YAML: {"schema": {"type": "string"}}}}
    },
)
async def import_plan(
    request: Request,
    replace: bool = Query(False, description="Delete what the file does not declare."),
    who: Principal = Depends(admin),
) -> ImportSummary:
    """Load a YAML plan (merge by default). Errors list every problem with its YAML path."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"body is not UTF-8 (byte {exc.start})") from None
    return await run_in_threadpool(catalog.import_plan, _db(request), text, replace, who.name)
