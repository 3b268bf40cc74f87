"""``rapport serve`` restarts a dead child (follower, dispatcher) with a backoff, and restarts
nothing once it is shutting down."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from conftest import Server
from faults.helpers import children_of
from rapport.supervise import Child, Supervisor, describe_exit


def _wait_for(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def _restarts(child: str) -> float:
    return REGISTRY.get_sample_value("rapport_child_restarts_total", {"child": child}) or 0.0


def _delays(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    """The waits the supervisor announced for ``name``: "... restarting it in 0.5 s"."""
    return [
        r.getMessage().rsplit(" in ", 1)[1]
        for r in caplog.records
        if r.getMessage().startswith(f"the {name} ") and "restarting it in" in r.getMessage()
    ]


def test_a_crashing_child_is_restarted_with_a_doubling_backoff(caplog):
    caplog.set_level(logging.INFO, "rapport.supervise")
    before = _restarts("crasher")
    sup = Supervisor(
        [Child("crasher", ["/bin/sh", "-c", "exit 3"])],
        poll=0.02,
        first_delay=0.05,
        max_delay=0.2,
        reset_after=60,
    )
    sup.start()
    try:
        _wait_for(lambda: sup.children[0].restarts >= 5, 30, "not restarted 5 times")
    finally:
        sup.stop()
    assert _delays(caplog, "crasher")[:5] == ["0.05 s", "0.1 s", "0.2 s", "0.2 s", "0.2 s"]
    assert "the crasher (pid" in caplog.text and "exited with code 3" in caplog.text
    assert _restarts("crasher") - before == sup.children[0].restarts


def test_the_backoff_starts_over_once_a_child_has_lived_long_enough(caplog):
    caplog.set_level(logging.INFO, "rapport.supervise")
    sup = Supervisor(
        [Child("sleeper", ["/bin/sh", "-c", "sleep 0.3; kill -9 $$"])],
        poll=0.02,
        first_delay=0.05,
        max_delay=1.0,
        reset_after=0.2,  # every run lives 0.3 s
    )
    sup.start()
    try:
        _wait_for(lambda: sup.children[0].restarts >= 3, 30, "not restarted 3 times")
    finally:
        sup.stop()
    assert set(_delays(caplog, "sleeper")) == {"0.05 s"}  # never doubled
    assert "was killed by SIGKILL" in caplog.text


def test_stop_ends_the_children_and_restarts_nothing():
    sup = Supervisor([Child("sleeper", ["/bin/sh", "-c", "sleep 60"])], poll=0.02, first_delay=0)
    sup.start()
    pid = sup.pids()["sleeper"]
    sup.stop_restarting()  # as at SIGTERM: the children die with the server
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    assert sup.children[0].restarts == 0 and sup.pids() == {}
    sup.stop()
    assert sup.children[0].proc is not None and sup.children[0].proc.returncode == -9


def test_a_child_that_cannot_start_is_tried_again_without_blocking_the_others(caplog):
    caplog.set_level(logging.INFO, "rapport.supervise")
    sup = Supervisor(
        [
            Child("missing", ["/nonexistent/rapport-child"]),
            Child("sleeper", ["/bin/sh", "-c", "sleep 60"]),
        ],
        poll=0.02,
        first_delay=0.05,
    )
    sup.start()  # returns: a failed start is one more thing to retry
    try:
        assert "sleeper" in sup.pids()
        _wait_for(lambda: caplog.text.count("could not start the missing") >= 3, 30, "no retries")
    finally:
        sup.stop()
    assert sup.children[1].restarts == 0 and sup.pids() == {}


def test_describe_exit():
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-15) == "was killed by SIGTERM"


# -- a real `rapport serve` ------------------------------------------------------------------
def _log(server: Server) -> str:
    return (server.home / "server.log").read_text(errors="replace")


def test_serve_restarts_a_killed_follower_and_dispatcher(server):
    assert server.proc is not None
    first = _wait_for(
        lambda: (c := children_of(server.proc.pid)) and {"follow", "dispatch"} <= set(c) and c,
        30,
        "serve did not start its children",
    )
    os.kill(first["follow"], signal.SIGKILL)
    os.kill(first["dispatch"], signal.SIGKILL)
    again = _wait_for(
        lambda: (
            (c := children_of(server.proc.pid)).get("follow", first["follow"]) != first["follow"]
            and c.get("dispatch", first["dispatch"]) != first["dispatch"]
            and c
        ),
        20,
        f"no new children after the kill:\n{_log(server)[-2000:]}",
    )
    assert server.proc.poll() is None, "serve itself keeps running"
    restarted = [
        f"restarted the follower: pid {again['follow']} (restart 1)",
        f"restarted the dispatcher: pid {again['dispatch']} (restart 1)",
    ]  # logged just after the new process started
    log = _wait_for(
        lambda: all(line in (text := _log(server)) for line in restarted) and text,
        10,
        f"restarts not logged:\n{_log(server)[-2000:]}",
    )
    assert f"the follower (pid {first['follow']}) was killed by SIGKILL" in log
    scraped = httpx.get(server.url + "/metrics", timeout=60).text  # a busy machine: slow
    assert 'rapport_child_restarts_total{child="follower"} 1.0' in scraped
    assert 'rapport_child_restarts_total{child="dispatcher"} 1.0' in scraped
    # the new follower works: an event sent now reaches the warehouse
    key = server.cli_json("source", "create", "web")["write_key"]
    r = httpx.post(
        server.url + "/v1/track",
        auth=(key, ""),
        json={"event": "after_restart", "userId": "u1", "messageId": "m-after-restart"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    _wait_for(lambda: _loaded(server.home), 60, "the new follower did not load the event")


def _loaded(home: Path) -> bool:
    from faults.helpers import loaded_offset
    from rapport.settings import load_settings
    from rapport.warehouse.store import Warehouse

    wh = Warehouse.open(load_settings(home=home))
    try:
        return loaded_offset(wh) >= 1
    finally:
        wh.close()


def test_serve_stopped_with_its_children_restarts_none(server):
    """systemd's stop (and Ctrl-C in a terminal) signals serve and its children at once."""
    assert server.proc is not None
    pid = server.proc.pid
    kids = _wait_for(
        lambda: (c := children_of(pid)) and {"follow", "dispatch"} <= set(c) and c,
        30,
        "serve did not start its children",
    )
    for target in [kids["follow"], kids["dispatch"], pid]:
        os.kill(target, signal.SIGTERM)
    server.proc.wait(60)
    time.sleep(1)  # past the first restart's delay
    log = _log(server)
    assert "restarted the" not in log, log[-2000:]
    assert not children_left(pid), "children of the stopped serve still run"


def children_left(pid: int) -> list[int]:
    """The children ``serve`` ``pid`` started that still run (adopted by init once it died):
    each has ``--parent PID`` on its command line."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"--parent\0{pid}\0" in (proc / "cmdline").read_bytes().decode(errors="replace"):
                left.append(int(proc.name))
        except OSError:
            continue
    return left
