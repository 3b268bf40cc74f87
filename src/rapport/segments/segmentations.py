"""Segmentations: everyone split along one dimension into named buckets, each a condition,
and the proof on the current data that the split is MECE (mutually exclusive, collectively
exhaustive) — or the overlaps and the people left out, with samples to look at.

Definition: ``{"dimension": "gender", "buckets": [{"name", "condition"}], "other": bool}``.
With ``other`` the persons no bucket takes go to a bucket named ``other``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import combinations
from typing import TYPE_CHECKING, Any

from pyroaring import BitMap

from rapport.conditions.errors import ConditionError
from rapport.conditions.model import from_json, to_json
from rapport.segments import bitmaps
from rapport.segments.audiences import first, parse_condition
from rapport.segments.store import (
    SegmentError,
    get_segment,
    insert_segment,
    update_segment,
    write_members,
)

if TYPE_CHECKING:
    from rapport.workspace import Workspace

KIND = "segmentation"
OTHER = "other"
SAMPLE = 5


def check_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """The definition with its conditions normalised to JSON; SegmentError names the part."""
    buckets = definition.get("buckets")
    if not isinstance(buckets, list) or not buckets:
        raise SegmentError("buckets", "a segmentation needs at least one bucket")
    names: set[str] = set()
    out = []
    for i, bucket in enumerate(buckets):
        name = bucket.get("name") if isinstance(bucket, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise SegmentError(f"buckets[{i}].name", "every bucket needs a name")
        if name in names:
            raise SegmentError(f"buckets[{i}].name", f"two buckets are called {name!r}")
        names.add(name)
        try:
            cond = parse_condition(bucket.get("condition"))
        except ConditionError as exc:
            raise SegmentError(f"buckets[{i}].condition", exc.message) from None
        out.append({"name": name, "condition": to_json(cond)})
    other = bool(definition.get("other", False))
    if other and OTHER in names:
        raise SegmentError("other", f"a bucket is already called {OTHER!r}")
    return {"dimension": str(definition.get("dimension") or ""), "buckets": out, "other": other}


def create_segmentation(
    ws: Workspace, name: str, definition: dict[str, Any], description: str = ""
) -> dict[str, Any]:
    return insert_segment(ws, name, KIND, check_definition(definition), "dynamic", description)


def update_segmentation(ws: Workspace, name: str, definition: dict[str, Any]) -> dict[str, Any]:
    _segmentation(ws, name)
    return update_segment(ws, name, definition=check_definition(definition))


def _segmentation(ws: Workspace, name: str) -> dict[str, Any]:
    seg = get_segment(ws, name)
    if seg["kind"] not in (KIND, "lifecycle"):
        raise SegmentError("name", f"{name!r} is a {seg['kind']}, not a segmentation")
    return seg


def bucket_sets(
    ws: Workspace, definition: dict[str, Any], as_of: datetime
) -> tuple[dict[str, BitMap], BitMap]:
    """Each bucket's persons (by its condition alone) and the universe, from where
    ``warehouse_backend`` reads (the conditions' warehouse leaves too: ``bitmaps.evaluate``)."""
    from rapport.warehouse.spark import reader  # DuckDB, or Spark (warehouse_backend)

    sets = {
        b["name"]: bitmaps.evaluate(from_json(b["condition"]), ws, as_of)
        for b in definition["buckets"]
    }
    with reader(ws).connect() as con:
        everyone = bitmaps.keys_of(bitmaps.universe_table(con))
    return sets, everyone


def mece_report(
    sets: dict[str, BitMap], everyone: BitMap, other: bool, sample: int = SAMPLE
) -> dict[str, Any]:
    """Sizes, pairwise overlaps and the uncovered rest; ``ok`` only when exclusive and
    exhaustive (an ``other`` bucket takes the rest)."""
    overlaps = []
    for (a, sa), (b, sb) in combinations(sets.items(), 2):
        both = sa & sb
        if both:
            overlaps.append({"a": a, "b": b, "count": len(both), "sample": first(both, sample)})
    covered = BitMap.union(*sets.values()) if sets else BitMap()
    uncovered = everyone - covered
    buckets = [{"name": n, "size": len(s)} for n, s in sets.items()]
    if other:
        buckets.append({"name": OTHER, "size": len(uncovered)})
    return {
        "ok": not overlaps and (other or not uncovered),
        "persons": len(everyone),
        "buckets": buckets,
        "overlaps": overlaps,
        "uncovered": {"count": len(uncovered), "sample": first(uncovered, sample)},
        "other": other,
    }


def check_mece(ws: Workspace, name: str, as_of: datetime | None = None) -> dict[str, Any]:
    """The MECE check of a segmentation on the current data."""
    seg = _segmentation(ws, name)
    definition = seg["definition"]
    if seg["kind"] != KIND:
        raise SegmentError("name", f"{name!r} is the lifecycle: its stages are exclusive")
    sets, everyone = bucket_sets(ws, definition, as_of or datetime.now(UTC))
    report = mece_report(sets, everyone, bool(definition.get("other")))
    return {"segment": name, "dimension": definition.get("dimension", ""), **report}


def refresh_segmentation(ws: Workspace, name: str, as_of: datetime | None = None) -> dict[str, Any]:
    """Write the buckets to ``segment_members``. A person in two buckets goes to the first one
    (bucket order is priority), so members are exclusive even before the definition is fixed;
    the MECE report says what the definition itself does."""
    seg = _segmentation(ws, name)
    if seg["kind"] != KIND:
        raise SegmentError("name", f"{name!r} is the lifecycle: use refresh_lifecycle")
    when = as_of or datetime.now(UTC)
    definition = seg["definition"]
    sets, everyone = bucket_sets(ws, definition, when)
    taken = BitMap()
    written: dict[str | None, BitMap] = {}
    for bucket, persons in sets.items():
        written[bucket] = persons - taken
        taken |= persons
    if definition.get("other"):
        written[OTHER] = everyone - taken
    size = write_members(ws, name, written, at=when)
    report = mece_report(sets, everyone, bool(definition.get("other")))
    return {"segment": name, "size": size, **report}
