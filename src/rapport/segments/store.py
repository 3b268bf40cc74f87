"""The ``segments`` rows (audiences, segmentations, the lifecycle) and their members.

One definition table in the metadata DB, one ``segment_members`` table in the warehouse and one
set of bitmaps: ``write_members`` keeps the last two in step, so the size a marketer sees in the
builder is the size of the list a campaign sends to.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa
from pyroaring import BitMap
from sqlalchemy import delete, insert, select, update

from rapport.accounts import now
from rapport.db.tables import segments
from rapport.segments import bitmaps

if TYPE_CHECKING:
    from rapport.workspace import Workspace

KINDS = ("audience", "segmentation", "lifecycle")
#: size rows closer together than this are one row (live per-event changes must not write a
#: row per event): the latest sizes replace those of the row less than this old
SIZE_STEP = timedelta(minutes=1)
MODES = ("dynamic", "static")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


class SegmentError(ValueError):
    """A definition the product cannot use: ``field`` says which part, ``message`` why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SegmentExists(SegmentError):
    pass


class SegmentNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no segment named {name!r}")
        self.name = name


def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in ("created_at", "updated_at", "refreshed_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    return out


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise SegmentError(
            "name", f"{name!r} is not a valid name (letters, digits, '_', '-', '.'; max 100)"
        )


def list_segments(ws: Workspace, kind: str | None = None) -> list[dict[str, Any]]:
    query = select(segments).order_by(segments.c.name)
    if kind is not None:
        query = query.where(segments.c.kind == kind)
    with ws.db.connect() as conn:
        return [_public(r) for r in conn.execute(query)]


def get_segment(ws: Workspace, name: str) -> dict[str, Any]:
    with ws.db.connect() as conn:
        row = conn.execute(select(segments).where(segments.c.name == name)).first()
    if row is None:
        raise SegmentNotFound(name)
    return _public(row)


def find_segment(ws: Workspace, name: str) -> dict[str, Any] | None:
    try:
        return get_segment(ws, name)
    except SegmentNotFound:
        return None


def insert_segment(
    ws: Workspace,
    name: str,
    kind: str,
    definition: dict[str, Any],
    mode: str = "dynamic",
    description: str = "",
) -> dict[str, Any]:
    check_name(name)
    if kind not in KINDS:
        raise SegmentError("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    if mode not in MODES:
        raise SegmentError("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    stamp = now()
    with ws.db.begin() as conn:
        if conn.execute(select(segments.c.id).where(segments.c.name == name)).first():
            raise SegmentExists("name", f"a segment named {name!r} already exists")
        conn.execute(
            insert(segments).values(
                name=name,
                kind=kind,
                mode=mode,
                description=description,
                definition=definition,
                created_at=stamp,
                updated_at=stamp,
            )
        )
    return get_segment(ws, name)


def update_segment(ws: Workspace, name: str, **changes: Any) -> dict[str, Any]:
    get_segment(ws, name)
    if "mode" in changes and changes["mode"] not in MODES:
        raise SegmentError("mode", f"{changes['mode']!r} is not one of {', '.join(MODES)}")
    with ws.db.begin() as conn:
        conn.execute(
            update(segments).where(segments.c.name == name).values(**changes, updated_at=now())
        )
    return get_segment(ws, name)


def delete_segment(ws: Workspace, name: str) -> None:
    """The definition, its members and its bitmaps."""
    get_segment(ws, name)
    with ws.warehouse.connect() as con, ws.warehouse.transaction(con):
        con.raw_sql("DELETE FROM segment_members WHERE segment = ?", parameters=[name])
        con.raw_sql("DELETE FROM segment_sizes WHERE segment = ?", parameters=[name])
    bitmaps.drop_segment(ws, name)
    with ws.db.begin() as conn:
        conn.execute(delete(segments).where(segments.c.name == name))


def write_members(
    ws: Workspace, name: str, buckets: dict[str | None, BitMap], at: datetime | None = None
) -> int:
    """Replace the segment's rows in ``segment_members`` (bucket None: an audience), its
    bitmaps, and its size (with a ``segment_sizes`` point); returns the number of distinct
    persons."""
    parts = [
        pa.table(
            {
                "segment": pa.repeat(pa.scalar(name, pa.string()), len(members)),
                "bucket": pa.repeat(pa.scalar(bucket, pa.string()), len(members)),
                "person_key": pa.array(bitmaps.key_array(members), pa.int64()),
            }
        )
        for bucket, members in buckets.items()
    ]
    table = (
        pa.concat_tables(parts)
        if parts
        else pa.table(
            {
                "segment": pa.array([], pa.string()),
                "bucket": pa.array([], pa.string()),
                "person_key": pa.array([], pa.int64()),
            }
        )
    )
    size = len(BitMap.union(*buckets.values())) if buckets else 0
    counts = {b: len(m) for b, m in buckets.items() if b is not None} | {None: size}
    with ws.warehouse.connect() as con, ws.warehouse.transaction(con):
        con.raw_sql("DELETE FROM segment_members WHERE segment = ?", parameters=[name])
        if table.num_rows:
            con.insert("segment_members", table)
        record_sizes(con, name, counts, at or now())
    bitmaps.put_segment(ws, name, buckets)
    with ws.db.begin() as conn:
        conn.execute(
            update(segments)
            .where(segments.c.name == name)
            .values(size=size, refreshed_at=at or now())
        )
    return size


def change_members(
    ws: Workspace, name: str, entered: BitMap, exited: BitMap, at: datetime | None = None
) -> int:
    """Apply an audience's entries and exits (the stream path's per-event changes) to
    ``segment_members``, its bitmap and its size (``segment_sizes``: at most a row a minute);
    returns the new size."""
    current = members(ws, name)
    entered = entered - current
    exited = exited & current
    if entered or exited:
        after = (current | entered) - exited
        with ws.warehouse.connect() as con, ws.warehouse.transaction(con):
            if exited:
                gone = ibis.memtable(bitmaps.persons_table(exited))
                con.create_table("_exited", gone, temp=True, overwrite=True)
                con.raw_sql(
                    "DELETE FROM segment_members WHERE segment = ? AND bucket IS NULL"
                    " AND person_key IN (SELECT person_key FROM _exited)",
                    parameters=[name],
                )
                con.drop_table("_exited", force=True)
            if entered:
                rows = bitmaps.persons_table(entered)
                rows = rows.append_column(
                    "segment", pa.repeat(pa.scalar(name, pa.string()), rows.num_rows)
                ).append_column("bucket", pa.nulls(rows.num_rows, pa.string()))
                con.insert("segment_members", rows.select(["segment", "bucket", "person_key"]))
            record_sizes(con, name, {None: len(after)}, at or now())
        current = after
        bitmaps.put_segment(ws, name, {None: current})
    size = len(current)
    with ws.db.begin() as conn:
        conn.execute(
            update(segments)
            .where(segments.c.name == name)
            .values(size=size, refreshed_at=at or now())
        )
    return size


def record_sizes(con: Any, name: str, sizes: dict[str | None, int], at: datetime) -> None:
    """Add a ``segment_sizes`` point (bucket None: the whole segment), or, when the segment's
    last point is less than ``SIZE_STEP`` older than ``at``, replace that point's sizes (it
    keeps its time, so a steady trickle of changes still adds a point a minute)."""
    at = at.astimezone(UTC)
    found = con.raw_sql(  # as epoch µs: fetching a TIMESTAMPTZ would need pytz
        'SELECT max(epoch_us("at")) FROM segment_sizes WHERE segment = ?', parameters=[name]
    ).fetchone()
    if found and found[0] is not None:
        last = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=found[0])
        if timedelta(0) <= at - last < SIZE_STEP:
            con.raw_sql(
                'DELETE FROM segment_sizes WHERE segment = ? AND epoch_us("at") = ?',
                parameters=[name, found[0]],
            )
            at = last
    con.con.executemany(  # a few rows: cheaper than an Arrow round trip through Ibis
        'INSERT INTO segment_sizes (segment, bucket, "at", size) VALUES (?, ?, ?, ?)',
        [[name, bucket, at, size] for bucket, size in sizes.items()],
    )


def sizes(
    ws: Workspace, name: str, since: datetime | None = None, last: timedelta | None = None
) -> list[dict[str, Any]]:
    """The size over time: ``[{"bucket": None | name, "points": [[iso time, size], ...]}]``,
    the whole segment first, then the buckets in the order they first appear; oldest first.
    ``since`` keeps the points from that time on, ``last`` those of the span ending at the
    latest point."""
    with ws.warehouse.connect() as con:
        t = con.table("segment_sizes")
        rows = t.filter(t.segment == name)
        if since is not None:
            rows = rows.filter(rows.at >= since.astimezone(UTC))
        if last is not None:
            rows = rows.filter(
                rows.at >= rows.at.max() - ibis.interval(seconds=int(last.total_seconds()))
            )
        got = rows.order_by(["at", "bucket"]).select("bucket", "at", "size").to_pyarrow()
    series: dict[str | None, list[list[Any]]] = {None: []}
    for bucket, when, size in zip(
        got["bucket"].to_pylist(), got["at"].to_pylist(), got["size"].to_pylist(), strict=True
    ):
        series.setdefault(bucket, []).append([when.astimezone(UTC).isoformat(), size])
    return [{"bucket": b, "points": points} for b, points in series.items()]


def members(ws: Workspace, name: str, bucket: str | None = None) -> BitMap:
    """The current members (from the index; from the warehouse when the index lacks them)."""
    found = bitmaps.get(ws, bitmaps.segment_name(name, bucket))
    if found is not None:
        return found
    if bucket is not None and bitmaps.store(ws).has(bitmaps.segment_name(name)):
        return BitMap()
    with ws.warehouse.connect() as con:
        sm = con.table("segment_members")
        rows = sm.filter(sm.segment == name)
        if bucket is not None:
            rows = rows.filter(rows.bucket == bucket)
        return bitmaps.keys_of(rows)
