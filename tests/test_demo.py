"""``rapport demo``: a small demo generated and loaded through the real CLI, then checked the
way a user (and the identity-resolution work of the next issue) will look at it.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from rapport.db.tables import import_runs, quarantine
from rapport.demo.generate import DemoFiles, generate
from rapport.demo.mess import TEST_PHONE
from rapport.demo.people import Pools
from rapport.demo.systems import TRACKING_SOURCES, generate_chunk
from rapport.ingest.normalize import InvalidValue, normalize_mobile
from rapport.ingest.sources import list_sources
from rapport.settings import load_settings
from rapport.workspace import Workspace

AS_OF = "2026-11-25"
SEED = 7
PERSONS = 300


def rapport(home: Path, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rapport", *args],
        env={**os.environ, "RAPPORT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"rapport {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("demo-home")
    output = rapport(
        home, "demo", "--persons", str(PERSONS), "--seed", str(SEED), "--as-of", AS_OF, "--no-serve"
    )
    return home, output


def test_demo_serves_the_console_after_loading(tmp_path: Path) -> None:
    """``make demo``'s last step: the loaded demo is served and the console answers."""
    from conftest import free_port, wait_serving

    port = free_port()
    args = ["demo", "--persons", "100", "--seed", str(SEED), "--as-of", AS_OF, "--port", str(port)]
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rapport", *args],
            env={**os.environ, "RAPPORT_HOME": str(tmp_path / "home")},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(proc, f"http://127.0.0.1:{port}/login", 120, log)
    finally:
        proc.terminate()
        proc.wait(30)


def files_of(home: Path) -> DemoFiles:
    return DemoFiles.read(home / "demo")


def test_summary_names_console_and_login(demo: tuple[Path, str]) -> None:
    _, output = demo
    assert "http://127.0.0.1:8000/" in output
    assert "admin" in output and "password" in output
    assert "invalid_mobile" in output  # the quarantine table, by reason


def test_sources_exist(demo: tuple[Path, str]) -> None:
    home, _ = demo
    ws = Workspace(load_settings(home=home))
    names = {s["name"]: s for s in list_sources(ws.db)}
    ws.close()
    assert {"member_db", "orders", "customer_service", "app", "web", "server"} <= set(names)
    assert names["server"]["kind"] == "server"
    assert names["server"]["allowed_events"] == ["payment_failed"]


def test_events_are_in_the_log(demo: tuple[Path, str]) -> None:
    home, _ = demo
    files = files_of(home)
    total = int(rapport(home, "events", "count").strip())
    generated = sum(files.counts[f"events_{s}"] for s in TRACKING_SOURCES)
    assert total == generated > PERSONS * 8
    ws = Workspace(load_settings(home=home))
    assert ws.log.count(source="app") == files.counts["events_app"]
    assert ws.log.count(event="view_product") > 0
    assert ws.log.count(event="payment_failed", source="server") > 0
    ws.close()


def test_import_runs_done(demo: tuple[Path, str]) -> None:
    home, _ = demo
    ws = Workspace(load_settings(home=home))
    with ws.db.connect() as conn:
        runs = conn.execute(select(import_runs)).mappings().all()
    ws.close()
    by_source = {r["source"] for r in runs}
    assert {"member_db", "orders", "customer_service"} <= by_source
    assert all(r["status"] == "done" for r in runs), [(r["source"], r["error"]) for r in runs]
    assert all(r["rows_loaded"] > 0 for r in runs)


def test_invalid_mobiles_are_quarantined(demo: tuple[Path, str]) -> None:
    home, _ = demo
    with sqlite3.connect(home / "demo" / "member_db.sqlite") as db:
        members = db.execute("SELECT member_id, mobile FROM members").fetchall()
    invalid = []
    for member_id, mobile in members:
        try:
            normalize_mobile(mobile)
        except InvalidValue:
            invalid.append(member_id)
    assert invalid, "the demo must contain invalid mobiles"
    ws = Workspace(load_settings(home=home))
    with ws.db.connect() as conn:
        rows = conn.execute(
            select(quarantine.c.reason, quarantine.c.payload).where(
                quarantine.c.source == "member_db"
            )
        ).all()
    ws.close()
    quarantined = " ".join(payload for _, payload in rows)
    assert all(member_id in quarantined for member_id in invalid)
    assert "invalid_mobile" in {reason for reason, _ in rows}


