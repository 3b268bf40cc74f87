"""Follow the event log into the warehouse from a process of its own.

``rapport serve`` starts this beside the server (at a lower CPU priority) so that loading the
warehouse never competes with the collector for the server's interpreter lock: acknowledging
events is the hot path, making them queryable can trail by a second.
"""

from __future__ import annotations

import logging
import os
import time

from rapport.warehouse.store import WarehouseBusy
from rapport.workspace import Workspace

log = logging.getLogger(__name__)


def follow(ws: Workspace, interval: float = 0.5, parent: int | None = None) -> None:
    """Load new log records every ``interval`` s; return when ``parent`` (a pid) has gone."""
    while parent is None or os.getppid() == parent:
        try:
            loaded = ws.warehouse.load_from_log(ws.log, wait=1.0)
        except WarehouseBusy:  # a CLI import holds the file: try again on the next pass
            loaded = 0
        except Exception:  # noqa: BLE001 - keep following; the error is in the server log
            log.exception("warehouse loader pass failed")
            loaded = 0
        if not loaded:
            time.sleep(interval)
