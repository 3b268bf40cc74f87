"""Load the generated demo into a workspace through the real paths, not around them.

The tracking plan comes from the example YAML (``rapport.catalog.import_plan``); sources are
created as a data engineer would (``rapport.ingest.sources.create_source``); events go through
the collector's own checks (``Collector.check`` / ``submit_sync``: normalisation, server-only
events, plan validation, quarantine) into the event log; the member DB, the orders, the tickets
and the item catalogue go through the batch importer (SQL by SQLAlchemy URL and files).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import msgspec
from rich.progress import Progress

from rapport.demo.generate import DemoFiles
from rapport.demo.systems import TRACKING_DAYS, TRACKING_SOURCES
from rapport.ingest.collector import Collector
from rapport.ingest.sources import SourceExists, create_source, source_by_name
from rapport.workspace import Workspace

PLAN_FILE = Path(__file__).resolve().parents[3] / "examples" / "tracking-plan.yaml"
EVENT_BATCH = 20_000

#: name, kind, allowed events (server sources), description
SOURCES: list[tuple[str, str, list[str] | None, str]] = [
    ("member_db", "sql", None, "Member database (MariaDB-like tables; the demo uses SQLite)"),
    ("orders", "file", None, "Order system export (Parquet) and its product/hotel catalogue"),
    ("customer_service", "file", None, "Customer-service tickets (CSV)"),
    ("app", "client", None, "Mobile app tracking (iOS/Android SDK)"),
    ("web", "client", None, "Web site tracking (analytics.js)"),
    ("server", "server", ["payment_failed"], "Payment service, server-side events"),
]

#: events the demo adds to the example plan: the service desk's tickets
DEMO_PLAN = """
events:
  service_ticket:
    kind: user
    description: The person contacted customer service (imported from the ticket system).
    properties:
      ticket_id:
        type: string
        required: true
      topic: string
      service_channel:
        type: string
        allowed_values: [hotline, online_chat, email]
"""


@dataclass
class LoadReport:
    """What the load did, for the summary table."""

    plan: str = "not loaded"
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    imports: dict[str, dict[str, Any]] = field(default_factory=dict)
    warehouse_events: int = 0
    identity: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    quarantine: dict[str, int] = field(default_factory=dict)


def load_plan(ws: Workspace) -> str:
    """The example tracking plan plus the demo's own events; says what it did."""
    from rapport.catalog import import_plan

    parts = []
    if PLAN_FILE.exists():
        summary = import_plan(ws.db, PLAN_FILE.read_text(encoding="utf-8"), actor="demo")
        parts.append(f"{PLAN_FILE.name}: {summary.events_created} event types created")
    import_plan(ws.db, DEMO_PLAN, actor="demo")
    return "; ".join(parts) or "example plan not found; only the demo's events declared"


def create_sources(ws: Workspace) -> list[str]:
    """The demo's six sources (existing ones are kept: the demo can be loaded again)."""
    for name, kind, allowed, description in SOURCES:
        with contextlib.suppress(SourceExists):
            create_source(ws.db, name, kind=kind, allowed_events=allowed, description=description)
    return [name for name, *_ in SOURCES]


def _batches(fh: IO[bytes], size: int) -> Iterator[list[bytes]]:
    while batch := list(itertools.islice(fh, size)):
        yield batch


def load_events(ws: Workspace, files: DemoFiles, progress: Progress | None = None) -> dict:
    """Every tracking message through the collector's checks into the log, in batches.

    A back-fill of history: the messages keep their event times (the collector's clock-skew
    correction is widened to the generated window) and are received now.
    """
    collector = Collector(ws)
    collector.max_skew = timedelta(days=TRACKING_DAYS + 2)
    decode = msgspec.json.Decoder().decode
    out: dict[str, dict[str, int]] = {}
    # the log's writer runs while the next batch is checked; GC pauses would only slow the
    # millions of short-lived dicts down (nothing here makes reference cycles)
    gc.disable()
    try:
        with ThreadPoolExecutor(1) as writer:
            for name in TRACKING_SOURCES:
                source = source_by_name(ws.db, name)
                if source is None:
                    raise LookupError(f"source {name!r} is missing: create_sources() first")
                total = files.counts.get(f"events_{name}", 0)
                task = progress.add_task(f"events: {name}", total=total) if progress else None
                tally = out[name] = {"accepted": 0, "duplicate": 0, "quarantined": 0}
                pending: Future[list[dict[str, Any]]] | None = None
                with files.tracking(name).open("rb") as fh:
                    for lines in _batches(fh, EVENT_BATCH):
                        messages = [decode(line) for line in lines]
                        checked = collector.check(
                            source, messages, received=datetime.now(UTC), path="$"
                        )
                        if pending is not None:
                            _tally(tally, pending.result())
                        pending = writer.submit(collector.submit_sync, checked)
                        if progress is not None and task is not None:
                            progress.advance(task, len(lines))
                if pending is not None:
                    _tally(tally, pending.result())
    finally:
        gc.enable()
    return out


def _tally(tally: dict[str, int], results: list[dict[str, Any]]) -> None:
    for result in results:
        tally[result["status"]] += 1


