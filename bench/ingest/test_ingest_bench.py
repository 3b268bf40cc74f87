"""Sustained events/s through ``/v1/batch`` with durable acknowledgement.

A real ``rapport serve`` and the load generator (``loadgen.py``) each run in their own process;
the median of 3 runs is printed. Run with:

    .venv/bin/pytest -m bench -s bench/ingest
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

LOADGEN = Path(__file__).with_name("loadgen.py")
EVENTS = int(os.environ.get("BENCH_EVENTS", "200000"))
RUNS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rapport(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rapport", *args], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.bench
def test_ingest_throughput(tmp_path: Path) -> None:
    env = {**os.environ, "RAPPORT_HOME": str(tmp_path / "home")}
    _rapport(env, "init")
    key = json.loads(_rapport(env, "source", "create", "bench", "--json"))["write_key"]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "rapport", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "wb"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        runs = []
        for _ in range(RUNS):
            out = subprocess.run(
                [sys.executable, str(LOADGEN), "--url", url, "--key", key, "--events", str(EVENTS)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout))
            print(runs[-1])
    finally:
        server.terminate()
        server.wait(30)
    median = statistics.median(r["events_per_s"] for r in runs)
    print(f"median of {RUNS} runs: {median:,.0f} events/s ({median / 20_000:.2f} x the target)")
    total = json.loads(_rapport(env, "events", "count") or "0")
    assert total == EVENTS * RUNS == sum(r["accepted"] for r in runs)
