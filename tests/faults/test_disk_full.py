"""The disk under RAPPORT_HOME fills up while events arrive: the collector refuses with a clear
507 (never acknowledging what it could not write), nothing acknowledged is damaged, and once
space is freed ingestion and the follower carry on without a restart.

A small tmpfs is mounted as RAPPORT_HOME (root only; skipped otherwise) and unmounted after.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faults.helpers import Load, log_ids, report, warehouse_ids
from rapport.settings import load_settings
from rapport.warehouse.store import Warehouse

pytestmark = pytest.mark.long

SIZE_MB, FILLER_MB = 40, 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        for _ in range(20):  # the server's children may take a moment to let go
            if subprocess.run(["umount", str(mount)], check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path, mb: int) -> None:
    with path.open("wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))


def test_disk_full_refuses_clearly_keeps_what_was_acknowledged_and_recovers(
    small_disk, fault_server
):
    filler = small_disk / "filler"
    fill(filler, FILLER_MB)  # space to give back later
    srv = fault_server(home=small_disk)
    key = srv.cli_json("source", "create", "web")["write_key"]
    with Load(srv.url, key, threads=1, batch=200) as first:
        first.wait_for(1000)
    assert len(warehouse_ids(srv.home)) == len(first.acked)  # a running warehouse, then:
    load = Load(srv.url, key, threads=2, batch=200)
    with load:
        deadline = time.monotonic() + 180
        while not (set(load.statuses) - {200}):
            assert time.monotonic() < deadline, f"the disk never filled: {load.statuses}"
            time.sleep(0.1)
        time.sleep(2)  # a few more refusals: none may be a 500
    acked = first.acked | load.acked
    print(f"answers while filling: {dict(load.statuses)}; {load.bodies}")
    assert set(load.statuses) <= {200, 507}, load.bodies
    refused = json.loads(load.bodies[507])
    assert refused["code"] == "insufficient_storage", refused
    assert "is full" in refused["message"], refused
    assert "nothing in this request was stored" in refused["message"], refused
    with httpx.Client(base_url=srv.url, auth=(key, ""), timeout=10) as http:
        for _ in range(20):  # a small request may still fit in a page; a batch does not
            r = http.post("/v1/batch", json={"batch": load.make_batch()})
            if r.status_code != 200:
                break
            acked |= {x["messageId"] for x in r.json()["results"] if x["status"] == "accepted"}
        assert r.status_code == 507 and r.headers["retry-after"], r.text
        assert r.json()["code"] == "insufficient_storage"

    # nothing acknowledged is damaged: the log's SQLite checks out, the warehouse opens
    settings_home = srv.home
    settings = load_settings(home=settings_home)
    with contextlib.closing(sqlite3.connect(settings.log_file)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = set(log_ids(settings_home))
    report("disk full, log", len(acked), len(acked & stored))
    assert acked <= stored
    wh = Warehouse.open(settings)  # opens (taking turns with the follower) and answers
    with wh.connect() as con:
        in_warehouse = con.raw_sql("SELECT count(*) FROM events").fetchone()[0]
    wh.close()
    print(f"the warehouse opens and holds {in_warehouse} events while the disk is full")
    assert in_warehouse >= len(first.acked)

    filler.unlink()  # space is back: no restart
    with Load(srv.url, key, threads=2, batch=200) as more:
        more.wait_for(2000, seconds=60)
    assert set(more.statuses) == {200}, (more.statuses, more.bodies)
    acked |= more.acked
    loaded = warehouse_ids(settings_home, seconds=180)
    report("disk full then freed, warehouse", len(acked), len(acked & set(loaded)))
    assert acked <= set(loaded) and len(loaded) == len(set(loaded))
    assert srv.proc is not None and srv.proc.poll() is None and "follow" in srv.children()
