"""The profile data stream rules read (``core.Reads``: attributes, tags, segments), loaded into
person states and watched for changes.

The batch path recomputes that data (a tag run, a profiles rebuild, a segment refresh) while
the stream path keeps person states for long. Both stream drivers keep a state current the
same way: a cheap ``stamp`` tells when anything may have changed; then a per-person
*fingerprint* (an order-free hash of the person's data, computed by the warehouse) is compared
with the one the state was built with, and only the changed persons' data is read again —
the embedded engine (``rapport.stream.engine``) for its states in memory, the NATS publisher
(``rapport.stream.partitions``) for the persons it has published.

A fingerprint is 0 for a person with no data the rules read. Read the fingerprint *before*
the data it stands for: a change in between then shows at the next comparison, never hides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa
from sqlalchemy import func, select

from rapport.conditions.reference import cast_attr
from rapport.stream.core import Reads
from rapport.stream.state import PersonState

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

__all__ = [
    "PROFILE_SECONDS",
    "attr_columns",
    "changed",
    "fingerprint_table",
    "fingerprints",
    "load_profile",
    "people",
    "reads_profile",
    "stamp",
]

#: the fingerprints are compared at least this often when the stamp stands still (a change
#: that moves none of its signals, e.g. a live audience swapping members within a minute)
PROFILE_SECONDS = 10.0
_SEP = "\u241f"  # a separator that names and values do not hold
_NULL = "\u2400"


def reads_profile(reads: Reads) -> bool:
    """Whether rules reading ``reads`` need any profile data at all."""
    return bool(reads.attrs or reads.tags or reads.segments)


def stamp(ws: Workspace, con: Backend, reads: Reads) -> tuple[Any, ...]:
    """Cheap: moves when a tag run ends, the profiles are rebuilt, a segment's size is
    recorded or the rules read other data (the fingerprints are compared then)."""
    from rapport.db.tables import tag_runs

    out: list[Any] = [reads]
    if reads.tags:
        q = select(func.count(), func.max(tag_runs.c.id), func.max(tag_runs.c.finished_at))
        with ws.db.connect() as conn:
            out.append(tuple(conn.execute(q).one()))
    if reads.segments:
        t = con.table("segment_sizes")
        out.append(_row(t.aggregate(n=t.count(), at=t["at"].max(), size=t["size"].sum())))
    if attr_columns(con, reads):
        t = con.table("profiles")
        out.append(_row(t.aggregate(n=t.count(), at=t.updated_at.max())))
    return tuple(out)


def _row(expr: Any) -> tuple[Any, ...]:
    return tuple(expr.to_pyarrow().to_pylist()[0].values())


def people(persons: Iterable[int]) -> Any:
    """``persons`` as a one-column table (``person_key``) to join with."""
    keys = sorted(persons)
    return ibis.memtable(pa.table({"person_key": pa.array(keys, pa.int64())}))


def fingerprint_table(fps: Mapping[int, int]) -> Any:
    """Fingerprints held in memory as a table (``person_key``, ``fp``) for ``changed``."""
    return ibis.memtable(
        pa.table(
            {
                "person_key": pa.array(list(fps), pa.int64()),
                "fp": pa.array(list(fps.values()), pa.int64()),
            }
        )
    )


def attr_columns(con: Backend, reads: Reads) -> dict[str, str]:
    """Attribute -> its ``profiles`` column (a property whose name clashes with a fixed column
    is stored as ``prop_<name>``); attributes with no column are left out."""
    if not reads.attrs or "profiles" not in con.list_tables():
        return {}
    have = set(con.table("profiles").columns)
    cols = {a: a if a in have else f"prop_{a}" for a in reads.attrs}
    return {a: c for a, c in cols.items() if c in have and c != "person_key"}


def _hashes(con: Backend, reads: Reads) -> Any | None:
    """(person_key, h): one hash per attribute set, tag value and segment bucket the rules
    read (None: they read none)."""
    parts = []
    if reads.tags:
        tv = con.table("tag_values")
        tv = tv.filter(tv.tag.isin(sorted(reads.tags)))
        parts.append(tv.select("person_key", h=ibis.literal("t").concat(tv.tag, _SEP, tv.value)))
    if reads.segments:
        sm = con.table("segment_members")
        sm = sm.filter(sm.segment.isin(sorted(reads.segments)))
        bucket = sm.bucket.fill_null(_NULL)
        parts.append(sm.select("person_key", h=ibis.literal("s").concat(sm.segment, _SEP, bucket)))
    cols = attr_columns(con, reads)
    if cols:
        pr = con.table("profiles")
        values = [
            ibis.literal(f"{_SEP}{a}=").concat(pr[c].cast("string").fill_null(_NULL))
            for a, c in sorted(cols.items())
        ]
        parts.append(pr.select("person_key", h=ibis.literal("a").concat(*values)))
    if not parts:
        return None
    u = ibis.union(*parts, distinct=False)
    return u.select("person_key", h=u.h.hash())


def _current(con: Backend, reads: Reads, persons: Any) -> Any | None:
    """(person_key, fp) of the ``persons`` table's persons that have data the rules read."""
    h = _hashes(con, reads)
    if h is None:
        return None
    h = h.join(persons, "person_key")
    return h.group_by("person_key").agg(fp=h.h.bit_xor())


