"""Scheduled journey entries as jobs (listed in ``rapport.jobs.registry.PROVIDER_MODULES``).

A live journey whose entry is ``{"schedule": "daily at 09:00", "audience": "vip"}`` is a job
on that schedule: each run emits one ``journey_scheduled`` system event per current member
of the audience, at the run's time, through the collector. The journey's stream rule enters
them on that event like on any entry event (entry rule, goal, waits on event time). Message
ids carry the run's time, so a run done twice lets nobody in twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rapport.jobs.registry import Job, register
from rapport.journeys import store
from rapport.journeys.model import SCHEDULED, SCHEDULED_PLAN
from rapport.segments.store import members
from rapport.segments.system_events import message, stamp, submit, system_source, user_ids

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def _enter(journey_id: int) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        found = store.get(ws, journey_id)
        if found["status"] != "live":
            return {"skipped": f"journey {found['name']} is {found['status']}"}
        name, audience = found["name"], found["definition"]["entry"]["audience"]
        persons = members(ws, audience)
        ids = user_ids(ws, persons)
        props = {"journey": name, "audience": audience}
        messages = [
            message(SCHEDULED, p, at, f"journey:{journey_id}:{stamp(at)}:{p}",
                    {**props, "person": p}, ids.get(p))
            for p in persons
        ]  # fmt: skip
        source = system_source(ws, [SCHEDULED], SCHEDULED_PLAN)
        return {"audience": len(persons), **submit(ws, source, messages)}

    return run


def journey_jobs(ws: Workspace) -> list[Job]:
    """The live journeys with a scheduled entry."""
    with ws.db.connect() as conn:
        found = store.live(conn)
    return [
        Job(f"journey:{j.name}", f"Journey {j.name}: {j.audience} enters", j.schedule, _enter(j.id))
        for j in found
        if j.schedule is not None
    ]


register("journeys", journey_jobs)
