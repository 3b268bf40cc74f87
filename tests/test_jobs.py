"""Scheduled jobs: schedule texts, due / missed / failed / concurrent runs, the built-in tag
job, and the API, CLI-free console page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import copy_home
from rapport.accounts import Role
from rapport.jobs import registry
from rapport.jobs.registry import Job
from rapport.jobs.runner import JobBusy, history, overview, run_due, run_now
from rapport.jobs.schedule import ScheduleError, next_run, parse, time_zone
from rapport.settings import Settings
from rapport.workspace import Workspace
from test_console import as_role
from test_tags import tag, values, write_events

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


# -- schedule texts ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        ("hourly", "2026-11-25T10:00:00", "2026-11-25T11:00:00"),
        ("Hourly", "2026-11-25T10:59:59", "2026-11-25T11:00:00"),
        ("daily", "2026-11-25T10:00:00", "2026-11-26T00:00:00"),
        ("daily at 06:00", "2026-11-25T05:59:00", "2026-11-25T06:00:00"),
        ("daily  at 6:30", "2026-11-25T06:30:00", "2026-11-26T06:30:00"),
        ("every 15 minutes", "2026-11-25T10:07:00", "2026-11-25T10:15:00"),
        ("every minute", "2026-11-25T10:07:30", "2026-11-25T10:08:00"),
        ("every 6 hours", "2026-11-25T13:00:00", "2026-11-25T18:00:00"),
        ("30 6 * * mon-fri", "2026-11-27T07:00:00", "2026-11-30T06:30:00"),  # Fri -> Mon
    ],
)
def test_next_run_in_utc(text: str, after: str, expected: str) -> None:
    got = next_run(text, datetime.fromisoformat(after).replace(tzinfo=UTC))
    assert got == datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_schedules_are_read_in_the_workspace_time_zone() -> None:
    # Asia/Shanghai is UTC+8 all year (no DST): 06:00 there is 22:00 UTC the day before
    after = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    assert next_run("daily at 06:00", after, "Asia/Shanghai") == datetime(
        2026, 11, 25, 22, 0, tzinfo=UTC
    )
    assert next_run("daily", after, "Asia/Shanghai") == datetime(2026, 11, 25, 16, 0, tzinfo=UTC)
    # in July as in November: no DST shift
    july = datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert next_run("daily at 06:00", july, "Asia/Shanghai") == datetime(
        2026, 7, 1, 22, 0, tzinfo=UTC
    )
    # a DST zone moves the UTC time of the same local slot
    paris_winter = next_run("daily at 06:00", after, "Europe/Paris")
    paris_summer = next_run("daily at 06:00", july, "Europe/Paris")
    assert (paris_winter.hour, paris_summer.hour) == (5, 4)


@pytest.mark.parametrize(
    ("text", "part", "words"),
    [
        ("daily at 25:00", "25:00", "hour must be 0-23"),
        ("daily at 6pm", "6pm", "HH:MM"),
        ("every 7 minutes", "every 7 minutes", "divide an hour"),
        ("every 5 hours", "every 5 hours", "divide a day"),
        ("61 * * * *", "61", "minute"),
        ("0 0 * 13 *", "13", "month"),
        ("0 0 * * funday", "funday", "day-of-week"),
        ("* * *", "* * *", "5 fields"),
        ("weekly", "weekly", "5 fields"),
        ("every blue moon", "every blue moon", "hourly, daily"),
        ("", "", "empty"),
    ],
)
def test_bad_schedules_name_the_part_at_fault(text: str, part: str, words: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse(text)
    assert err.value.part == part
    assert words in err.value.message


def test_unknown_time_zone() -> None:
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        time_zone("Mars/Olympus")


# -- the runner ------------------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path)


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    yield workspace
    workspace.close()


class Probe:
    """Test jobs: each records the instants it ran at; ``fail`` makes one raise."""

    def __init__(self) -> None:
        self.runs: dict[str, list[datetime]] = {}
        self.fail: set[str] = set()
        self.sleep = 0.0
        self.schedules: dict[str, str] = {}

    def job(self, key: str) -> Job:
        def run(_ws: Workspace, when: datetime) -> dict[str, Any]:
            self.runs.setdefault(key, []).append(when)
            time.sleep(self.sleep)
            if key in self.fail:
                raise RuntimeError(f"{key} broke")
            return {"n": len(self.runs[key])}

        return Job(key, f"probe {key}", self.schedules[key], run)

    def provider(self, _ws: Workspace) -> list[Job]:
        return [self.job(k) for k in self.schedules]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Probe:
    """Only the probe's jobs are registered (the built-in ones are tested on their own)."""
    p = Probe()
    monkeypatch.setattr(registry, "_providers", {"probe": p.provider})
    monkeypatch.setattr(registry, "_imported", True)  # no other package's providers either
    return p


