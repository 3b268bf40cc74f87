"""Offline lead rules: the same rule language run on a schedule over the warehouse.

An offline rule (``mode = "offline"``, a ``schedule``) is a job of ``rapport.jobs``
(``rapport.leads.jobs``). Each run covers the period since the previous successful run (the
first run: one interval of its schedule) and finds the leads the rule makes in it exactly as
a backtest does (``backtest.simulate``: trigger matches by the reference interpreter over
the persons' histories, conditions and suppression at each match's time), then fires them in
time order through ``records.fire`` in one transaction — the same dedupe keys, cooldown and
routing as a realtime rule. A run repeated over the same period creates nothing new.

"Every morning: silent high-value customers who bought milk 25 days ago" is an absence
trigger run daily: ``sequence order_paid where category = "milk" then not order_paid within
25 days`` with the condition ``has tag high_value``: each morning's run picks the persons
whose 25 days of silence ended since the previous morning.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from rapport.db.tables import job_runs
from rapport.leads.backtest import simulate
from rapport.leads.live import fire_hits

if TYPE_CHECKING:
    from rapport.leads.rules import LeadRule
    from rapport.workspace import Workspace

JOB_PREFIX = "lead:"


def job_key(rule: LeadRule | str) -> str:
    return JOB_PREFIX + (rule if isinstance(rule, str) else rule.name)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def period_start(ws: Workspace, rule: LeadRule, at: datetime) -> datetime:
    """Where this run's period begins: the previous successful run's time, or one interval
    of the schedule before ``at``."""
    with ws.db.connect() as conn:
        last = conn.execute(
            select(job_runs.c.started_at)
            .where(
                job_runs.c.key == job_key(rule),
                job_runs.c.status == "ok",
                job_runs.c.started_at < at,
            )
            .order_by(job_runs.c.started_at.desc())
            .limit(1)
        ).scalar()
    if last is not None:
        return _utc(last)
    from rapport.jobs.schedule import parse

    schedule = parse(rule.schedule or "daily")
    zone = ws.settings.timezone
    first = schedule.next_after(at, zone)
    return at - (schedule.next_after(first, zone) - first)


def run(
    ws: Workspace, rule: LeadRule, at: datetime, start: datetime | None = None
) -> dict[str, Any]:
    """One run of an offline rule for ``[start, at)``; the job's result."""
    at = _utc(at)
    start = period_start(ws, rule, at) if start is None else _utc(start)
    if start >= at:
        return {"start": start.isoformat(), "end": at.isoformat(), "matches": 0, "leads": 0}
    hits, counts = simulate(ws, rule, start, at, cooled=False)
    created = fire_hits(ws, hits)
    return {
        "start": start.isoformat(),
        "end": at.isoformat(),
        "version": rule.version,
        "matches": counts["matches"],
        "passed": counts["passed"],
        "leads": created,
        "not_created": counts["passed"] - created,  # existing (dedupe) or within the cooldown
    }
