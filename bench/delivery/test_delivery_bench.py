"""Webhook deliveries per second from the outbox to a local receiver (target ≥ 2,000/s).

The outbox (SQLite, the default metadata DB) holds N messages before the clock starts; one
dispatcher in this process (or 2 ``rapport delivery dispatch --once`` processes on the same
outbox) claims, signs, POSTs (aiohttp, keep-alive) and records every try;
the receiver (``receiver.py``, its own process) verifies each signature and counts distinct
idempotency keys; every message must arrive exactly once. A run ends when every message is
``delivered``. CPU per webhook is the dispatchers' (start-up included for processes) and the
receiver's. Median of 3 runs:

    BENCH_DELIVERIES=10000 BENCH_DISPATCHERS=1,2 .venv/bin/pytest -m bench -s bench/delivery
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from rapport.db.tables import outbox
from rapport.delivery import enqueue
from rapport.delivery.channels import ChannelSpec, create_channel
from rapport.delivery.dispatcher import Dispatcher
from rapport.settings import load_settings
from rapport.workspace import Workspace

pytestmark = pytest.mark.bench
N = int(os.environ.get("BENCH_DELIVERIES", "10000"))
BATCH = 1000
#: one dispatcher in this process; or that many `rapport delivery dispatch --once` processes
PROCESSES = [int(p) for p in os.environ.get("BENCH_DISPATCHERS", "1,2").split(",")]
RUNS = 3
SECRET = "whsec_bench_0123456789abcdef"
HERE = Path(__file__).parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stats(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as answer:
        return dict(json.load(answer))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _one_run(tmp: Path, run: int, processes: int) -> dict[str, float]:
    port = _free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(HERE / "receiver.py"), str(port), SECRET], stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == b"ready"
    home = tmp / f"run{processes}-{run}"
    ws = Workspace(load_settings(home=home))
    ws.init()
    try:
        spec = {
            "name": "bench",
            "kind": "webhook",
            "secret": SECRET,
            "allow_private": True,
            "config": {"url": f"http://127.0.0.1:{port}/hook"},
        }
        create_channel(ws.db, ChannelSpec.model_validate(spec))
        with ws.db.begin() as conn:
            for i in range(N):
                enqueue(conn, channel="bench", key=f"lead:{i}", payload={"lead": i, "score": 87})
        receiver_cpu = _stats(port)["cpu"]
        if processes == 1:
            settings = replace(ws.settings, delivery_batch=BATCH, delivery_concurrency=64)

            async def drain() -> None:
                dispatcher = Dispatcher(ws.db, settings)
                assert await dispatcher.drain() == N
                await dispatcher.aclose()

            started = time.perf_counter()
            cpu = time.process_time()
            asyncio.run(drain())
            cpu = time.process_time() - cpu
        else:  # `rapport delivery dispatch --once` processes side by side on one outbox
            env = {**os.environ, "RAPPORT_HOME": str(home), "RAPPORT_DELIVERY_BATCH": str(BATCH)}
            command = [sys.executable, "-m", "rapport", "delivery", "dispatch", "--once"]
            cpu = _children_cpu()  # counts the children waited for: these processes
            started = time.perf_counter()
            procs = [subprocess.Popen(command, env=env) for _ in range(processes)]
            assert all(p.wait(600) == 0 for p in procs)
            cpu = _children_cpu() - cpu
        elapsed = time.perf_counter() - started
        with ws.db.connect() as conn:
            delivered = conn.execute(
                sa.select(sa.func.count()).where(outbox.c.status == "delivered")
            ).scalar_one()
        stats = _stats(port)
        assert delivered == N and stats["bad"] == 0, stats
        assert stats["applied"] == stats["requests"] == N, f"not exactly once: {stats}"
        return {
            "per_second": N / elapsed,
            "elapsed": elapsed,
            "cpu_ms": cpu / N * 1000,
            "receiver_ms": (stats["cpu"] - receiver_cpu) / N * 1000,
        }
    finally:
        ws.close()
        receiver.terminate()
        receiver.wait(10)


@pytest.mark.parametrize("processes", PROCESSES)
def test_webhook_deliveries_per_second(tmp_path: Path, processes: int) -> None:
    load = os.getloadavg()[0]
    runs = [_one_run(tmp_path, i, processes) for i in range(RUNS)]
    rates = sorted(r["per_second"] for r in runs)
    detail = " / ".join(
        f"{r['per_second']:,.0f}/s ({r['elapsed']:.2f} s; CPU per webhook: dispatcher "
        f"{r['cpu_ms']:.3f} ms, receiver {r['receiver_ms']:.3f} ms)"
        for r in runs
    )
    print(
        f"\n{N} webhooks per run, {processes} dispatcher(s), {RUNS} runs: {detail}; "
        f"median {statistics.median(rates):,.0f}/s ({statistics.median(rates) / 2000:.2f}x the "
        f"2,000/s target); each delivered exactly once; "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