def test_a_job_runs_when_due_and_not_before(ws, probe):
    probe.schedules = {"quarter": "every 15 minutes"}
    assert run_due(ws, at(0)) == []  # first seen at 10:00: the first slot is 10:15
    assert run_due(ws, at(0, 14)) == []
    [record] = run_due(ws, at(0, 15))
    assert (record["key"], record["status"], record["result"]) == ("quarter", "ok", {"n": 1})
    assert run_due(ws, at(0, 20)) == []
    assert [r["key"] for r in run_due(ws, at(0, 31))] == ["quarter"]
    assert probe.runs["quarter"] == [at(0, 15), at(0, 31)]
    [job] = overview(ws, at(0, 31))
    assert job["next_run"] == at(0, 45).isoformat()
    assert job["last_run"]["status"] == "ok"


def test_missed_runs_are_coalesced_into_one(ws, probe):
    probe.schedules = {"h": "hourly"}
    run_due(ws, at(0))
    # the server was down from 10:00 to 15:30: five slots passed, the job runs once
    assert len(run_due(ws, at(5, 30))) == 1
    assert run_due(ws, at(5, 59)) == []
    assert len(run_due(ws, at(6))) == 1
    assert probe.runs["h"] == [at(5, 30), at(6)]


def test_a_failure_is_recorded_and_the_others_still_run(ws, probe):
    probe.schedules = {"bad": "hourly", "good": "hourly"}
    probe.fail = {"bad"}
    run_due(ws, at(0))
    records = {r["key"]: r for r in run_due(ws, at(1))}
    assert records["bad"]["status"] == "failed"
    assert records["bad"]["error"] == "RuntimeError: bad broke"
    assert records["good"]["status"] == "ok"
    [last] = history(ws, "bad")
    assert (last["status"], last["error"], last["trigger"]) == (
        "failed",
        "RuntimeError: bad broke",
        "schedule",
    )
    # a failed job waits for its next slot like any other
    assert run_due(ws, at(1, 30)) == []


def test_a_bad_schedule_is_reported_once_and_does_not_stop_the_others(ws, probe):
    probe.schedules = {"typo": "every 7 minutes", "ok": "hourly"}
    first = run_due(ws, at(0))
    assert [(r["key"], r["status"]) for r in first] == [("typo", "failed")]
    assert "divide an hour" in first[0]["error"]
    assert [r["key"] for r in run_due(ws, at(1)) if r["status"] == "ok"] == ["ok"]
    assert len(history(ws, "typo")) == 1  # the same error is not repeated every check


def test_two_threads_never_run_a_job_twice(ws, probe):
    probe.schedules = {"slow": "hourly"}
    probe.sleep = 0.5
    run_due(ws, at(0))
    results: list[list[dict[str, Any]]] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_due(ws, at(1)))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    with pytest.raises(JobBusy):  # nor does "run now" start it while it runs
        run_now(ws, "slow", at(1))
    for t in threads:
        t.join()
    assert len(probe.runs["slow"]) == 1
    assert sorted(len(r) for r in results) == [0, 1]
    assert len(history(ws, "slow")) == 1


