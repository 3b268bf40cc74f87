"""Analytics over the warehouse: funnels, retention cohorts, event trends, lifecycle flows and
person distributions. Each is one function ``(workspace, spec) -> result``; queries are Ibis
expressions run by the warehouse (no Python loop over events); every result carries the
``table`` its CSV download is written from (``to_csv``). ``run`` checks the spec's names
against the tracking plan first."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rapport.analytics.base import to_csv
from rapport.analytics.distribution import distribution
from rapport.analytics.flows import lifecycle_flows
from rapport.analytics.funnel import funnel
from rapport.analytics.retention import retention
from rapport.analytics.specs import (
    AnalyticsError,
    DistributionSpec,
    FunnelSpec,
    LifecycleSpec,
    RetentionSpec,
    TrendsSpec,
    check_names,
)
from rapport.analytics.trends import trends
from rapport.conditions.validate import context

if TYPE_CHECKING:
    from pydantic import BaseModel

    from rapport.workspace import Workspace

#: kind -> (spec model, analysis): the API's and the console's one table of analyses
KINDS: dict[str, tuple[type[BaseModel], Callable[[Any, Any], dict[str, Any]]]] = {
    "funnel": (FunnelSpec, funnel),
    "retention": (RetentionSpec, retention),
    "trends": (TrendsSpec, trends),
    "lifecycle": (LifecycleSpec, lifecycle_flows),
    "distribution": (DistributionSpec, distribution),
}


def run(ws: Workspace, kind: str, spec: Any) -> dict[str, Any]:
    """Validate ``spec`` (a dict or the kind's model) and run the analysis ``kind``."""
    model, analysis = KINDS[kind]
    parsed = spec if isinstance(spec, model) else model.model_validate(spec)
    check_names(context(ws), parsed)
    return analysis(ws, parsed)


__all__ = [
    "KINDS",
    "AnalyticsError",
    "DistributionSpec",
    "FunnelSpec",
    "LifecycleSpec",
    "RetentionSpec",
    "TrendsSpec",
    "distribution",
    "funnel",
    "lifecycle_flows",
    "retention",
    "run",
    "to_csv",
    "trends",
]
