"""Offline lead rules as scheduled jobs (``rapport.jobs`` imports this module: it is listed
in ``registry.PROVIDER_MODULES``). One job per live offline rule, key ``lead:<rule name>``,
on the rule's schedule; the run is ``offline.run`` and its result is what the jobs page shows
(the period, matches, leads created)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rapport.jobs.registry import Job, register
from rapport.leads import offline, rules

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def _runner(rule_id: int) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        with ws.db.connect() as conn:
            rule = rules.load(conn, rule_id)  # the version current at run time
        if rule.status != "live" or rule.mode != "offline":
            return {"skipped": f"rule {rule.name} is {rule.status} ({rule.mode})"}
        return offline.run(ws, rule, at)

    return run


def lead_jobs(ws: Workspace) -> list[Job]:
    with ws.db.connect() as conn:
        found = rules.live_rules(conn, mode="offline")
    return [
        Job(offline.job_key(r), f"Offline lead rule {r.name}", r.schedule or "daily", _runner(r.id))
        for r in found
    ]


register("leads", lead_jobs)
