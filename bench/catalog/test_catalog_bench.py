"""Microseconds per message for the compiled tracking-plan validator (the collector's hot path).

Uses the example plan; compares against validating the same message with a pydantic model per
event type (what the validator avoids). Median of 3 runs. Run with:

    .venv/bin/pytest -m bench -s bench/catalog
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)

from rapport import catalog
from rapport.settings import load_settings
from rapport.workspace import Workspace

EXAMPLE = Path(__file__).parents[2] / "examples" / "tracking-plan.yaml"
N = 200_000
RUNS = 3

VALID = {
    "type": "track",
    "event": "view_product",
    "userId": "u1",
    "messageId": "m1",
    "timestamp": "2024-05-01T08:00:00Z",
    "properties": {
        "item_id": "sku-1",
        "category": "fridge",
        "price": 6999.0,
        "duration_s": 75,
        "scene": "search",
        "channel": "app",
    },
    "context": {"ip": "10.0.0.1", "library": {"name": "analytics-python", "version": "2.3"}},
}
INVALID = {
    **VALID,
    "properties": {"category": "phone", "price": "6999", "duration_s": -1, "colour": "red"},
}
IDENTIFY = {
    "type": "identify",
    "userId": "u1",
    "traits": {"age": 30, "gender": "male", "city": "Hangzhou", "member_level": "gold"},
}


def _per_message(check: Any, message: dict[str, Any]) -> float:
    """Median over RUNS of the CPU µs one ``check(message)`` takes (robust on a busy machine)."""
    runs = []
    for _ in range(RUNS):
        start = time.process_time()
        for _ in range(N):
            check(message)
        runs.append((time.process_time() - start) / N * 1e6)
    return statistics.median(runs)


def _pydantic_models(plan: catalog.PlanOut) -> dict[str, type[BaseModel]]:
    """A strict pydantic model per event type (types, allowed values, ranges), built naively."""
    py = {"string": StrictStr, "integer": StrictInt, "number": float, "boolean": StrictBool}
    models: dict[str, type[BaseModel]] = {}
    for event in plan.events:
        fields: dict[str, Any] = {}
        for prop in [*plan.common_properties, *event.properties]:
            kind: Any = py.get(prop.type.value, str)
            if prop.allowed_values:
                kind = Literal[tuple(prop.allowed_values)]
            kind = Annotated[kind, Field(ge=prop.min, le=prop.max)]
            fields[prop.name] = (kind, ...) if prop.required else (kind | None, None)
        models[event.name] = create_model(  # type: ignore[call-overload]
            event.name, __config__=ConfigDict(extra="forbid"), **fields
        )
    return models


@pytest.mark.bench
def test_validator_microseconds_per_event(tmp_path: Path) -> None:
    ws = Workspace(load_settings(home=tmp_path / "home"))
    ws.init()
    catalog.import_plan(ws.db, EXAMPLE.read_text(encoding="utf-8"))
    plan = catalog.current_plan(ws.db)
    assert plan.check(VALID) == [] and len(plan.check(INVALID)) == 5

    models = _pydantic_models(catalog.get_plan(ws.db))

    def with_pydantic(message: dict[str, Any]) -> list[Any]:
        try:
            models[message["event"]].model_validate(message["properties"])
        except ValidationError as exc:  # the violations, as the compiled check reports them
            return exc.errors()
        return []

    results = {
        "valid track (6 properties)": _per_message(plan.check, VALID),
        "track with 5 violations": _per_message(plan.check, INVALID),
        "identify (4 traits)": _per_message(plan.check, IDENTIFY),
        "current_plan() lookup (cached)": _per_message(lambda _m: catalog.current_plan(ws.db), {}),
        "pydantic model per event, valid track": _per_message(with_pydantic, VALID),
    }
    ws.close()
    print()
    for name, micros in results.items():
        print(f"{name:40s} {micros:8.2f} µs")
    budget = 1e6 / 20_000 * 2  # 20,000 events/s on 2 cores: 100 µs of CPU per event
    share = results["valid track (6 properties)"] / budget
    print(f"share of the 20,000 events/s budget (100 µs CPU/event): {share:.1%}")
    assert results["valid track (6 properties)"] < 20
