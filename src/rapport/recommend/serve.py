"""The model the API serves: loaded from the warehouse once, reloaded after a new build.

Whether a newer build exists is checked at most every ``CHECK_SECONDS``, so requests do not
open the warehouse each time (another process may hold it: a request then keeps the old model).
"""

from __future__ import annotations

import threading
import time

from rapport.recommend.build import last_runs, read
from rapport.recommend.model import Model
from rapport.warehouse import Warehouse, WarehouseBusy

CHECK_SECONDS = 30.0


class NoModel(LookupError):
    """Nothing built yet."""


class Served:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh
        self._model: Model | None = None
        self._built_at: object = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def model(self) -> Model:
        with self._lock:
            if time.monotonic() - self._checked >= CHECK_SECONDS or self._model is None:
                self._refresh()
            if self._model is None:
                raise NoModel("no recommendation model yet: run `rapport recommend build`")
            return self._model

    def _refresh(self) -> None:
        try:
            wait = 30.0 if self._model is None else 0.5  # with a model, never stall a request
            built = last_runs(self.wh, wait).get("build")
            if built is not None and built["at"] != self._built_at:
                found = read(self.wh)
                self._model = Model(found) if found is not None else None
                self._built_at = built["at"]
        except WarehouseBusy:
            if self._model is None:
                raise
        self._checked = time.monotonic()
