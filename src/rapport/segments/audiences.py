"""Audiences: a condition (dynamic: recomputed on refresh) or a snapshot list (static: taken
from the condition once, or uploaded), with CSV export and overlap between two audiences.

Definition stored in ``segments.definition``: ``{"condition": <condition JSON>}`` (a static
audience made by upload has ``{"condition": null}``).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
from pyroaring import BitMap

from rapport.conditions.errors import ConditionError
from rapport.conditions.model import Condition, from_json, to_json
from rapport.segments import bitmaps
from rapport.segments.store import (
    SegmentError,
    get_segment,
    insert_segment,
    members,
    update_segment,
    write_members,
)

if TYPE_CHECKING:
    from rapport.workspace import Workspace

KIND = "audience"


def parse_condition(data: Any) -> Condition:
    """A condition from its JSON form (a dict) or its text form (a string)."""
    if isinstance(data, str):
        try:
            from rapport.conditions import text
        except ImportError as exc:  # the text form is another module's
            raise ConditionError("the text form is not available; send JSON") from exc
        parsed: Condition = text.parse(data)
        return parsed
    try:
        return from_json(data)
    except ValueError as exc:
        raise ConditionError(str(exc)) from None


def _definition(condition: Condition | dict[str, Any] | str | None) -> dict[str, Any]:
    if condition is None:
        return {"condition": None}
    cond = condition if not isinstance(condition, dict | str) else parse_condition(condition)
    if isinstance(cond, dict | str):  # pragma: no cover - for mypy
        raise TypeError
    return {"condition": to_json(cond)}


def condition_of(segment: dict[str, Any]) -> Condition | None:
    raw = (segment.get("definition") or {}).get("condition")
    return None if raw is None else from_json(raw)


def create_audience(
    ws: Workspace,
    name: str,
    condition: Condition | dict[str, Any] | str | None,
    mode: str = "dynamic",
    description: str = "",
) -> dict[str, Any]:
    if condition is None and mode == "dynamic":
        raise SegmentError("condition", "a dynamic audience needs a condition")
    return insert_segment(ws, name, KIND, _definition(condition), mode, description)


def update_audience(
    ws: Workspace,
    name: str,
    condition: Condition | dict[str, Any] | str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    _audience(ws, name)
    if condition is not None:
        changes["definition"] = _definition(condition)
    return update_segment(ws, name, **changes)


def _audience(ws: Workspace, name: str) -> dict[str, Any]:
    seg = get_segment(ws, name)
    if seg["kind"] != KIND:
        raise SegmentError("name", f"{name!r} is a {seg['kind']}, not an audience")
    return seg


def refresh_audience(ws: Workspace, name: str, as_of: datetime | None = None) -> int:
    """Recompute the members of a dynamic audience (a static one with a condition takes a new
    snapshot; an uploaded list is left as it is). Returns the size."""
    seg = _audience(ws, name)
    cond = condition_of(seg)
    if cond is None:
        return len(members(ws, name))
    when = as_of or datetime.now(UTC)
    found = bitmaps.evaluate(cond, ws, when)
    return write_members(ws, name, {None: found}, at=when)


# -- size while editing -------------------------------------------------------------------------
def size_of(
    ws: Workspace,
    cond: Condition,
    as_of: datetime | None = None,
    sample: int = 10,
    previous: Condition | None = None,
) -> dict[str, Any]:
    """What the audience builder shows on every edit: size, whether the index alone answered,
    milliseconds, a few matching persons, and (given the version before the edit) the
    overlap with it."""
    when = as_of or datetime.now(UTC)
    started = time.perf_counter()
    result = bitmaps.evaluate_detail(cond, ws, when)
    out: dict[str, Any] = {"size": len(result.persons), "bitmap_only": result.bitmap_only}
    if previous is not None:
        out["overlap"] = overlap(result.persons, bitmaps.evaluate(previous, ws, when))
    out["ms"] = round((time.perf_counter() - started) * 1000, 2)
    out["sample"] = first(result.persons, sample)
    return out


def first(persons: BitMap, n: int) -> list[int]:
    out: list[int] = []
    for key in persons:
        if len(out) >= n:
            break
        out.append(int(key))
    return out


def overlap(a: BitMap, b: BitMap) -> dict[str, Any]:
    """How two person sets overlap (e.g. an audience and its previous version)."""
    both = a.intersection_cardinality(b)
    union = a.union_cardinality(b)
    return {
        "a": len(a),
        "b": len(b),
        "both": both,
        "only_a": len(a) - both,
        "only_b": len(b) - both,
        "jaccard": round(both / union, 4) if union else 1.0,
    }


# -- static lists: upload and export ------------------------------------------------------------
@dataclass
class UploadReport:
    rows: int = 0
    persons: int = 0
    unresolved: int = 0
    errors: list[str] = field(default_factory=list)


def read_person_list(ws: Workspace, csv_text: str) -> tuple[BitMap, UploadReport]:
    """Persons from a CSV: a ``person_key`` (or ``person``) column, or ``type`` + ``value``
    columns of identifiers resolved through OneID; a headerless single column is person keys."""
    report = UploadReport()
    rows = list(csv.reader(io.StringIO(csv_text.strip())))
    found = BitMap()
    if not rows:
        return found, report
    header = [h.strip().lower() for h in rows[0]]
    if "person_key" in header or "person" in header:
        col = header.index("person_key" if "person_key" in header else "person")
        id_cols: tuple[int, int] | None = None
        body = rows[1:]
    elif "type" in header and "value" in header:
        col, id_cols, body = -1, (header.index("type"), header.index("value")), rows[1:]
    else:
        col, id_cols, body = 0, None, rows
    for line_no, row in enumerate(body, start=2 if body is not rows else 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        report.rows += 1
        try:
            if id_cols is None:
                key: int | None = int(row[col].strip())
            else:
                from rapport.identity.resolve import lookup

                key = lookup(ws, row[id_cols[0]].strip(), row[id_cols[1]].strip())
        except (ValueError, IndexError) as exc:
            report.errors.append(f"line {line_no}: {exc}")
            report.unresolved += 1
            continue
        if key is None or key < 0:
            report.unresolved += 1
            continue
        found.add(key)
    if found:  # a key nobody has (a typo, an erased person) is not a member
        with ws.warehouse.connect() as con:
            known = found & bitmaps.keys_of(bitmaps.universe_table(con))
        report.unresolved += len(found) - len(known)
        found = known
    report.persons = len(found)
    return found, report


def upload(ws: Workspace, name: str, csv_text: str, replace: bool = True) -> UploadReport:
    """Set (or, with ``replace=False``, extend) a static audience's list from a CSV."""
    seg = _audience(ws, name)
    if seg["mode"] != "static":
        raise SegmentError("mode", f"{name!r} is dynamic: only a static audience takes a list")
    found, report = read_person_list(ws, csv_text)
    if not replace:
        found |= members(ws, name)
    report.persons = write_members(ws, name, {None: found})
    return report


def export_csv(ws: Workspace, name: str, attributes: list[str] | None = None) -> str:
    """``person_key`` plus the chosen profile attributes of every member, as CSV."""
    keys = members(ws, name)
    attributes = list(attributes or [])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["person_key", *attributes])
    if not attributes:
        for key in keys:
            writer.writerow([key])
        return out.getvalue()
    with ws.warehouse.connect() as con:
        if "profiles" not in con.list_tables():
            raise SegmentError("attributes", "no profiles yet: build them first")
        profiles = con.table("profiles")
        unknown = [a for a in attributes if a not in profiles.columns or a == "person_key"]
        if unknown:
            raise SegmentError("attributes", f"unknown attribute(s): {', '.join(unknown)}")
        people = ibis.memtable(bitmaps.persons_table(keys))
        joined = people.left_join(profiles, "person_key")
        rows = joined.select("person_key", *attributes).order_by("person_key").to_pyarrow()
    for row in rows.to_pylist():
        writer.writerow([row["person_key"], *(row[a] for a in attributes)])
    return out.getvalue()
