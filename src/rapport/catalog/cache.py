"""The current compiled plan per metadata DB, kept fresh without costing the hot path.

Writes through ``rapport.catalog`` drop the cached plan at once; writes by other processes (the
CLI, another server) are noticed by the version stamp, read at most once per ``RECHECK_S``.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine

from rapport.catalog.store import Stamp, load_plan, read_stamp
from rapport.catalog.validate import CompiledPlan

RECHECK_S = 1.0


class _Entry:
    __slots__ = ("plan", "checked_at")

    def __init__(self, plan: CompiledPlan, checked_at: float) -> None:
        self.plan = plan
        self.checked_at = checked_at


_cache: dict[str, _Entry] = {}
_lock = threading.Lock()


def _key(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def current_plan(engine: Engine) -> CompiledPlan:
    """The compiled plan of ``engine``'s DB: cached, at most ~1 s behind other processes."""
    key = _key(engine)
    entry = _cache.get(key)
    now = time.monotonic()
    if entry is not None and now - entry.checked_at < RECHECK_S:
        return entry.plan
    with _lock:
        entry = _cache.get(key)
        if entry is not None and now - entry.checked_at < RECHECK_S:
            return entry.plan
        with engine.connect() as conn:
            stamp: Stamp = read_stamp(conn)
            if entry is not None and entry.plan.stamp == stamp:
                entry.checked_at = now
                return entry.plan
            # Stamp and plan come from one connection; a write in between only means the
            # next check (in a second) compiles again.
            plan = CompiledPlan(load_plan(conn), stamp)
        _cache[key] = _Entry(plan, now)
        return plan


def invalidate(engine: Engine) -> None:
    """Forget the cached plan of ``engine``'s DB: the next ``current_plan`` recompiles."""
    _cache.pop(_key(engine), None)
