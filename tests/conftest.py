"""Shared fixtures: a fresh workspace per test, an in-process client, a real server process,
and the machine's PostgreSQL / MariaDB (skipped when absent unless RAPPORT_REQUIRE_SERVICES=1).

``RAPPORT_TEST_PROFILE=cluster`` puts the workspaces and servers of these fixtures on the
cluster profile's stores (``cluster_mode``); tests marked ``embedded_only`` are skipped then.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

import cluster_mode
from cluster_mode import CLUSTER, PG_URL, STORES
from rapport import accounts
from rapport.settings import Settings, load_settings
from rapport.workspace import Workspace

REQUIRE_SERVICES = os.environ.get("RAPPORT_REQUIRE_SERVICES") == "1"
MARIADB_URL = os.environ.get("RAPPORT_TEST_MARIADB", "mysql+pymysql://root@127.0.0.1:3306/test")


def service_unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc.__class__.__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(message + " and RAPPORT_REQUIRE_SERVICES=1")
    pytest.skip(message)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In cluster mode, skip the tests of the embedded stores (with the marker's reason)."""
    if not CLUSTER:
        return
    for item in items:
        marker = item.get_closest_marker("embedded_only")
        if marker is not None:
            why = marker.args[0] if marker.args else "embedded profile only"
            item.add_marker(pytest.mark.skip(reason=f"embedded only: {why}"))


@pytest.fixture(scope="session", autouse=True)
def _cluster_session() -> Iterator[None]:
    """Cluster mode: drop what modules and the session made (templates included)."""
    yield
    if CLUSTER:
        STORES.drop_after()


@pytest.fixture(autouse=True)
def _cluster_stores() -> Iterator[None]:
    """Cluster mode: drop the databases and streams this test made (after its fixtures)."""
    if not CLUSTER:
        yield
        return
    mark = STORES.mark()
    yield
    STORES.drop_after(mark)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    if CLUSTER:  # a migrated database without users, as a new home is before `init`
        cluster_mode.write_cluster_home(tmp_path / "home")
    return load_settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def migrated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated metadata DB and an empty warehouse, made once: a copy per test is ~30x
    faster than migrating each time (modules whose tests only need the stores use it)."""
    home = tmp_path_factory.mktemp("template") / "home"
    if CLUSTER:
        cluster_mode.write_cluster_home(home)
    ws = Workspace(load_settings(home=home))
    ws.init()
    with ws.warehouse.connect():
        pass
    ws.close()
    if CLUSTER:
        cluster_mode.seal_home(home)
    return home


def copy_home(template: Path, tmp_path: Path, **overrides: object) -> Settings:
    """Settings of a fresh copy of ``template`` under ``tmp_path`` (in cluster mode with a
    copy of its database; ``template``'s workspace must be closed)."""
    shutil.copytree(template, tmp_path / "home")
    if CLUSTER:
        cluster_mode.write_cluster_home(tmp_path / "home")
    return load_settings(home=tmp_path / "home", **overrides)


@pytest.fixture
def workspace(settings: Settings) -> Iterator[Workspace]:
    ws = Workspace(settings)
    ws.init()
    yield ws
    ws.close()


@pytest.fixture
def client(workspace: Workspace) -> Iterator[httpx.Client]:
    """An in-process client of the whole app (lifespan included)."""
    from fastapi.testclient import TestClient

    from rapport.web.app import create_app

    with TestClient(create_app(workspace=workspace)) as test_client:
        yield test_client


@pytest.fixture
def admin_headers(workspace: Workspace) -> dict[str, str]:
    token = accounts.create_token(workspace.db, accounts.Role.admin, "test")
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(proc: subprocess.Popen[bytes], url: str, seconds: float, log: Path) -> None:
    """Until ``url`` answers 200 (``proc`` alive; its ``log`` is the error if it died)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {seconds:.0f} s")


@dataclass
class Server:
    """A real ``rapport serve`` process on a free port with its own RAPPORT_HOME."""

    home: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    admin_password: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RAPPORT_HOME": str(self.home)}

    def cli(self, *args: str) -> str:
        """Run ``rapport ARGS`` against this server's home; stdout."""
        out = subprocess.run(
            [sys.executable, "-m", "rapport", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise AssertionError(f"rapport {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def cli_json(self, *args: str) -> dict:
        return json.loads(self.cli(*args, "--json"))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rapport", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.home / "server.log", "ab"),  # noqa: SIM115
        )
        wait_serving(self.proc, self.url + "/healthz", 60, self.home / "server.log")

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "server-home"
    home.mkdir()
    if CLUSTER:
        cluster_mode.write_cluster_home(home)
    srv = Server(home=home, port=free_port())
    init = srv.cli("init")
    srv.admin_password = init.split("password:")[1].split()[0] if "password:" in init else ""
    srv.start()
    yield srv
    srv.stop()


def _database(url: str, what: str) -> Iterator[str]:
    """A fresh, empty database on the service; dropped afterwards."""
    name = "rpt_" + uuid.uuid4().hex[:10]
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001
        service_unavailable(what, exc)
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _database(PG_URL, "PostgreSQL")


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    yield from _database(MARIADB_URL, "MariaDB")


def small_spark(app: str, catalog: Path) -> Any:
    """A small local Spark session for tables of a few thousand rows: one core, one shuffle
    partition, no UI, UTC, no code generation (compiling Java would cost more than it saves)."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(catalog))
        .config("spark.driver.memory", "1g")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={catalog}")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session
