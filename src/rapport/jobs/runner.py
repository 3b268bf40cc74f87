"""Run the jobs that are due, one at a time per job, and record every run in ``job_runs``.

- **Due** means: the schedule's first slot after the job's last start (or, for a job never
  run, after it was first seen) is not in the future. A server that was down over several
  slots therefore runs the job *once* at the next check, not once per missed slot.
- **Never twice at once**: a run holds the job's lease (a conditional UPDATE of its ``jobs``
  row, atomic on SQLite and PostgreSQL), renewed every ``LEASE / 3`` while the job runs; a
  crashed runner's lease simply expires and its ``running`` record is marked failed.
- **Failures** are recorded with their error; the other due jobs still run.

Leases use the wall clock; ``now`` (the slot being checked, also the jobs' ``as_of``) may be
any time, which is what the tests use to step through a day.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from rapport import metrics
from rapport.db.tables import job_runs, jobs
from rapport.jobs.registry import Job, all_jobs, find
from rapport.jobs.schedule import ScheduleError, parse, time_zone

if TYPE_CHECKING:
    from rapport.workspace import Workspace

LEASE = timedelta(minutes=5)
MAX_RESULT_CHARS = 20_000


class JobNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no job with key {key!r} (see `rapport jobs list`)")
        self.key = key


class JobBusy(RuntimeError):
    def __init__(self, key: str) -> None:
        super().__init__(f"job {key!r} is running already")
        self.key = key


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _owner() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{threading.get_ident() % 10**8}"


# -- job state ----------------
def _states(ws: Workspace, keys: list[str], now: datetime) -> dict[str, dict[str, Any]]:
    """The ``jobs`` rows of ``keys``, inserting the ones seen for the first time."""
    with ws.db.connect() as conn:
        rows = {r["key"]: dict(r) for r in conn.execute(select(jobs)).mappings()}
    for key in keys:
        if key not in rows:
            try:
                with ws.db.begin() as conn:
                    conn.execute(insert(jobs).values(key=key, first_seen_at=now))
            except IntegrityError:  # another runner saw it first
                pass
            rows[key] = {"key": key, "first_seen_at": now, "last_started_at": None}
    return rows


def next_run(job: Job, state: dict[str, Any] | None, tz: str, now: datetime) -> datetime:
    """The job's next slot: the first after its last start, else after it was first seen
    (``now`` for a job not seen before)."""
    anchor = None
    if state is not None:
        anchor = _utc(state.get("last_started_at")) or _utc(state.get("first_seen_at"))
    return parse(job.schedule).next_after(anchor or now, time_zone(tz))


def _acquire(ws: Workspace, key: str, owner: str) -> bool:
    wall = datetime.now(UTC)
    free = or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < wall)
    with ws.db.begin() as conn:
        got = conn.execute(
            update(jobs)
            .where(and_(jobs.c.key == key, free))
            .values(lease_owner=owner, lease_until=wall + LEASE)
        ).rowcount
    return bool(got)


def _release(ws: Workspace, key: str, owner: str) -> None:
    with ws.db.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.key == key, jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


def _renew_until(ws: Workspace, key: str, owner: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE.total_seconds() / 3):
        with ws.db.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.key == key, jobs.c.lease_owner == owner)
                .values(lease_until=datetime.now(UTC) + LEASE)
            )


def _json_safe(result: Any) -> Any:
    text = json.dumps(result, default=str, ensure_ascii=False)
    if len(text) > MAX_RESULT_CHARS:
        return {"truncated": text[:MAX_RESULT_CHARS]}
    return json.loads(text)


# -- running ----------------
def _run(ws: Workspace, job: Job, now: datetime, trigger: str) -> dict[str, Any]:
    """Run ``job`` under its lease (the caller holds it); the run's record."""
    with ws.db.begin() as conn:
        conn.execute(  # a runner that died mid-run left its record "running"
            update(job_runs)
            .where(job_runs.c.key == job.key, job_runs.c.status == "running")
            .values(status="failed", error="interrupted: the process running it stopped")
        )
        conn.execute(update(jobs).where(jobs.c.key == job.key).values(last_started_at=now))
        inserted = conn.execute(
            insert(job_runs).values(key=job.key, trigger=trigger, started_at=now, status="running")
        ).inserted_primary_key
        assert inserted is not None
        run_id = inserted[0]
    started = time.perf_counter()
    result: Any = None
    error = None
    try:
        result = _json_safe(job.run(ws, now))
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded on the run; the other jobs go on
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    metrics.JOB_RUNS.labels(job.key, status).inc()
    metrics.JOB_SECONDS.labels(job.key).observe(seconds)
    finished = now + timedelta(seconds=seconds)
    with ws.db.begin() as conn:
        conn.execute(
            update(job_runs)
            .where(job_runs.c.id == run_id)
            .values(status=status, finished_at=finished, result=result, error=error)
        )
    return {
        "id": run_id,
        "key": job.key,
        "trigger": trigger,
        "status": status,
        "started_at": now.isoformat(),
        "finished_at": finished.isoformat(),
        "seconds": round(seconds, 3),
        "result": result,
        "error": error,
    }


