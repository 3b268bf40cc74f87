"""``rapport serve`` as a command: how it ends, and that its children end with it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

from conftest import Server, free_port
from faults.helpers import children_of
from test_supervise import children_left


def test_serve_on_a_port_in_use_exits_3_and_leaves_no_child(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        srv = Server(home=home, port=port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "rapport", "serve", "--port", str(port)],
            env=srv.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()[-2000:]  # as `uvicorn.run` exits
    assert "address already in use" in err.decode().lower()
    assert not children_left(proc.pid), "the follower or dispatcher outlived serve"


def test_ctrl_c_stops_serve_and_its_children(server):
    assert server.proc is not None
    pid = server.proc.pid
    deadline = time.monotonic() + 30
    while not {"follow", "dispatch"} <= set(children_of(pid)):
        assert time.monotonic() < deadline, "serve did not start its children"
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGINT)  # serve alone: the children are its to stop
    assert server.proc.wait(60) == 0
    assert not children_left(pid), "the follower or dispatcher outlived serve"
    log = (server.home / "server.log").read_text(errors="replace")
    assert "restarted the" not in log and "restarting it" not in log, log[-2000:]
