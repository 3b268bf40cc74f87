"""The current compiled plan per metadata DB, kept fresh without costing the hot path.

Writes through ``rapport.catalog`` drop the cached plan at once; writes by other processes (the
CLI, another server) are noticed by the version stamp, read at most once per ``RECHECK_S``.
"""

from __future__ import annotations

import threading
import time
import weakref

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from rapport.catalog.store import Stamp, load_plan, read_stamp
from rapport.catalog.validate import CompiledPlan

RECHECK_S = 1.0


class _Entry:
    __slots__ = ("plan", "checked_at")

    def __init__(self, plan: CompiledPlan, checked_at: float) -> None:
        self.plan = plan
        self.checked_at = checked_at


#: keyed by the engine itself: hashing an Engine is free, rendering its URL is not
_cache: weakref.WeakKeyDictionary[Engine, _Entry] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def current_plan(engine: Engine) -> CompiledPlan:
    """The compiled plan of ``engine``'s DB: cached, at most ~1 s behind other processes."""
    entry = _cache.get(engine)
    now = time.monotonic()
    if entry is not None and now - entry.checked_at < RECHECK_S:
        return entry.plan
    with _lock:
        entry = _cache.get(engine)
        if entry is not None and now - entry.checked_at < RECHECK_S:
            return entry.plan
        try:
            with engine.connect() as conn:
                stamp: Stamp = read_stamp(conn)
                if entry is not None and entry.plan.stamp == stamp:
                    entry.checked_at = now
                    return entry.plan
                # Stamp and plan come from one connection; a write in between only means the
                # next check (in a second) compiles again.
                plan = CompiledPlan(load_plan(conn), stamp)
        except OperationalError:
            if entry is None:
                raise
            # the metadata DB is down (a PostgreSQL restart): the collector keeps checking
            # events against the plan it has, and looks again in a second
            entry.checked_at = now
            return entry.plan
        _cache[engine] = _Entry(plan, now)
        return plan


def invalidate(engine: Engine) -> None:
    """Forget the cached plan of ``engine``'s DB (under every engine open on the same URL)."""
    url = engine.url
    with _lock:
        for other in [e for e in _cache if e.url == url]:
            _cache.pop(other, None)
