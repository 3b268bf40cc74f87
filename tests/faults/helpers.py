"""Helpers of the fault tests: real ``rapport serve`` processes, a load that counts what was
acknowledged, and the shared services (PostgreSQL, NATS) stopped and started again — always
restored in a ``finally``, because other tests on this machine use them too.

Every test ends by comparing what was acknowledged with what is there ("acknowledged N,
found N").
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, free_port
from rapport.log import EventLog
from rapport.settings import load_settings
from rapport.warehouse.store import Warehouse, WarehouseBusy


@dataclass
class FaultServer(Server):
    """``conftest.Server`` with extra environment and its log outside RAPPORT_HOME (a full
    disk must not also swallow the server's own log)."""

    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path = Path("/dev/null")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RAPPORT_HOME": str(self.home), **self.extra_env}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rapport", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("server did not start")

    def children(self) -> dict[str, int]:
        """The child processes of ``serve`` by role: follow, dispatch, writer."""
        assert self.proc is not None
        return children_of(self.proc.pid)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def children_of(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    kids: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a thread's children are listed by it
        with contextlib.suppress(OSError):
            kids += (task / "children").read_text().split()
    for child in kids:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        role = (
            "follow"
            if "warehouse follow" in cmd
            else "dispatch"
            if "delivery dispatch" in cmd
            else "writer"
            if "serve_writes" in cmd
            else cmd
        )
        found[role] = int(child)
    return found


def make_server(tmp_path: Path, home: Path | None = None, **env: str) -> FaultServer:
    """An initialised (not started) server; ``home`` defaults to a fresh directory. The
    per-key rate limit is off: these loads measure durability, not the limiter."""
    home = home or tmp_path / "server-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"RAPPORT_COLLECTOR_RATE_LIMIT": "0", **env}
    srv = FaultServer(home=home, port=free_port(), extra_env=env, log_path=tmp_path / "server.log")
    srv.cli("init")
    return srv


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[Callable[..., FaultServer]]:
    """A factory of started servers (``make(**env)``), all stopped afterwards."""
    made: list[FaultServer] = []

    def make(home: Path | None = None, **env: str) -> FaultServer:
        srv = make_server(tmp_path, home, **env)
        made.append(srv)
        srv.start()
        return srv

    yield make
    for srv in made:
        with contextlib.suppress(Exception):
            srv.stop()


class Load:
    """Threads posting batches to ``/v1/batch``; ``acked`` holds every messageId answered
    ``accepted`` (committed and fsync'd), ``statuses`` counts the answers."""

    def __init__(
        self, url: str, key: str, threads: int = 4, batch: int = 100, pause: float = 0.0
    ) -> None:
        self.url, self.key, self.batch, self.pause = url, key, batch, pause
        self.acked: set[str] = set()
        self.statuses: Counter[int | str] = Counter()
        self.bodies: dict[int, str] = {}  # one error body per status, to show
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(30)

    def make_batch(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "track",
                "event": "tick",
                "userId": f"u{n % 50}",
                "messageId": uuid.uuid4().hex,
            }
            for n in range(self.batch)
        ]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, auth=(self.key, ""), timeout=10) as http:
            while not self.stop_flag.is_set():
                try:
                    r = http.post("/v1/batch", json={"batch": self.make_batch()})
                except httpx.HTTPError as exc:  # nothing of this batch was acknowledged
                    with self.lock:
                        self.statuses[type(exc).__name__] += 1
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.acked.update(
                            x["messageId"] for x in r.json()["results"] if x["status"] == "accepted"
                        )
                    else:
                        self.bodies.setdefault(r.status_code, r.text[:500])
                if self.pause:
                    time.sleep(self.pause)

    def wait_for(self, n: int, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while len(self.acked) < n:
            assert time.monotonic() < deadline, f"only {len(self.acked)} acknowledged"
            time.sleep(0.05)


def log_ids(home: Path) -> list[str]:
    """Every messageId in the event log of ``home``."""
    log = EventLog.open(load_settings(home=home))
    try:
        return [r.message_id for _, r in log.read(0, 100_000_000)]
    finally:
        log.close()


def warehouse_ids(home: Path, seconds: float = 120) -> list[str]:
    """Every event id in the warehouse, once the follower has loaded the whole log."""
    settings = load_settings(home=home)
    log = EventLog.open(settings)
    wh = Warehouse.open(settings)
    try:
        want = log.last_offset()
        deadline = time.monotonic() + seconds
        while (at := loaded_offset(wh)) < want:
            assert time.monotonic() < deadline, f"the follower is at {at} of {want}"
            time.sleep(0.5)
        with wh.connect(wait=300) as con:
            return [r[0] for r in con.raw_sql("SELECT event_id FROM events").fetchall()]
    finally:
        log.close()
        wh.close()


def loaded_offset(wh: Warehouse) -> int:
    """The log offset the follower has loaded up to; -1 while it holds the file (a long pass)."""
    try:
        return wh.log_offset()
    except WarehouseBusy:
        return -1


def report(what: str, acked: int, found: int) -> None:
    print(f"{what}: acknowledged {acked}, found {found}")


# -- the shared services ---------------------------------------------------------------------
def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    """PostgreSQL down for the body (keep it short: the machine shares it), up afterwards."""
    subprocess.run([*_pg_cluster(), "stop", "-m", "fast"], check=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run([*_pg_cluster(), "start"], check=False, timeout=60)
        _wait(pg_ready, 60, "PostgreSQL did not come back")


NATS = "/usr/sbin/nats-server"
NATS_ARGS = ["-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server"]


def _nats_pids() -> list[int]:
    """The nats-server of port 4222 only (others on this machine are left alone)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if args[0].endswith(b"nats-server") and b"4222" in args:
                pids.append(int(proc.name))
    return pids


def nats_start() -> None:
    """As .ci/run starts it (JetStream data in /var/lib/nats-server), detached from us."""
    if not _port_open(4222):
        subprocess.Popen(
            [NATS, *NATS_ARGS, "-l", "/var/log/nats-server.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
        )
    _wait(lambda: _port_open(4222), 30, "NATS did not come back")


@contextlib.contextmanager
def nats_stopped() -> Iterator[None]:
    """NATS (port 4222) down for the body, up afterwards (its JetStream data stays on disk)."""
    try:
        for pid in _nats_pids():
            os.kill(pid, signal.SIGTERM)
        _wait(lambda: not _port_open(4222), 15, "NATS did not stop")
        yield
    finally:
        nats_start()


@pytest.fixture
def pg_db() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL, dropped afterwards; unlike
    ``conftest.pg_url`` its admin connections survive the restarts these tests cause."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from conftest import PG_URL, service_unavailable

    def admin() -> Any:
        return create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    name = "rpt_fault_" + uuid.uuid4().hex[:8]
    try:
        with admin().connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001
        service_unavailable("PostgreSQL", exc)
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        _wait(pg_ready, 60, "PostgreSQL is not back")
        with admin().connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