def fingerprints(con: Backend, reads: Reads, persons: set[int]) -> dict[int, int]:
    """The fingerprints of ``persons`` (a person with no data is left out: 0)."""
    if not persons:
        return {}
    cur = _current(con, reads, people(persons))
    if cur is None:
        return {}
    t = cur.to_pyarrow()
    return dict(zip(t["person_key"].to_pylist(), t["fp"].to_pylist(), strict=True))


def changed(con: Backend, reads: Reads, held: Any) -> dict[int, int]:
    """The persons of ``held`` (a table of ``person_key``, ``fp``) whose fingerprint is no
    longer ``fp``: their new one (0: no data left)."""
    cur = _current(con, reads, held.select("person_key"))
    if cur is None:
        q = held.filter(held.fp != 0).select("person_key", new=ibis.literal(0, "int64"))
    else:
        j = held.left_join(cur, held.person_key == cur.person_key)
        q = j.select(held.person_key, old=held.fp, new=cur.fp.fill_null(0))
        q = q.filter(q.old != q.new)
    t = q.to_pyarrow()
    return dict(zip(t["person_key"].to_pylist(), t["new"].to_pylist(), strict=True))


def load_profile(
    ws: Workspace, con: Backend, persons: Any, states: dict[int, PersonState], reads: Reads
) -> None:
    """Fill ``states`` (of the persons in the ``persons`` table) with the attributes (typed by
    the tracking plan), tags and segments ``reads`` names."""
    cols = attr_columns(con, reads)
    if cols:
        from rapport.catalog import current_plan

        types = dict(current_plan(ws.db).user_properties())
        p = con.table("profiles").join(persons, "person_key")
        for row in p.select("person_key", *cols.values()).to_pyarrow().to_pylist():
            state = states[row["person_key"]]
            for a, c in cols.items():
                state.attrs[a] = cast_attr(row[c], types.get(a, "string"))
    if reads.tags:
        tv = con.table("tag_values")
        tv = tv.filter(tv.tag.isin(sorted(reads.tags))).join(persons, "person_key")
        for row in tv.select("person_key", "tag", "value").to_pyarrow().to_pylist():
            states[row["person_key"]].tags.setdefault(row["tag"], set()).add(row["value"])
    if reads.segments:
        sm = con.table("segment_members")
        sm = sm.filter(sm.segment.isin(sorted(reads.segments))).join(persons, "person_key")
        for row in sm.select("person_key", "segment", "bucket").to_pyarrow().to_pylist():
            buckets = states[row["person_key"]].segments.setdefault(row["segment"], set())
            buckets.add(row["bucket"])
