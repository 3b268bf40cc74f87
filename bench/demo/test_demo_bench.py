"""How long `rapport demo --persons N --no-serve` takes, phase by phase, in a fresh home.

Run: .venv/bin/pytest -m bench -s bench/demo  (N from BENCH_DEMO_PERSONS, default 100000)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

PERSONS = int(os.environ.get("BENCH_DEMO_PERSONS", "100000"))
RUNS = int(os.environ.get("BENCH_DEMO_RUNS", "3"))


@pytest.mark.bench
def test_demo_generate_and_load(tmp_path: Path) -> None:
    seconds = []
    for run in range(RUNS):
        home = tmp_path / f"home{run}"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "rapport", "demo", "--persons", str(PERSONS), "--no-serve"],
            env={**os.environ, "RAPPORT_HOME": str(home)},
            check=True,
            capture_output=True,
            timeout=3600,
        )
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(f"\nrapport demo --persons {PERSONS}: median {median:.0f} s over {RUNS} runs {seconds}")
    assert median < 600, "the default demo should load in a few minutes"