def _leased(ws: Workspace, job: Job, now: datetime, trigger: str, due_only: bool) -> dict | None:
    owner = _owner()
    if not _acquire(ws, job.key, owner):
        return None
    stop = threading.Event()
    renew = threading.Thread(target=_renew_until, args=(ws, job.key, owner, stop), daemon=True)
    renew.start()
    try:
        if due_only:  # another runner may have run it between our check and the lease
            with ws.db.connect() as conn:
                state = conn.execute(select(jobs).where(jobs.c.key == job.key)).mappings().first()
            if next_run(job, dict(state) if state else None, ws.settings.timezone, now) > now:
                return None
        return _run(ws, job, now, trigger)
    finally:
        stop.set()
        renew.join()
        _release(ws, job.key, owner)


def run_due(ws: Workspace, now: datetime | None = None) -> list[dict[str, Any]]:
    """Run every job whose next slot is at or before ``now`` (default: the wall clock); the
    records of the runs made. A job another runner holds is skipped; a job whose schedule
    cannot be read is recorded as failed once per check."""
    at = _now(now)
    found = all_jobs(ws)
    states = _states(ws, [j.key for j in found], at)
    done = []
    for job in found:
        try:
            due = next_run(job, states.get(job.key), ws.settings.timezone, at) <= at
        except (ScheduleError, ValueError) as exc:
            done.append(_bad_schedule(ws, job, at, exc))
            continue
        if due:
            record = _leased(ws, job, at, "schedule", due_only=True)
            if record is not None:
                done.append(record)
    return done


def _bad_schedule(ws: Workspace, job: Job, at: datetime, exc: Exception) -> dict[str, Any]:
    """A schedule nobody can run: say so in the history, at most once per job and error."""
    error = f"schedule {job.schedule!r}: {exc}"
    with ws.db.begin() as conn:
        last = conn.execute(
            select(job_runs.c.error)
            .where(job_runs.c.key == job.key)
            .order_by(job_runs.c.id.desc())
            .limit(1)
        ).scalar()
        if last != error:
            conn.execute(
                insert(job_runs).values(
                    key=job.key,
                    trigger="schedule",
                    started_at=at,
                    finished_at=at,
                    status="failed",
                    error=error,
                )
            )
    return {"key": job.key, "status": "failed", "error": error, "started_at": at.isoformat()}


def run_now(ws: Workspace, key: str, now: datetime | None = None) -> dict[str, Any]:
    """Run one job at once, whatever its schedule (it still waits for no one: ``JobBusy`` when
    it is running elsewhere). Its next scheduled slot counts from this run."""
    job = find(ws, key)
    if job is None:
        raise JobNotFound(key)
    at = _now(now)
    _states(ws, [key], at)
    record = _leased(ws, job, at, "manual", due_only=False)
    if record is None:
        raise JobBusy(key)
    return record


# -- reading ----------------
def _record(row: Any) -> dict[str, Any]:
    out = dict(row)
    started, finished = _utc(out["started_at"]), _utc(out["finished_at"])
    out["started_at"] = started.isoformat() if started else None
    out["finished_at"] = finished.isoformat() if finished else None
    out["seconds"] = (
        round((finished - started).total_seconds(), 3) if started and finished else None
    )
    return out


def history(ws: Workspace, key: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The latest runs, newest first (of one job, or of all)."""
    query = select(job_runs).order_by(job_runs.c.id.desc()).limit(limit)
    if key is not None:
        query = query.where(job_runs.c.key == key)
    with ws.db.connect() as conn:
        return [_record(r) for r in conn.execute(query).mappings()]


def overview(ws: Workspace, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every job with its schedule, next run, whether it is running, and its last run."""
    at = _now(now)
    found = all_jobs(ws)
    with ws.db.connect() as conn:
        states = {r["key"]: dict(r) for r in conn.execute(select(jobs)).mappings()}
        latest = (
            select(func.max(job_runs.c.id))
            .where(job_runs.c.key.in_([j.key for j in found]))
            .group_by(job_runs.c.key)
        )
        runs = {
            r["key"]: _record(r)
            for r in conn.execute(select(job_runs).where(job_runs.c.id.in_(latest))).mappings()
        }
    out = []
    for job in found:
        state = states.get(job.key)
        try:
            nxt: str | None = next_run(job, state, ws.settings.timezone, at).isoformat()
            problem = None
        except (ScheduleError, ValueError) as exc:
            nxt, problem = None, str(exc)
        lease = _utc(state.get("lease_until")) if state else None
        out.append(
            {
                "key": job.key,
                "title": job.title,
                "schedule": job.schedule,
                "schedule_error": problem,
                "next_run": nxt,
                "running": bool(lease and lease > datetime.now(UTC)),
                "last_run": runs.get(job.key),
            }
        )
    return out
