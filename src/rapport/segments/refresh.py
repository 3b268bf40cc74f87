"""Refresh any segment by name, or all of them, in the order that keeps bitmaps consistent:
the index first (tags), then audiences and segmentations, then the lifecycle."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rapport.segments import audiences, bitmaps, lifecycle, segmentations
from rapport.segments.store import get_segment, list_segments

if TYPE_CHECKING:
    from rapport.workspace import Workspace


def refresh(ws: Workspace, name: str, as_of: datetime | None = None) -> dict[str, Any]:
    """Recompute one segment's members; what the refresh found (size, or the stage counts)."""
    when = as_of or datetime.now(UTC)
    kind = get_segment(ws, name)["kind"]
    started = time.perf_counter()
    if kind == "audience":
        out: dict[str, Any] = {"segment": name, "size": audiences.refresh_audience(ws, name, when)}
    elif kind == "segmentation":
        out = segmentations.refresh_segmentation(ws, name, when)
    else:
        out = {"segment": name, **lifecycle.refresh_lifecycle(ws, when)}
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def refresh_all(ws: Workspace, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """The whole index from the warehouse, then every dynamic segment, then the lifecycle."""
    when = as_of or datetime.now(UTC)
    bitmaps.refresh_from_warehouse(ws)
    done = []
    for seg in list_segments(ws):
        if seg["kind"] == "lifecycle" or (seg["kind"] == "audience" and seg["mode"] == "static"):
            continue
        done.append(refresh(ws, seg["name"], when))
    done.append({"segment": lifecycle.NAME, **lifecycle.refresh_lifecycle(ws, when)})
    return done
