"""The seed segments of the demo: a gender/age segmentation that passes the MECE check, one
with a planted overlap that fails it, and the lifecycle.

They split people by the demo's attribute tags (``gender``, ``age_band`` of
``rapport.tags.demo``) rather than raw profile fields: the demo's profiles carry gender as
男 / M / 1 / … and birthdays in several formats, which the tags normalise. Every leaf is a tag,
so the check runs on bitmaps alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapport.conditions.model import And, HasTag, to_json
from rapport.segments.lifecycle import definition
from rapport.segments.segmentations import create_segmentation, update_segmentation
from rapport.segments.store import SegmentExists

if TYPE_CHECKING:
    from rapport.workspace import Workspace

YOUNG = ["under 18", "18-24", "25-34"]
OLDER = ["35-44", "45-54", "55+"]


def _bucket(name: str, cond: Any) -> dict[str, Any]:
    return {"name": name, "condition": to_json(cond)}


def gender_age() -> dict[str, Any]:
    """male/female × under 35 / 35 and over; unknown gender or age goes to ``other``."""
    buckets = []
    for gender in ("male", "female"):
        for label, bands in (("under_35", YOUNG), ("35_plus", OLDER)):
            cond = And(
                all=[HasTag(tag="gender", values=[gender]), HasTag(tag="age_band", values=bands)]
            )
            buckets.append(_bucket(f"{gender}_{label}", cond))
    return {"dimension": "gender/age", "buckets": buckets, "other": True}


def planted_overlap() -> dict[str, Any]:
    """Age buckets where "25-34" is in two buckets, and nobody takes persons without an age."""
    return {
        "dimension": "age",
        "buckets": [
            _bucket("young", HasTag(tag="age_band", values=["under 18", "18-24", "25-34"])),
            _bucket("adult", HasTag(tag="age_band", values=["25-34", "35-44", "45-54"])),
            _bucket("senior", HasTag(tag="age_band", values=["55+"])),
        ],
        "other": False,
    }


SEEDS = {"demo_gender_age": gender_age, "demo_age_overlap": planted_overlap}


def define_demo_segments(ws: Workspace) -> list[str]:
    """Create (or reset) the seed segmentations; check them with ``check_mece``."""
    for name, make in SEEDS.items():
        try:
            create_segmentation(ws, name, make(), description="demo seed")
        except SegmentExists:
            update_segmentation(ws, name, make())
    definition(ws)  # the built-in lifecycle, with its defaults
    return list(SEEDS)
