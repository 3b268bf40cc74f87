"""The scheduler's job: rebuild the model daily, so the API serves yesterday's behaviour."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rapport.jobs.registry import Job, register
from rapport.workspace import Workspace

SCHEDULE = "daily at 03:00"


def _run(ws: Workspace, at: datetime) -> dict[str, Any]:
    from rapport.recommend.build import build

    return build(ws.warehouse)


def recommend_jobs(ws: Workspace) -> list[Job]:
    return [Job("recommend", "Build the recommendation model", SCHEDULE, _run)]


register("recommend", recommend_jobs)
