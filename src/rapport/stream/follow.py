"""Follow the event log into the warehouse and resolve identities, in a process of its own.

``rapport serve`` starts this beside the server (at a lower CPU priority) so that this work
never competes with the collector for the server's interpreter lock: acknowledging events is
the hot path, making them queryable (with their person) can trail by a second.
"""

from __future__ import annotations

import logging
import os
import time

from rapport.warehouse.store import WarehouseBusy
from rapport.workspace import Workspace

log = logging.getLogger(__name__)


def one_pass(ws: Workspace, wait: float = 1.0) -> int:
    """Load what the log holds beyond the warehouse's offset, then resolve pending records
    (events just loaded, and slices/events of imports run meanwhile); the records loaded."""
    from rapport.identity.resolve import resolve_pending

    loaded = ws.warehouse.load_from_log(ws.log, wait=wait)
    resolve_pending(ws)
    return loaded


def follow(ws: Workspace, interval: float = 0.5, parent: int | None = None) -> None:
    """A pass every ``interval`` s (at once while busy); return when ``parent`` has gone."""
    while parent is None or os.getppid() == parent:
        try:
            loaded = one_pass(ws)
        except WarehouseBusy:  # a CLI import holds the file: try again on the next pass
            loaded = 0
        except Exception:  # noqa: BLE001 - keep following; the error is in the server log
            log.exception("stream pass failed")
            loaded = 0
        if not loaded:
            time.sleep(interval)
