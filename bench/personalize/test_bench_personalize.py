"""Benchmark: ``GET /api/personalize`` over 10 placements × 5 variants, audiences of 1 M persons.

Run: ``.venv/bin/pytest -m bench -s bench/personalize`` (``PERSONS``, ``CALLS``, ``HTTP_CALLS``
scale it). Twenty audiences are random subsets of the persons (1 %–40 % of them, so a person
belongs to several), written to the bitmap index as a refresh would; each placement has five
variants over five of them with random priorities. Persons asked are uniform over the universe
plus outsiders (no audience: every variant is checked, the worst case). Target (issue 6):
p99 ≤ 5 ms through the function; the HTTP figure adds uvicorn, FastAPI, the token check and a
keep-alive client on the same machine.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from rapport import accounts
from rapport.personalize import PlacementIn, choose, create_placement
from rapport.segments.bitmaps import from_keys, put_segment
from rapport.segments.store import insert_segment
from rapport.settings import load_settings
from rapport.workspace import Workspace

PERSONS = int(os.environ.get("PERSONS", "1000000"))
CALLS = int(os.environ.get("CALLS", "100000"))
HTTP_CALLS = int(os.environ.get("HTTP_CALLS", "10000"))
AUDIENCES, PLACEMENTS, VARIANTS = 20, 10, 5
TARGET_P99_MS = 5.0

pytestmark = pytest.mark.bench


def _world(home: Path) -> Workspace:
    ws = Workspace(load_settings(home=home))
    ws.init()
    rng = np.random.default_rng(6)
    for i in range(AUDIENCES):
        share = 0.01 + 0.39 * i / (AUDIENCES - 1)
        keys = np.flatnonzero(rng.random(PERSONS) < share)
        insert_segment(ws, f"aud{i}", "audience", {"condition": None}, mode="static")
        put_segment(ws, f"aud{i}", {None: from_keys(keys)})
    pick = random.Random(6)
    for p in range(PLACEMENTS):
        variants = [
            {
                "audience": f"aud{a}",
                "priority": pick.randint(0, 100),
                "content": {"title": f"p{p} for aud{a}", "image": f"https://cdn.example/{a}.png"},
            }
            for a in pick.sample(range(AUDIENCES), VARIANTS)
        ]
        body = {"name": f"placement{p}", "default": {"title": "hi"}, "variants": variants}
        create_placement(ws, PlacementIn.model_validate(body))
    return ws


def _asks(n: int) -> list[tuple[str, int]]:
    pick = random.Random(7)
    out = []
    for _ in range(n):
        # one ask in ten is an outsider (above the universe): every variant is checked
        person = pick.randrange(PERSONS) if pick.random() < 0.9 else PERSONS + pick.randrange(9)
        out.append((f"placement{pick.randrange(PLACEMENTS)}", person))
    return out


def _timed(call: Callable[[str, int], object], asks: list[tuple[str, int]]) -> np.ndarray:
    for placement, person in asks[:1000]:  # warm up: compile, load the bitmaps
        call(placement, person)
    out = np.empty(len(asks))
    clock = time.perf_counter_ns
    for i, (placement, person) in enumerate(asks):
        start = clock()
        call(placement, person)
        out[i] = clock() - start
    return out / 1e6


def _report(what: str, ms: np.ndarray) -> float:
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    load = os.getloadavg()[0]
    print(
        f"\n{what}: {len(ms):,} calls  p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
        f"max {ms.max():.3f} ms  mean {ms.mean():.3f} ms  (load average {load:.2f})"
    )
    return float(p99)


def test_personalize_latency(tmp_path: Path) -> None:
    started = time.perf_counter()
    ws = _world(tmp_path / "home")
    took = time.perf_counter() - started
    print(f"\nworld: {PERSONS:,} persons, {AUDIENCES} audiences, built in {took:.1f} s")
    asks = _asks(CALLS)
    chosen = [choose(ws, p, k).variant for p, k in asks[:2000]]
    assert "default" in chosen and len(set(chosen)) > 5  # the mix exercises both outcomes

    p99 = _report("function choose()", _timed(lambda p, k: choose(ws, p, k), asks))
    assert p99 <= TARGET_P99_MS

    token = accounts.create_token(ws.db, accounts.Role.viewer, "website")
    ws.close()
    with _server(tmp_path / "home") as url, httpx.Client(base_url=url) as client:
        headers = {"Authorization": f"Bearer {token}"}

        def http(placement: str, person: int) -> object:
            got = client.get(f"/api/personalize/{placement}?person={person}", headers=headers)
            assert got.status_code == 200
            return got

        _report("HTTP GET /api/personalize (uvicorn, keep-alive)", _timed(http, asks[:HTTP_CALLS]))


SERVE = """
import sys, uvicorn
from rapport.settings import load_settings
from rapport.web.app import create_app
from rapport.workspace import Workspace
ws = Workspace(load_settings(home=sys.argv[1], loader_in_process=False,
                             dispatcher_in_process=False))
uvicorn.run(create_app(workspace=ws), port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""


@contextmanager
def _server(home: Path) -> Iterator[str]:
    """The app alone under uvicorn (no follower, no dispatcher) in a child process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(home), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert proc.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