def test_ground_truth_has_every_record(demo: tuple[Path, str]) -> None:
    home, _ = demo
    files = files_of(home)
    truth = pq.read_table(files.ground_truth).to_pylist()
    keys: dict[str, set[str]] = defaultdict(set)
    for row in truth:
        keys[row["source"]].add(row["record_key"])
    assert len(truth) == files.counts["truth"]
    with sqlite3.connect(files.member_db) as db:
        assert keys["member_db"] == {r[0] for r in db.execute("SELECT member_id FROM members")}
    assert keys["orders"] == set(pq.read_table(files.orders)["order_id"].to_pylist())
    with files.tickets.open(encoding="utf-8") as fh:
        assert keys["customer_service"] == {r["ticket_id"] for r in csv.DictReader(fh)}
    for source in TRACKING_SOURCES:
        with files.tracking(source).open("rb") as fh:
            ids = {json.loads(line)["messageId"] for line in fh}
        assert keys[source] == ids
    # the truth is hidden: no loaded record carries it
    assert "true_person" not in files.tracking("app").read_text()[:100_000]


def test_deterministic_for_a_seed(demo: tuple[Path, str], tmp_path: Path) -> None:
    home, _ = demo
    first = files_of(home)
    end = datetime.fromisoformat(first.window_end)
    again = generate(tmp_path / "again", persons=PERSONS, seed=SEED, end=end)
    other = generate(tmp_path / "other", persons=PERSONS, seed=SEED + 1, end=end)
    for source in TRACKING_SOURCES:
        assert again.tracking(source).read_bytes() == first.tracking(source).read_bytes()
    assert again.tickets.read_bytes() == first.tickets.read_bytes()
    assert pq.read_table(again.orders).equals(pq.read_table(first.orders))
    assert pq.read_table(again.ground_truth).equals(pq.read_table(first.ground_truth))
    with sqlite3.connect(first.member_db) as a, sqlite3.connect(again.member_db) as b:
        query = "SELECT * FROM members ORDER BY member_id"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
    assert other.tracking("app").read_bytes() != first.tracking("app").read_bytes()


def test_the_mess_is_there() -> None:
    """One chunk of 2,000 people has what makes identity resolution hard (and measurable)."""
    end = datetime(2026, 11, 25, tzinfo=UTC)
    chunk = generate_chunk(3, 0, 0, 2000, end, Pools.build(3))
    truth = dict(zip(chunk.truth[1], chunk.truth[2], strict=True))
    # a shared test phone number, used by several unrelated people
    test_phone_people = {truth[r[0]] for r in chunk.members if r[4] == "13800138000"}
    test_phone_people |= {truth[r[0]] for r in chunk.orders if r[2] == TEST_PHONE}
    assert len(test_phone_people) >= 3
    # duplicate member rows: one person, two member ids
    members_per_person = Counter(truth[r[0]] for r in chunk.members)
    assert max(members_per_person.values()) >= 2
    # inconsistent formats and missing fields
    mobiles = [r[4] for r in chunk.members]
    assert any(m.startswith("+86-") for m in mobiles) and any(" " in m for m in mobiles)
    assert any(r[5] and r[5] != r[5].strip().lower() for r in chunk.members)  # messy emails
    assert any("年" in (r[3] or "") for r in chunk.members)  # birthdays in several formats
    assert any(r[5] is None for r in chunk.members)
    # a shared household device: one device id, several true people
    people_per_device: dict[str, set[int]] = defaultdict(set)
    for line in chunk.jsonl["app"].splitlines():
        message = json.loads(line)
        people_per_device[message["anonymousId"]].add(truth[message["messageId"]])
    assert max(len(p) for p in people_per_device.values()) >= 2
    # premium fridges viewed for a long time: the seeds' lead example exists in the data
    assert b'"category":"fridge","price":8999.0,"duration_s"' in chunk.jsonl["app"]


def test_marketing_campaign_has_results_from_the_data(demo: tuple[Path, str]) -> None:
    """Sent 10 days before the data end to a call list, exported: every message delivered at
    that time, and the 7-day trend and uplift computed from the data's own orders."""
    from rapport.campaigns.results import results
    from rapport.demo.marketing import AUDIENCE, CAMPAIGN, PLACEMENT, SEND_DAYS
    from rapport.personalize.choose import choose
    from rapport.segments.store import members

    home, output = demo
    assert "Marketing" in output and "uplift vs holdout" in output
    ws = Workspace(load_settings(home=home))
    r = results(ws, CAMPAIGN)
    end = datetime.fromisoformat(files_of(home).window_end)
    assert r["campaign"]["status"] == "sent" and r["goal_event"] == "order_paid"
    assert datetime.fromisoformat(r["sent_at"]) == end - timedelta(days=SEND_DAYS)
    assert r["sent"] == r["delivered"] == r["planned"] > 0 and r["holdout"] > 0
    assert r["coupons_issued"] == r["sent"]
    assert len(r["trend"]["rows"]) == 7 and r["uplift"]["absolute"] is not None
    assert r["trend"]["rows"][-1][2] == r["converted"]
    assert choose(ws, PLACEMENT, None).content["title"] == "Spring sale"  # the default
    high_value = next(iter(members(ws, AUDIENCE)))
    assert choose(ws, PLACEMENT, high_value).variant == AUDIENCE
    ws.close()
