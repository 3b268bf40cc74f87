"""Settings in one place: defaults < ``rapport.toml`` < ``RAPPORT_*`` environment variables.

Everything lives under ``RAPPORT_HOME`` (default ``./rapport-data``) unless a setting points
elsewhere, so the embedded default needs no configuration at all.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

#: what a profile sets unless ``rapport.toml`` or the environment says otherwise
PROFILES: dict[str, dict[str, Any]] = {
    "embedded": {},
    # one machine outgrown: metadata on PostgreSQL (``database_url``, required), the event log
    # and the persons' partitions on NATS JetStream, separate processes (docs/operations.md)
    "cluster": {
        "log_backend": "nats",
        "stream_backend": "nats",
        "warehouse_backend": "spark",
        "loader_in_process": False,
        "dispatcher_in_process": False,
        "checkpoint_store": "nats",
    },
}


@dataclass(frozen=True)
class Settings:
    home: Path = Path("rapport-data")
    #: ``embedded`` (one process, files in home) or ``cluster`` (see PROFILES)
    profile: str = "embedded"
    #: SQLAlchemy URL of the metadata DB; empty means SQLite in ``home``.
    database_url: str = ""
    #: DuckDB warehouse file; empty means ``home/warehouse.duckdb``.
    warehouse_path: str = ""
    #: Embedded event log file; empty means ``home/eventlog.db``.
    log_path: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    #: Group commit: the log writer commits at least this often (milliseconds) ...
    commit_interval_ms: float = 2.0
    #: ... or when this many events are waiting, whichever comes first.
    commit_max_events: int = 5000
    #: Segment's limits.
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    #: Dedupe window for (source, messageId).
    dedupe_hours: int = 72
    #: Timestamps further than this from the server clock are corrected and flagged.
    max_clock_skew_hours: int = 24
    #: Load the warehouse from the log inside the app process (tests, embedded use); ``rapport
    #: serve`` turns this off and runs ``rapport warehouse follow`` as a separate process.
    loader_in_process: bool = True
    #: Run the event log's inserts in a child process (``rapport serve`` does), so that they do
    #: not take turns with the collector on the server's interpreter lock.
    log_writer_process: bool = False
    #: DuckDB's memory limit for warehouse work (e.g. ``8GB``); empty = a third of this
    #: machine's RAM (DuckDB's own default, 80 %, leaves nothing for the rest of Rapport).
    warehouse_memory_limit: str = ""
    #: Delivery (``rapport.delivery``): run the outbox dispatcher inside the app process (tests,
    #: embedded use); ``rapport serve`` should run ``rapport delivery dispatch`` beside it.
    dispatcher_in_process: bool = True
    #: Seconds before retry n (full jitter: a random wait up to the step; the last repeats).
    delivery_retry_schedule: str = "10,30,120,600,1800,3600,10800,21600"
    #: A message is dead after this many tries, or this long after it was queued.
    delivery_max_attempts: int = 12
    delivery_max_age_hours: float = 24.0
    #: Messages claimed per batch, sends in flight, and how long a claim is leased (a killed
    #: dispatcher's messages are sent again after the lease).
    delivery_batch: int = 500
    delivery_concurrency: int = 64
    delivery_lease_seconds: float = 60.0
    #: Circuit breaker per channel: open after this many consecutive failures, probe again
    #: after the cool-down (seconds).
    delivery_breaker_failures: int = 5
    delivery_breaker_cooldown: float = 30.0
    #: Seconds between two looks at the outbox when nothing was due.
    delivery_poll_interval: float = 0.5
    #: Send-time caps per person (``rapport.delivery.guards``), e.g. "sms:1/day, *:5/week"
    #: (kinds sms, push, email, wechat_mp; "*": all of them together); "": none.
    delivery_frequency_caps: str = ""
    #: No message to a person in these hours of their time zone, e.g. "21:00-08:00" (they
    #: wait until the end); "": none.
    delivery_quiet_hours: str = ""
    #: Campaigns (``rapport.campaigns``): a plan sending to more persons than this needs the
    #: approval of a second user (not the one who planned it).
    campaign_approval_threshold: int = 10_000
    #: The console's address as people outside reach it (e.g. "https://crm.example.com"):
    #: messages to a person carry an unsubscribe link there (``payload.unsubscribe_url``).
    public_url: str = ""
    #: Path of the front-end packages installed from npm (``node_modules``).
    assets_dir: str = ""
    #: The workspace's time zone (IANA name): scheduled jobs read "daily at 06:00" in it.
    timezone: str = "UTC"
    #: When dynamic audiences and segmentations are refreshed (``rapport.jobs.schedule`` text).
    segment_schedule: str = "hourly"
    #: When the lifecycle is refreshed (and its transition events emitted).
    lifecycle_schedule: str = "daily at 02:00"
    #: Stream rules (stage 2): how late an event may arrive and still be judged on time; the
    #: watermark (event time up to which timers fire) trails the latest event time by this.
    stream_lateness_seconds: float = 0.0
    #: After this long without new events the watermark follows the wall clock (minus the
    #: lateness), so absence rules and windows still end in a quiet log; 0: never.
    stream_idle_seconds: float = 60.0
    #: Person states the stream engine keeps in memory (least recently used ones are dropped
    #: and reloaded from the warehouse when needed).
    stream_max_persons: int = 100_000
    #: Where lead rules run: "embedded" (in the follower, over the warehouse) or "nats" (the
    #: follower publishes events with a person to NATS JetStream; ``rapport worker rules``
    #: processes own its partitions). Live audiences stay in the follower either way.
    stream_backend: str = "embedded"
    #: JetStream partitions of the persons' events (subject ``<stream>.<person mod N>``);
    #: fixed once workers have run: changing it re-homes persons without their state.
    stream_partitions: int = 8
    #: The NATS server (with JetStream) of the scaled-out stream path.
    nats_url: str = "nats://127.0.0.1:4222"
    #: The JetStream stream holding the persons' events (subjects ``<lowercased name>.<p>``).
    nats_stream: str = "RAPPORT_PERSONS"
    #: Where ``rapport worker rules`` keeps its partitions' checkpoints: "file"
    #: (``home/stream/<nats_stream>/p<N>.ckpt``: only a worker on this machine resumes from
    #: them) or "nats" (the JetStream object store bucket ``<nats_stream>_CHECKPOINTS``, with
    #: ``nats_log_replicas`` replicas: a worker on any machine takes a partition over).
    checkpoint_store: str = "file"
    #: Where tags, audiences and offline lead rules read the warehouse: "duckdb" (the file)
    #: or "spark" (Parquet tables in ``spark_warehouse_path``, written by ``rapport warehouse
    #: export-parquet``; results are still written to DuckDB, bitmaps and the metadata DB).
    warehouse_backend: str = "duckdb"
    #: The Spark master ("local[2]": this machine's two cores; "spark://host:7077", "yarn").
    spark_master: str = "local[2]"
    #: Directory (or a URL Spark reads, e.g. "s3a://bucket/rapport") of the Parquet tables;
    #: empty means ``home/spark-warehouse``.
    spark_warehouse_path: str = ""
    #: The Spark driver's memory (e.g. "4g").
    spark_driver_memory: str = "2g"
    #: Collector rate limit per write key: events per second (a token bucket; 0 = no limit).
    #: Over it, /v1 answers 429 with Retry-After and the client sends the batch again.
    collector_rate_limit: float = 50_000.0  # above one process's capacity: a guard, not a cap
    #: How many events a write key may send at once above the rate (the bucket's size).
    collector_rate_burst: int = 100_000
    #: Where the event log lives: "sqlite" (a file in home: one collector process) or "nats"
    #: (a JetStream stream: collectors in several processes or machines append to it).
    log_backend: str = "sqlite"
    #: The JetStream stream of the event log (subjects ``<lowercased name>.<source>.<event>``).
    nats_log_stream: str = "RAPPORT_EVENTS"
    #: Its replicas (a NATS cluster keeps this many copies; 1 on a single server).
    nats_log_replicas: int = 1
    #: ``GET /metrics`` without a token from this machine's loopback address (a Prometheus
    #: beside the server); off: a token with read access is always needed.
    metrics_public_loopback: bool = True
    secret_key: str = field(default="", repr=False)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'rapport.db').resolve()}"

    @property
    def warehouse_file(self) -> Path:
        return Path(self.warehouse_path) if self.warehouse_path else self.home / "warehouse.duckdb"

    @property
    def spark_dir(self) -> Path:
        return (
            Path(self.spark_warehouse_path)
            if self.spark_warehouse_path
            else self.home / "spark-warehouse"
        )

    @property
    def log_file(self) -> Path:
        return Path(self.log_path) if self.log_path else self.home / "eventlog.db"

    @property
    def node_modules(self) -> Path:
        if self.assets_dir:
            return Path(self.assets_dir)
        return Path(__file__).resolve().parents[2] / "node_modules"

    @property
    def warehouse_memory(self) -> str:
        if self.warehouse_memory_limit:
            return self.warehouse_memory_limit
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return "4GB"
        return f"{max(1, total // 3 // 2**20)}MB"

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def signing_key(self) -> str:
        """The secret for sessions and CSRF: configured, or generated once and kept in home."""
        if self.secret_key:
            return self.secret_key
        self.ensure_home()
        path = self.home / "secret.key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind in ("bool", bool):
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    if kind in ("Path", Path):
        return Path(raw)
    return str(raw)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from ``rapport.toml`` (in the working directory or home) and env vars."""
    values: dict[str, Any] = {}
    home = Path(os.environ.get("RAPPORT_HOME", overrides.get("home", "rapport-data")))
    for toml_path in (Path("rapport.toml"), home / "rapport.toml"):
        if toml_path.exists():
            with toml_path.open("rb") as fh:
                data = tomllib.load(fh)
            values.update(data.get("rapport", data))
    names = {f.name for f in fields(Settings)}
    for name in names:
        env = os.environ.get(f"RAPPORT_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update(overrides)
    values["home"] = home if "home" not in overrides else Path(overrides["home"])
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown setting(s) in rapport.toml: {', '.join(sorted(unknown))}")
    values = _with_profile(values)
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})


def _with_profile(values: dict[str, Any]) -> dict[str, Any]:
    """The profile's defaults under what was set explicitly; a cluster needs PostgreSQL."""
    profile = str(values.get("profile", "embedded"))
    if profile not in PROFILES:
        raise ValueError(f"profile = {profile!r}: one of {', '.join(PROFILES)}")
    if profile == "cluster" and not str(values.get("database_url", "")).startswith("postgresql"):
        raise ValueError(
            "profile = 'cluster' keeps the metadata on PostgreSQL: set database_url = "
            "'postgresql+psycopg://user@host:5432/rapport' in rapport.toml or RAPPORT_DATABASE_URL"
        )
    return {**PROFILES[profile], **values}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
