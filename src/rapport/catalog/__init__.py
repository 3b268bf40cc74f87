"""The tracking plan (metadata catalogue): event types, event/user/item properties, PII flags.

Hot path: ``current_plan(engine).check(message) -> list[Violation]``. Definitions: the CRUD
functions below, and ``export_plan`` / ``import_plan`` for the YAML file.
"""

from rapport.catalog.cache import current_plan, invalidate
from rapport.catalog.models import (
    DataType,
    EventKind,
    EventTypeBody,
    EventTypeOut,
    EventTypePatch,
    ItemPropertyBody,
    PlanOut,
    PropertyBody,
    PropertyOut,
    PropertyPatch,
    Scope,
)
from rapport.catalog.plan import (
    Conflict,
    Invalid,
    NotFound,
    PlanError,
    add_event_property,
    add_item_property,
    add_user_property,
    create_event_type,
    delete_event_type,
    delete_property,
    get_event_type,
    get_plan,
    get_property,
    list_event_types,
    update_event_type,
    update_property,
)
from rapport.catalog.validate import CompiledPlan, Violation
from rapport.catalog.yaml_io import ImportSummary, PlanImportError, export_plan, import_plan

__all__ = [
    "CompiledPlan",
    "Conflict",
    "DataType",
    "EventKind",
    "EventTypeBody",
    "EventTypeOut",
    "EventTypePatch",
    "ImportSummary",
    "Invalid",
    "ItemPropertyBody",
    "NotFound",
    "PlanError",
    "PlanImportError",
    "PlanOut",
    "PropertyBody",
    "PropertyOut",
    "PropertyPatch",
    "Scope",
    "Violation",
    "add_event_property",
    "add_item_property",
    "add_user_property",
    "create_event_type",
    "current_plan",
    "delete_event_type",
    "delete_property",
    "export_plan",
    "get_event_type",
    "get_plan",
    "get_property",
    "import_plan",
    "invalidate",
    "list_event_types",
    "update_event_type",
    "update_property",
]
