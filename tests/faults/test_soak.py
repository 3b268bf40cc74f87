"""Soak: ``rapport serve`` under half its benchmarked ingest capacity for SOAK_SECONDS
(default 600), the RSS of every process sampled every 10 s: memory stays flat, no request
fails, and every acknowledged event is loaded into the warehouse at the end.

The rate: docs/benchmarks.md, collector, 32,949 events/s (the median on this shared 2-core
machine) -> 16,000 events/s; SOAK_RATE overrides it. A short run: SOAK_SECONDS=60.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults.helpers import loaded_offset, report
from rapport.log import EventLog
from rapport.settings import load_settings
from rapport.warehouse.store import Warehouse

pytestmark = pytest.mark.long
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
RATE = float(os.environ.get("SOAK_RATE", "16000"))
SAMPLE_S = 10.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


@pytest.mark.timeout(int(SECONDS) + 900)
def test_soak_at_half_capacity_keeps_memory_flat_and_loses_nothing(fault_server, tmp_path):
    srv = fault_server()
    key = srv.cli_json("source", "create", "web")["write_key"]
    acked_file = tmp_path / "acked.txt"
    sender = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "soak_sender.py"), "--url", srv.url,
         "--key", key, "--rate", str(RATE), "--seconds", str(SECONDS),
         "--acked", str(acked_file)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    series: dict[str, list[float]] = {}
    started = time.monotonic()
    try:
        while sender.poll() is None:
            pids = {"server": srv.proc.pid, **srv.children()}  # type: ignore[union-attr]
            for role, pid in pids.items():
                with contextlib.suppress(OSError):
                    series.setdefault(role, []).append(rss_mb(pid))
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - started) % SAMPLE_S))
    finally:
        if sender.poll() is None:
            sender.kill()
    load_ended = time.monotonic()
    out = json.loads(sender.stdout.read().decode().strip().splitlines()[-1])  # type: ignore[union-attr]
    print(f"sender: {out}")
    for role, xs in series.items():
        print(f"RSS MB {role}: " + " ".join(f"{x:.0f}" for x in xs))
    assert not [k for k in out if k.startswith("error")], out
    assert out["acknowledged"] == out["sent"]

    # every acknowledged event is in the log and, once the follower catches up, the warehouse
    settings = load_settings(home=srv.home)
    log = EventLog.open(settings)
    last = log.last_offset()
    log.close()
    wh = Warehouse.open(settings)
    deadline = time.monotonic() + 600
    while (at := loaded_offset(wh)) < last:
        assert time.monotonic() < deadline, f"the follower is at {at} of {last}"
        time.sleep(1)
    print(f"the follower caught up {time.monotonic() - load_ended:.0f} s after the load ended")
    with wh.connect(wait=300) as con:
        con.raw_sql(f"CREATE TEMP TABLE acked AS SELECT * FROM read_csv('{acked_file}', "
                    "header=false, columns={'id': 'VARCHAR'})")  # fmt: skip
        missing = con.raw_sql(
            "SELECT count(*) FROM acked a ANTI JOIN events e ON a.id = e.event_id"
        ).fetchone()[0]
        found = con.raw_sql("SELECT count(DISTINCT event_id) FROM events").fetchone()[0]
    wh.close()
    report("soak, warehouse", out["acknowledged"], out["acknowledged"] - missing)
    assert missing == 0 and found == out["acknowledged"]

    # flat: the last third against the second third, by their medians (a sample taken while
    # the follower holds a 50,000-event batch reads hundreds of MB above one taken between)
    for role, xs in series.items():
        third = len(xs) // 3
        if third < 1:
            continue
        second, last_third = median(xs[third : 2 * third]), median(xs[2 * third :])
        assert last_third <= second * 1.10 + 20, f"{role}: {second:.0f} MB -> {last_third:.0f} MB"
