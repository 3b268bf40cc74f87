"""Every Prometheus metric of every Rapport process, defined in one place (``rapport_`` prefix).

The objects live in prometheus_client's default registry, so each process exposes the ones it
moves (plus the client's process and GC metrics): the server at ``GET /metrics``
(``rapport.web.metrics``), the other processes with ``--metrics-port`` (``serve``). Hot paths
count per request or per batch, never per event. Gauges that are questions to the stores
(outbox depth, consumer lag, quarantine size, leads) are computed when scraped, by
``StoreGauges``, at most every ``STORE_TTL`` seconds. The table of names is in
docs/operations.md ("Monitoring").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from rapport.workspace import Workspace

log = logging.getLogger(__name__)

#: seconds the store gauges are reused between scrapes (several Prometheus servers, a reload)
STORE_TTL = 5.0
#: how long a scrape waits for the warehouse file, which the follower holds while it writes
WAREHOUSE_WAIT = 0.25

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_QUEUED = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
_JOBS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

PROCESS = Info("rapport_process", "Which Rapport process this is (kind: server, rules, ...).")

# -- the server: collector and HTTP ------------------------------------------------------------
COLLECTOR_EVENTS = Counter(
    "rapport_collector_events",
    "Events the collector took in, by source and status: accepted (appended to the log), "
    "duplicate (a messageId already in the log) or quarantined (rejected with a reason).",
    ["source", "status"],
)
COLLECTOR_REJECTED = Counter(
    "rapport_collector_rejected_requests",
    "Collector requests refused as a whole, nothing stored, by source ('' when not known) and "
    "code (unknown_write_key, rate_limited, payload_too_large, overloaded, ...).",
    ["source", "code"],
)
LOG_APPEND = Histogram(
    "rapport_log_append_seconds",
    "Time for one request's records to be committed to the event log (group commit).",
    buckets=_FAST,
)
HTTP_REQUESTS = Histogram(
    "rapport_http_request_duration_seconds",
    "HTTP requests by method, route template and status code (/metrics excluded).",
    ["method", "route", "status"],
    buckets=_FAST,
)

CHILD_RESTARTS = Counter(
    "rapport_child_restarts",
    "Children of `rapport serve` (follower, dispatcher) started again after they died.",
    ["child"],
)

# -- the follower: log -> warehouse, identities, embedded stream rules ----------------------
FOLLOW_PASSES = Counter(
    "rapport_follow_passes",
    "Follower passes by outcome: ok, busy (the warehouse was held by an import) or failed.",
    ["outcome"],
)
FOLLOW_PASS_SECONDS = Histogram(
    "rapport_follow_pass_seconds",
    "Duration of follower passes that loaded records (load, resolve, stream rules).",
    buckets=_LATENCY,
)
FOLLOW_LOADED = Counter(
    "rapport_follow_records_loaded", "Event log records loaded into the warehouse."
)
IDENTITY_RECORDS = Counter(
    "rapport_identity_records_resolved", "Records (events, profile slices) given a person."
)
IDENTITY_MERGES = Counter("rapport_identity_merges", "Persons merged into another by resolution.")

# -- the stream rules: rule workers, and the embedded engine (partition="embedded") -----------
STREAM_READ = Counter(
    "rapport_stream_events_read",
    "Events read from the partitions (of interest to a rule or not).",
    ["partition"],
)
STREAM_JUDGED = Counter(
    "rapport_stream_events_judged",
    "Events fed to the rules (those some rule watches).",
    ["partition"],
)
STREAM_JUDGEMENTS = Counter(
    "rapport_stream_judgements", "Rule evaluations (an event or timer times a rule).", ["partition"]
)
STREAM_OUTPUTS = Counter(
    "rapport_stream_outputs",
    "Outputs the providers applied (lead: leads fired, deduped ones included; journey: steps).",
    ["provider"],
)
RULE_LATENCY = Histogram(
    "rapport_stream_rule_latency_seconds",
    "From the event time of a rule's match to its output committed (a lead in the metadata DB).",
    ["provider"],
    buckets=_LATENCY,
)
PARTITION_PENDING = Gauge(
    "rapport_stream_partition_pending_messages",
    "NATS messages (up to 256 events each) waiting in a rule worker's partition consumer.",
    ["partition"],
)
PARTITION_EVENT_TIME = Gauge(
    "rapport_stream_partition_event_time_seconds",
    "Latest event time (Unix seconds) a rule worker fed from the partition.",
    ["partition"],
)

# -- dispatchers --------------------------------------------------------------------------------
DELIVERY_MESSAGES = Counter(
    "rapport_delivery_messages",
    "Messages a dispatcher handled, by channel and outcome: delivered, retry (a failed try "
    "to be retried), dead (given up), postponed (rate limit, open breaker, quiet hours) or "
    "suppressed (consent, frequency cap).",
    ["channel", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "rapport_delivery_latency_seconds",
    "From a message queued in the outbox to delivered, by channel.",
    ["channel"],
    buckets=_QUEUED,
)
DELIVERY_SEND = Histogram(
    "rapport_delivery_send_seconds",
    "One try: from sending to the receiver's answer, by channel.",
    ["channel"],
    buckets=_FAST,
)
DELIVERY_BREAKER_OPEN = Gauge(
    "rapport_delivery_breaker_open",
    "1 while a channel's circuit breaker stops sends (open or probing), else 0.",
    ["channel"],
)

# -- scheduled jobs -----------------------------------------------------------------------------
JOB_RUNS = Counter("rapport_job_runs", "Job runs finished, by job and status.", ["job", "status"])
JOB_SECONDS = Histogram(
    "rapport_job_duration_seconds", "Duration of job runs, by job.", ["job"], buckets=_JOBS
)


# -- recording helpers (called once per request or batch) -------------------------------------
def collected(source: str, accepted: int, duplicate: int, quarantined: int) -> None:
    if accepted:
        COLLECTOR_EVENTS.labels(source, "accepted").inc(accepted)
    if duplicate:
        COLLECTOR_EVENTS.labels(source, "duplicate").inc(duplicate)
    if quarantined:
        COLLECTOR_EVENTS.labels(source, "quarantined").inc(quarantined)


def matched_at(output: Any) -> datetime | None:
    """The event time a provider's output stands for: a lead hit's ``match.fired_at``."""
    match = getattr(output, "match", None)
    return getattr(match, "fired_at", None)


def applied(provider: str, batch: Iterable[Any], committed: float | None = None) -> None:
    """A provider's outputs were committed: count them and observe each one's latency.

    ``batch`` is what the core handed the provider: a list of outputs or of lists of them."""
    at = time.time() if committed is None else committed
    observe = RULE_LATENCY.labels(provider).observe
    n = 0
    for item in batch:
        for output in item if isinstance(item, list) else (item,):
            n += 1
            fired = matched_at(output)
            if fired is not None:
                observe(max(0.0, at - fired.timestamp()))
    if n:
        STREAM_OUTPUTS.labels(provider).inc(n)


# -- gauges computed when scraped ---------------------------------------------------------------
class StoreGauges(Collector):
    """A collector for the server's registry: questions to the metadata DB, the event log and
    the warehouse's state, cached ``STORE_TTL`` seconds. A store that cannot answer (the
    warehouse busy past ``WAREHOUSE_WAIT``) keeps its last values; errors are logged."""

    def __init__(self, ws: Workspace, ttl: float = STORE_TTL) -> None:
        self.ws = ws
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._families: list[Metric] = []
        self._offsets: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._families = self._measure()
                self._at = time.monotonic()
            return iter(list(self._families))

    def _measure(self) -> list[Metric]:
        out: list[Metric] = []
        for part in (self._outbox, self._quarantine, self._leads, self._offsets_lag):
            try:
                out.extend(part())
            except Exception:  # noqa: BLE001 - a store that is down must not fail the scrape
                log.exception("metrics: %s failed", part.__name__)
        return out

    def _outbox(self) -> list[Metric]:
        from rapport.delivery.outbox import stats

        found = stats(self.ws.db)
        depth = GaugeMetricFamily(
            "rapport_outbox_messages",
            "Outbox messages by channel and status (pending, sending, failed: waiting; "
            "delivered, dead, suppressed: done).",
            labels=["channel", "status"],
        )
        for channel, counts in sorted(found["channels"].items()):
            for status, count in counts.items():
                depth.add_metric([channel, status], count)
        due = GaugeMetricFamily(
            "rapport_outbox_due_messages", "Outbox messages due to be sent now."
        )
        due.add_metric([], found["due_now"])
        oldest = GaugeMetricFamily(
            "rapport_outbox_oldest_waiting_seconds",
            "Age of the oldest message waiting to be sent (0 when none waits).",
        )
        oldest.add_metric([], found["oldest_waiting_seconds"] or 0.0)
        return [depth, due, oldest]

    def _quarantine(self) -> list[Metric]:
        from sqlalchemy import func, select

        from rapport.db.tables import quarantine

        q = quarantine
        query = select(q.c.source, func.count()).where(q.c.status == "open").group_by(q.c.source)
        with self.ws.db.connect() as conn:
            rows = conn.execute(query).all()
        size = GaugeMetricFamily(
            "rapport_quarantine_open",
            "Quarantined records not yet replayed or discarded, by source.",
            labels=["source"],
        )
        for source, count in rows:
            size.add_metric([source or ""], count)
        return [size]

    def _leads(self) -> list[Metric]:
        from sqlalchemy import func, select

        from rapport.db.tables import leads

        with self.ws.db.connect() as conn:
            count = conn.execute(select(func.count()).select_from(leads)).scalar_one()
        made = CounterMetricFamily("rapport_leads_created", "Leads created (all rules, all time).")
        made.add_metric([], count)
        return [made]

    def _offsets_lag(self) -> list[Metric]:
        from rapport.warehouse.store import WarehouseBusy

        last = self.ws.log.last_offset()
        keys = ["log_offset"]
        nats = self.ws.settings.stream_backend == "nats"
        if nats:
            keys.append("nats_offset")
        try:
            with self.ws.warehouse.connect(wait=WAREHOUSE_WAIT) as con:
                for key in keys:
                    self._offsets[key] = int(self.ws.warehouse.get_state(con, key) or 0)
        except WarehouseBusy:
            pass  # the follower is writing: the offsets of the last scrape stand
        out: list[Metric] = []
        top = GaugeMetricFamily("rapport_log_last_offset", "Offset of the event log's last record.")
        top.add_metric([], last)
        out.append(top)
        if "log_offset" in self._offsets:
            loaded = self._offsets["log_offset"]
            lag = GaugeMetricFamily(
                "rapport_warehouse_lag_records",
                "Consumer lag: event log records not yet loaded into the warehouse.",
            )
            lag.add_metric([], max(0, last - loaded))
            done = GaugeMetricFamily(
                "rapport_warehouse_loaded_offset", "The last log offset loaded into the warehouse."
            )
            done.add_metric([], loaded)
            out += [lag, done]
        if nats and "nats_offset" in self._offsets:
            published = self._offsets["nats_offset"]
            pub = GaugeMetricFamily(
                "rapport_nats_publisher_lag_records",
                "Event log records not yet published to the rule workers' partitions "
                "(stream_backend = nats).",
            )
            pub.add_metric([], max(0, last - published))
            out.append(pub)
        return out


# -- a process's own endpoint ---------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int]:
    """``--metrics-port`` value: ``PORT`` (on 127.0.0.1) or ``HOST:PORT``."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"{text!r}: give a port (9101) or host:port (0.0.0.0:9101)")
    return (host.strip("[]") or "127.0.0.1"), number


def serve(address: str, kind: str) -> tuple[str, int] | None:
    """Expose this process's metrics at ``http://ADDRESS/metrics`` in a daemon thread; port 0
    (the default of ``--metrics-port``) does nothing. The address it listens on."""
    host, port = parse_address(address)
    PROCESS.info({"kind": kind})
    if not port:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise OSError(f"--metrics-port {address}: cannot listen on {host}:{port}: {exc}") from exc
    log.info("metrics of this %s process at http://%s:%d/metrics", kind, host, port)
    return host, port


#: the help of every long-running command's ``--metrics-port``
PORT_HELP = (
    "Serve this process's Prometheus metrics at http://127.0.0.1:PORT/metrics "
    "(or HOST:PORT, e.g. 0.0.0.0:9101); 0: off."
)


def serve_cli(address: str, kind: str) -> None:
    """``serve`` for a command line: a bad address or a port in use is the option's error."""
    import typer

    try:
        serve(address, kind)
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics-port") from None
