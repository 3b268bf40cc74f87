"""The cluster mode of the test fixtures (``RAPPORT_TEST_PROFILE=cluster``, ``make test-cluster``).

Each workspace home a fixture makes (``settings``, ``migrated_home``, ``copy_home``, ``server``)
gets ``profile = "cluster"`` in its ``rapport.toml``, so subprocesses run on the same stores:
its own PostgreSQL database, a copy of a template migrated once per session (``CREATE DATABASE
... TEMPLATE``: a copy is ~30x faster than migrating), and a JetStream stream of its own for the
event log. Two stores stay embedded: the warehouse is DuckDB (Spark has its own tests, ``-m
spark``: a Spark session per test would take hours) and lead rules run in the follower
(``stream_backend = "embedded"``: the persons' partitions need ``rapport worker rules``
processes, which ``tests/test_stream_workers.py`` and ``tests/test_cluster.py`` run). What a
test makes is dropped after it; what a module or the session makes, at the end of the session.

Templates are sealed (``ALLOW_CONNECTIONS false``): a home copied by hand (``shutil.copytree``)
would share its template's database, so it fails on connecting instead; use ``copy_home``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tomllib
import uuid
from pathlib import Path

import nats
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, create_engine, text

PROFILE = os.environ.get("RAPPORT_TEST_PROFILE", "embedded")
if PROFILE not in ("embedded", "cluster"):
    raise ValueError(f"RAPPORT_TEST_PROFILE={PROFILE!r}: embedded or cluster")
CLUSTER = PROFILE == "cluster"
PG_URL = os.environ.get("RAPPORT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("RAPPORT_TEST_NATS", "nats://127.0.0.1:4222")
#: a single process, as the embedded tests expect (explicit fixture overrides still win);
#: ``rapport serve`` turns both off itself
SINGLE_PROCESS = {"loader_in_process": True, "dispatcher_in_process": True}


class Stores:
    """The PostgreSQL databases and JetStream streams made so far (``drop_after`` frees the
    ones made after a mark)."""

    def __init__(self, pg_url: str = PG_URL) -> None:
        self.server = pg_url.rsplit("/", 1)[0]
        self._admin: Engine | None = None
        self._pg_url = pg_url
        self.databases: list[str] = []
        self.streams: list[str] = []
        self._template = ""

    @property
    def admin(self) -> Engine:
        if self._admin is None:
            self._admin = create_engine(self._pg_url, isolation_level="AUTOCOMMIT")
        return self._admin

    def url(self, database: str) -> str:
        return f"{self.server}/{database}"

    def create_database(self, template: str | None = None) -> str:
        """A new database (a copy of ``template``, else of the migrated template)."""
        name = "rpt_" + uuid.uuid4().hex[:12]
        source = template or self.template()
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE {name} TEMPLATE "{source}"'))
        self.databases.append(name)
        return name

    def template(self) -> str:
        """The session's migrated database without users (made on first use)."""
        if not self._template:
            from rapport.db import upgrade

            name = "rpt_tpl_" + uuid.uuid4().hex[:12]
            with self.admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            self.databases.append(name)
            upgrade(self.url(name))  # Alembic's engine has no pool: nothing stays connected
            self.seal(name)
            self._template = name
        return self._template

    def seal(self, database: str) -> None:
        """Refuse connections to ``database`` (a template: only copies of it are used)."""
        with self.admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false"))

    def new_stream(self) -> str:
        """The name of an event log stream (JetStream makes it on use)."""
        name = f"RAPPORT_T{uuid.uuid4().hex[:12].upper()}_EVENTS"
        self.streams.append(name)
        return name

    def mark(self) -> tuple[int, int]:
        return len(self.databases), len(self.streams)

    def drop_after(self, mark: tuple[int, int] = (0, 0)) -> None:
        databases, self.databases = self.databases[mark[0] :], self.databases[: mark[0]]
        streams, self.streams = self.streams[mark[1] :], self.streams[: mark[1]]
        if streams:
            asyncio.run(_delete_streams(streams))
        if databases:
            with self.admin.connect() as conn:
                for name in reversed(databases):  # copies before their template
                    conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if mark == (0, 0) and self._admin is not None:
            self._admin.dispose()
            self._admin = None
            self._template = ""


async def _delete_streams(names: list[str]) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def _stream_messages(name: str) -> int:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    try:
        return (await nc.jetstream().stream_info(name)).state.messages
    except NotFoundError:
        return 0
    finally:
        await nc.close()


STORES = Stores()


def write_cluster_home(home: Path) -> None:
    """``home/rapport.toml`` selecting the cluster profile: on a fresh copy of the migrated
    template, or, in a copied home, of the database its ``rapport.toml`` names (settings of
    its own are kept); with an event log stream of its own either way."""
    values = read_settings(home)
    source = _database(values)
    if source is None and (home / "rapport.db").exists():
        raise RuntimeError(f"{home} is a copy of an embedded home: make its template a fixture's")
    log = str(values.get("nats_log_stream", ""))
    if log and asyncio.run(_stream_messages(log)):  # a copy gets the database, not the log
        raise RuntimeError(f"{home} is a copy of a home with events in its log stream {log}")
    stores = {
        "profile": "cluster",
        "database_url": STORES.url(STORES.create_database(source)),
        "nats_url": NATS_URL,
        "nats_log_stream": STORES.new_stream(),
        "stream_backend": "embedded",
        "warehouse_backend": "duckdb",
    }
    write_settings(home, **{**SINGLE_PROCESS, **values, **stores})


def read_settings(home: Path) -> dict[str, object]:
    """What ``home/rapport.toml`` sets (nothing if there is none)."""
    path = home / "rapport.toml"
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        return dict(tomllib.load(fh).get("rapport", {}))


def write_settings(home: Path, **values: object) -> None:
    """Set ``values`` in ``home/rapport.toml``, keeping its other settings (in cluster mode:
    its stores), so that the home's subprocesses read them too."""
    merged = {**read_settings(home), **values}
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {_toml(v)}" for k, v in merged.items()]
    (home / "rapport.toml").write_text("[rapport]\n" + "\n".join(lines) + "\n")


def seal_home(home: Path) -> None:
    """Make ``home`` a template: its database refuses connections (copies of it work)."""
    database = _database(read_settings(home))
    if database:
        STORES.seal(database)


def _database(values: dict[str, object]) -> str | None:
    url = str(values.get("database_url", ""))
    return url.rsplit("/", 1)[1] if url.startswith("postgresql") else None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
