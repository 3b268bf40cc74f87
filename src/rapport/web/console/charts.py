"""ECharts options for the data-quality report of a source (``rapport.ingest.quality``)."""

from __future__ import annotations

from typing import Any


def quality(ws: Any, source: str) -> dict[str, Any] | None:
    """Charts and a table for ``source``'s quality report; None before its first import."""
    try:
        from rapport.ingest.quality import quality_report
    except ModuleNotFoundError:  # brief B's module not in this tree yet
        return None
    report = quality_report(ws, source)
    return report_charts(report)


def report_charts(report: dict[str, Any]) -> dict[str, Any] | None:
    return None