def test_run_now_runs_at_once_and_the_schedule_counts_from_it(ws, probe):
    probe.schedules = {"d": "daily at 02:00"}
    record = run_now(ws, "d", at(0))
    assert (record["trigger"], record["status"]) == ("manual", "ok")
    assert run_due(ws, at(15)) == []  # 01:00 the next day: not yet
    assert len(run_due(ws, at(16))) == 1  # 02:00


def test_a_tag_with_an_hourly_schedule_is_computed_by_run_due(ws):
    ws.init()
    write_events(
        ws,
        [
            (1, "order_paid", {}, at(-2)),
            (1, "order_paid", {}, at(-1)),
            (2, "order_paid", {}, at(-1)),
        ],
    )
    tag(
        ws,
        "orders_30d",
        "statistical",
        {"event": "order_paid", "agg": "count", "window_days": 30},
        schedule="hourly",
    )
    tag(ws, "unscheduled", "statistical", {"event": "order_paid", "agg": "count"})
    assert [j["key"] for j in overview(ws, at(0)) if j["key"].startswith("tag:")] == [
        "tag:orders_30d"
    ]
    run_due(ws, at(0, 10))  # seen at 10:10
    assert values(ws, "orders_30d") == {}
    done = {r["key"]: r for r in run_due(ws, at(1))}
    assert done["tag:orders_30d"]["status"] == "ok", done["tag:orders_30d"]["error"]
    assert done["tag:orders_30d"]["result"]["persons"] == 2
    assert values(ws, "orders_30d") == {1: "2", 2: "1"}
    assert "tag:unscheduled" not in done


# -- API and console ---------------------------------------------------------------------
def test_api_lists_runs_and_refuses_non_admins(client, workspace, admin_headers, probe):
    probe.schedules = {"probe:a": "every 15 minutes"}
    listed = client.get("/api/jobs", headers=admin_headers)
    assert listed.status_code == 200
    [job] = listed.json()
    assert (job["key"], job["schedule"], job["last_run"]) == ("probe:a", "every 15 minutes", None)
    assert job["next_run"] is not None

    ran = client.post("/api/jobs/probe:a/run", headers=admin_headers)
    assert ran.status_code == 200 and ran.json()["status"] == "ok"
    assert ran.json()["result"] == {"n": 1}
    one = client.get("/api/jobs/probe:a", headers=admin_headers).json()
    assert one["last_run"]["status"] == "ok" and len(one["runs"]) == 1
    assert client.get("/api/jobs/runs?key=probe:a", headers=admin_headers).json()[0]["id"]

    missing = client.post("/api/jobs/nope/run", headers=admin_headers)
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "no job with key 'nope' (see `rapport jobs list`)",
        "field": "key",
    }
    assert client.get("/api/jobs").status_code == 401


def test_console_page_lists_jobs_and_runs_one(client, workspace, probe):
    probe.schedules = {"probe:a": "hourly", "probe:b": "daily at 06:00"}
    probe.fail = {"probe:b"}
    csrf = as_role(client, workspace, Role.admin)
    page = client.get("/jobs")
    assert page.status_code == 200
    assert "probe:a" in page.text and "daily at 06:00" in page.text and "never" in page.text
    ran = client.post("/jobs/probe:b/run", headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert ran.status_code == 200
    assert "probe:b failed: RuntimeError: probe:b broke" in ran.headers["HX-Trigger"]
    assert "RuntimeError: probe:b broke" in ran.text  # the history in the swapped fragment
    assert "RuntimeError" not in client.get("/jobs?key=probe:a").text.split("Run history")[1]


def test_console_page_is_for_admins(client, workspace, probe):
    as_role(client, workspace, Role.marketer)
    assert client.get("/jobs").status_code == 403
