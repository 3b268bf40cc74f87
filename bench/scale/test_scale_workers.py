"""``make bench`` entry for ``workers.py``: rule and ingest throughput with 1, 2 and 3 worker
processes. Sizes and counts come from the same variables (``EVENTS``, ``INGEST_EVENTS``,
``SENDERS``, ``RUNS``, ``WORKERS``):

    .venv/bin/pytest -m bench -s bench/scale
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("scale_workers", HERE / "workers.py")
assert spec is not None and spec.loader is not None
workers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workers)


@pytest.mark.bench
def test_rule_workers_scale() -> None:
    """Every count of workers makes the same leads (asserted inside); prints events/s."""
    print("\n".join(workers.rules()))


@pytest.mark.bench
def test_collectors_scale() -> None:
    """Every count of collectors gets every event into the log (asserted inside)."""
    print("\n".join(workers.ingest()))