def import_specs(files: DemoFiles) -> list[dict[str, Any]]:
    """The import definitions a data engineer would save for the demo's offline systems."""
    return [
        {
            "name": "demo:members",
            "source": "member_db",
            "uri": f"sqlite:///{files.member_db.resolve()}",
            "table": "members",
            "watermark": "updated_at",
            "mapping": {
                "target": "profiles",
                "key": "member_id",
                "identifiers": {
                    "member_id": "member_id",
                    "mobile": "mobile",
                    "email": "email",
                    "id_card": "id_card",
                },
                "properties": ["name", "gender", "birthday", "city", "member_level"]
                + ["registered_at"],
                "updated_at": "updated_at",
            },
        },
        {
            "name": "demo:orders",
            "source": "orders",
            "uri": str(files.orders.resolve()),
            "mapping": {
                "target": "events",
                "event": {"name": "order_paid", "time": "paid_at", "id": "order_id"},
                "identifiers": {"customer_id": "customer_id", "mobile": "mobile"},
                "properties": ["order_id", "item_id", "model", "category", "amount"],
            },
        },
        {
            "name": "demo:products",
            "source": "orders",
            "uri": str(files.products.resolve()),
            "mapping": {
                "target": "items",
                "item": {"type": "product", "id": "item_id"},
                "properties": ["model", "brand", "category", "price", "stock"],
            },
        },
        {
            "name": "demo:hotels",
            "source": "orders",
            "uri": str(files.hotels.resolve()),
            "mapping": {
                "target": "items",
                "item": {"type": "hotel", "id": "item_id"},
                "properties": ["name", "city", "star", "price"],
            },
        },
        {
            "name": "demo:tickets",
            "source": "customer_service",
            "uri": str(files.tickets.resolve()),
            "mapping": {
                "target": "events",
                "event": {"name": "service_ticket", "time": "created_at", "id": "ticket_id"},
                "identifiers": {"email": "email", "phone": "mobile"},
                "properties": {"ticket_id": "ticket_id", "topic": "topic"}
                | {"channel": "service_channel"},
            },
        },
    ]


def run_imports(
    ws: Workspace, files: DemoFiles, progress: Progress | None = None
) -> dict[str, dict[str, Any]]:
    """Run every offline import of the demo; the finished ``import_runs`` row of each."""
    from rapport.ingest.importer import parse_spec, run_import

    runs = {}
    for data in import_specs(files):
        spec = parse_spec(data)
        report = None
        if progress is not None:
            task = progress.add_task(f"import: {spec.display_name()}", total=None)

            def report(stage: str, done: int, total: int | None, task: Any = task) -> None:
                progress.update(task, completed=done, total=total)

        runs[spec.display_name()] = run_import(ws, spec, progress=report)
    return runs


def load_warehouse(ws: Workspace) -> int:
    """Move the log's events into the warehouse now (the server would do it in the background)."""
    return ws.warehouse.load_from_log(ws.log)


def configure_identity(ws: Workspace) -> None:
    """Tell member ids from customer ids, as the data engineer would: both come as ``userId``
    (a guest's payment events carry the order system's customer id)."""
    from dataclasses import replace

    from rapport.identity import config

    conf = config.load(ws.db)
    for name, pattern in (("member_id", r"^M\d{9}$"), ("customer_id", r"^C\d{8,9}$")):
        t = conf.type(name)
        assert t is not None
        config.save_type(ws.db, replace(t, pattern=pattern, paths=("userId",)))


def resolve_identities(ws: Workspace) -> dict[str, Any]:
    """Stage 1 over everything loaded, then block the values shared by several persons."""
    from rapport.identity.resolve import resolve_pending
    from rapport.identity.shared import block_shared
    from rapport.identity.survivorship import build_profiles

    configure_identity(ws)
    report = resolve_pending(ws)
    shared = block_shared(ws, actor="demo")
    profiles = build_profiles(ws)
    return report.__dict__ | {"shared_blocked": len(shared), "profiles": profiles}


def label_people(ws: Workspace, progress: Progress | None = None) -> dict[str, Any]:
    """The demo's tags (attribute, statistical, the seeds' rule tag, mined), its seed
    segmentations and the lifecycle, computed as a marketer would after loading."""
    from rapport.segments.demo import define_demo_segments
    from rapport.segments.refresh import refresh_all
    from rapport.tags.compute import compute_all
    from rapport.tags.demo import define_demo_tags
    from rapport.tags.mined import define_mined_tags

    define_demo_tags(ws)
    define_mined_tags(ws)
    task = progress.add_task("tags", total=None) if progress else None

    def report(name: str, done: int, total: int) -> None:
        if progress is not None and task is not None:
            progress.update(task, completed=done, total=total, description=f"tags: {name}")

    tags = compute_all(ws, progress=report)
    define_demo_segments(ws)
    segments = refresh_all(ws)
    failed = {t["tag"]: t["error"] for t in tags if "error" in t}
    from rapport.leads.demo import setup_demo_leads  # the seed rule reads the tags above

    leads = setup_demo_leads(ws)
    return {
        "tags": len(tags) - len(failed),
        "failed_tags": failed,
        "segments": len(segments),
        "leads": leads,
    }


def quarantine_counts(ws: Workspace) -> dict[str, int]:
    from rapport.ingest.quarantine import counts_by_reason

    return counts_by_reason(ws.db)
