"""What can be scheduled: *providers* turn the workspace's definitions into jobs.

A provider is a callable ``ws -> list[Job]``, asked afresh at every check, so a tag given a
schedule (or a segment created) is a job at the next check with nothing else to do. Packages
add theirs with ``register("campaigns", provider)``; the built-in ones cover tags with a
schedule, dynamic audiences and segmentations, and the lifecycle. Providers run in
registration order and their jobs run in that order when due together: tags first, so the
segments that read them see the fresh values, and the lifecycle last (as ``refresh_all``).

Jobs call what ``rapport tags compute`` and ``rapport segments refresh`` call; nothing here
recomputes anything itself.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rapport.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    key: str  # stable across restarts: "tag:orders_30d", "segment:vip", "lifecycle"
    title: str
    schedule: str  # a ``rapport.jobs.schedule`` text
    run: Callable[[Workspace, datetime], dict[str, Any]]  # returns a small JSON-able report


Provider = Callable[["Workspace"], list[Job]]
_providers: dict[str, Provider] = {}


def register(name: str, provider: Provider) -> None:
    """Add (or replace) the provider called ``name``."""
    _providers[name] = provider


def unregister(name: str) -> None:
    _providers.pop(name, None)


#: modules that ``register`` providers when imported (after the built-ins); a missing one is
#: skipped, like ``cli._register``'s sub-commands. Packages add one line here.
PROVIDER_MODULES = [
    "rapport.leads.jobs",
    "rapport.campaigns.jobs",
    "rapport.recommend.jobs",
    "rapport.journeys.jobs",
]
_imported = False


def _import_providers() -> None:
    global _imported
    if _imported:
        return
    _imported = True
    for module in PROVIDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise


def all_jobs(ws: Workspace) -> list[Job]:
    """Every provider's jobs, in registration order. A provider that fails is logged and
    skipped: one broken package must not stop the others' schedules."""
    _import_providers()
    out: list[Job] = []
    seen: set[str] = set()
    for name, provider in list(_providers.items()):
        try:
            found = provider(ws)
        except Exception:
            log.exception("job provider %r failed; its jobs are skipped this time", name)
            continue
        for job in found:
            if job.key not in seen:
                seen.add(job.key)
                out.append(job)
    return out


def find(ws: Workspace, key: str) -> Job | None:
    return next((j for j in all_jobs(ws) if j.key == key), None)


# -- built-in providers ---------------------------------------------------------------------------
_REPORT_KEYS = ("run_id", "persons", "rows", "incremental", "persons_recomputed", "size")


def _small(report: dict[str, Any], *extra: str) -> dict[str, Any]:
    return {k: report[k] for k in (*_REPORT_KEYS, *extra) if k in report}


def _tag_job(name: str) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        from rapport.tags.compute import compute_tag

        return _small(compute_tag(ws, name, at))

    return run


def tag_jobs(ws: Workspace) -> list[Job]:
    """Tags whose ``schedule`` is set."""
    from rapport.tags.definitions import list_tags

    return [
        Job(f"tag:{t['name']}", f"Compute tag {t['name']}", t["schedule"], _tag_job(t["name"]))
        for t in list_tags(ws.db)
        if (t.get("schedule") or "").strip()
    ]


def _segment_job(name: str) -> Callable[[Workspace, datetime], dict[str, Any]]:
    def run(ws: Workspace, at: datetime) -> dict[str, Any]:
        from rapport.segments.refresh import refresh

        return _small(refresh(ws, name, at), "buckets", "seconds")

    return run


def segment_jobs(ws: Workspace) -> list[Job]:
    """Dynamic audiences (with a condition) and segmentations, on ``segment_schedule``."""
    from rapport.segments.store import list_segments

    every = ws.settings.segment_schedule
    jobs = []
    for seg in list_segments(ws):
        if seg["kind"] == "audience":
            if seg["mode"] != "dynamic" or not (seg["definition"] or {}).get("condition"):
                continue
        elif seg["kind"] != "segmentation":
            continue
        title = f"Refresh {seg['kind']} {seg['name']}"
        jobs.append(Job(f"segment:{seg['name']}", title, every, _segment_job(seg["name"])))
    return jobs


def _lifecycle(ws: Workspace, at: datetime) -> dict[str, Any]:
    from rapport.segments.lifecycle import refresh_lifecycle

    stats = refresh_lifecycle(ws, at)
    moved = sum(t["count"] for t in stats.get("transitions", []))
    return {"distribution": stats.get("distribution"), "moved": moved}


def lifecycle_jobs(ws: Workspace) -> list[Job]:
    return [Job("lifecycle", "Refresh the lifecycle", ws.settings.lifecycle_schedule, _lifecycle)]


register("tags", tag_jobs)
register("segments", segment_jobs)
register("lifecycle", lifecycle_jobs)
