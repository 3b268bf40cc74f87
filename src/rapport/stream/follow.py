"""Follow the event log into the warehouse, resolve identities and run the stream rules, in a
process of its own (which also runs the scheduled jobs that are due).

``rapport serve`` starts this beside the server (at a lower CPU priority) so that this work
never competes with the collector for the server's interpreter lock: acknowledging events is
the hot path, making them queryable (with their person) can trail by a second.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from typing import Any

from rapport import metrics
from rapport.warehouse.store import WarehouseBusy
from rapport.workspace import Workspace

log = logging.getLogger(__name__)


#: records a pass loads at most: after a backlog (a restart, a burst) the pass's identity and
#: stream work, and its memory, stay those of a normal pass; the next pass starts at once
PASS_RECORDS = 100_000


def one_pass(ws: Workspace, wait: float = 1.0) -> int:
    """Load what the log holds beyond the warehouse's offset (up to ``PASS_RECORDS``),
    resolve pending records (events just loaded, and slices/events of imports run
    meanwhile), then run the stream rules over the events that now have a person; the
    records loaded."""
    from rapport.identity.resolve import resolve_pending
    from rapport.stream.engine import run_pass

    loaded = ws.warehouse.load_from_log(ws.log, wait=wait, limit=PASS_RECORDS)
    report = resolve_pending(ws)
    stats = run_pass(ws, loaded)  # stage 2: rules kept current per event (audiences)
    _count(loaded, report.records, report.merges, stats.events, stats.judged, stats.outputs)
    return loaded


def _count(loaded: int, resolved: int, merges: int, fed: int, judged: int, outputs: int) -> None:
    """A pass's numbers in the metrics (once per pass)."""
    if loaded:
        metrics.FOLLOW_LOADED.inc(loaded)
    if resolved:
        metrics.IDENTITY_RECORDS.inc(resolved)
    if merges:
        metrics.IDENTITY_MERGES.inc(merges)
    if fed:
        metrics.STREAM_JUDGED.labels("embedded").inc(fed)
    if judged:
        metrics.STREAM_JUDGEMENTS.labels("embedded").inc(judged)
    if outputs:
        metrics.STREAM_OUTPUTS.labels("embedded").inc(outputs)


def follow(
    ws: Workspace, interval: float = 0.5, parent: int | None = None, jobs_every: float = 30.0
) -> None:
    """A pass every ``interval`` s (at once while busy), the scheduled jobs that are due every
    ``jobs_every`` s (in this process: it already owns the warehouse's writes); return when
    ``parent`` has gone."""
    from rapport.jobs.runner import run_due

    jobs_at = 0.0
    while parent is None or os.getppid() == parent:
        if jobs_every and time.monotonic() >= jobs_at:
            jobs_at = time.monotonic() + jobs_every
            try:
                run_due(ws)
            except WarehouseBusy:
                jobs_at = 0.0
            except Exception:  # noqa: BLE001 - a failed check must not stop the follower
                log.exception("scheduled jobs check failed")
        started = time.perf_counter()
        outcome = "ok"
        try:
            loaded = one_pass(ws)
        except WarehouseBusy:  # a CLI import holds the file: try again on the next pass
            loaded, outcome = 0, "busy"
        except Exception:  # noqa: BLE001 - keep following; the error is in the server log
            log.exception("stream pass failed")
            loaded, outcome = 0, "failed"
        metrics.FOLLOW_PASSES.labels(outcome).inc()
        if loaded:
            metrics.FOLLOW_PASS_SECONDS.observe(time.perf_counter() - started)
            release_freed_memory()
        else:
            time.sleep(interval)


def release_freed_memory() -> None:
    """Hand the pages a pass freed back to the system. glibc keeps them in its per-thread
    arenas otherwise, and across millions of events the fragments add up: the soak saw the
    follower creep 400 -> 570 MB in 10 minutes (a no-op without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


_malloc_trim: Any
try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None
