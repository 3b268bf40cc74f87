"""The bitmap index: one pyroaring ``BitMap`` of person keys per tag value, segment bucket,
audience and lifecycle stage, so that a marketer editing an audience sees its size at once.

Sets live as files under ``$RAPPORT_HOME/bitmaps/`` with a small ``manifest.json`` (name →
file, size, refreshed at), each written atomically (temp file + rename). Names:

- ``all``: the universe (every ``person_key >= 0`` in ``profiles`` or ``events``),
- ``tag:<tag>`` (anyone with a value) and ``tag:<tag>=<value>``,
- ``seg:<segment>`` (every member) and ``seg:<segment>/<bucket>``.

A tree of only tag / segment leaves (and/or/not) is answered from the files alone
(``bitmap_count``). Other leaves run as warehouse queries (``rapport.conditions.to_ibis``) and
their person sets join the algebra (``evaluate``). A tag or segment the index does not know
(never refreshed) is read from the warehouse rather than taken as empty.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyroaring import BitMap

from rapport.conditions.model import And, Condition, HasTag, InSegment, Not, Or

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

UNIVERSE = "all"
MANIFEST = "manifest.json"
MAX_KEY = 2**32 - 1  # pyroaring's BitMap holds 32-bit ids


def tag_name(tag: str, value: str | None = None) -> str:
    return f"tag:{tag}" if value is None else f"tag:{tag}={value}"


def segment_name(segment: str, bucket: str | None = None) -> str:
    return f"seg:{segment}" if bucket is None else f"seg:{segment}/{bucket}"


def from_keys(keys: Iterable[int] | pa.Array | pa.ChunkedArray) -> BitMap:
    """A bitmap of person keys (negative keys — unresolved placeholders — are dropped)."""
    if isinstance(keys, np.ndarray):
        values = keys.astype(np.int64, copy=False)
    elif isinstance(keys, pa.ChunkedArray | pa.Array):
        values = keys.drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        values = np.fromiter((k for k in keys if k is not None), dtype=np.int64)
    values = values[values >= 0]
    if values.size and values.max() > MAX_KEY:
        raise ValueError(f"person key {values.max()} does not fit a 32-bit bitmap")
    # through a typed buffer: ~4x faster than handing pyroaring Python ints
    return BitMap(array.array("I", values.astype(np.uint32).tobytes()))


# -- the store ---------------------------------------------------------------------------------
class BitmapStore:
    """The files of one workspace; loaded sets are cached in memory and re-read when the
    manifest changes (another process refreshed them)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._manifest: dict[str, dict[str, Any]] = {}
        self._stamp: float | None = None
        self._cache: dict[str, tuple[str, BitMap]] = {}

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, dict[str, Any]]:
        """name -> {"file", "size", "refreshed_at"}."""
        try:
            stamp = self.manifest_path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if stamp != self._stamp:
            with self._lock:
                self._manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
                self._stamp = stamp
        return self._manifest

    def has(self, name: str) -> bool:
        return name in self.manifest()

    def get(self, name: str) -> BitMap | None:
        """The set called ``name``, or None when the index does not have it."""
        entry = self.manifest().get(name)
        if entry is None:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == entry["file"]:
            return cached[1]
        try:
            data = (self.root / entry["file"]).read_bytes()
        except FileNotFoundError:  # replaced by a writer since the manifest was read
            self._stamp = None
            entry = self.manifest().get(name)
            if entry is None:
                return None
            data = (self.root / entry["file"]).read_bytes()
        bitmap = BitMap.deserialize(data)
        self._cache[name] = (entry["file"], bitmap)
        return bitmap

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.manifest() if n.startswith(prefix))

    def put_many(self, sets: dict[str, BitMap], drop_prefix: str | None = None) -> None:
        """Write the sets (each file atomically) and then the manifest; with ``drop_prefix``,
        sets under that prefix that are not in ``sets`` are removed (a bucket that vanished)."""
        self.root.mkdir(parents=True, exist_ok=True)
        at = datetime.now(UTC).isoformat()
        written: dict[str, dict[str, Any]] = {}
        for name, bitmap in sets.items():
            bitmap.run_optimize()
            digest = hashlib.sha1(name.encode()).hexdigest()[:16]
            # a new file name per version: a reader holding the old manifest still finds its file
            file = f"{digest}-{os.urandom(4).hex()}.roar"
            _write_atomic(self.root / file, bitmap.serialize())
            written[name] = {"file": file, "size": len(bitmap), "refreshed_at": at}
        with self._lock, _file_lock(self.root / ".lock"):  # another process may write too
            current = _read_json(self.manifest_path)
            old_files = set()
            for name in list(current):
                if name in written or (drop_prefix is not None and name.startswith(drop_prefix)):
                    old_files.add(current.pop(name)["file"])
            current.update(written)
            _write_atomic(self.manifest_path, json.dumps(current, indent=0).encode())
            for file in old_files:
                (self.root / file).unlink(missing_ok=True)
            for name in written:
                self._cache.pop(name, None)

    def put(self, name: str, bitmap: BitMap) -> None:
        self.put_many({name: bitmap})

    def drop(self, prefix: str) -> None:
        """Remove every set whose name starts with ``prefix`` (a deleted segment)."""
        self.put_many({}, drop_prefix=prefix)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_STORES: dict[Path, BitmapStore] = {}


def store(ws: Workspace) -> BitmapStore:
    """The workspace's bitmap store (one per directory per process, so the cache is shared)."""
    root = (ws.settings.home / "bitmaps").resolve()
    found = _STORES.get(root)
    if found is None:
        found = _STORES[root] = BitmapStore(root)
    return found


def forget_person(ws: Workspace, person_key: int) -> int:
    """Clear one person's bit in every set that holds it (right to erasure); how many sets."""
    bs = store(ws)
    changed = {}
    for name in bs.names():
        bitmap = bs.get(name)
        if bitmap is not None and person_key in bitmap:
            changed[name] = bitmap - BitMap([person_key])
    if changed:
        bs.put_many(changed)
    return len(changed)


def get(ws: Workspace, name: str) -> BitMap | None:
    return store(ws).get(name)


# -- from the warehouse --------------------------------------------------------------------------
def universe_table(con: Backend) -> ir.Table:
    """Every person: ``person_key >= 0`` in ``profiles`` or ``events``."""
    events = con.table("events")
    people = events.filter(events.person_key >= 0).select("person_key")
    if "profiles" in con.list_tables():
        profiles = con.table("profiles")
        people = people.union(profiles.filter(profiles.person_key >= 0).select("person_key"))
    return people.distinct()


def keys_of(table: ir.Table) -> BitMap:
    return from_keys(table.select("person_key").to_pyarrow()["person_key"])


def _grouped(table: ir.Table, by: list[str]) -> dict[tuple[Any, ...], BitMap]:
    """One bitmap per distinct ``by`` tuple, from (by..., person_key) rows."""
    rows = table.select(*by, "person_key").order_by(*by, "person_key").to_pyarrow()
    out: dict[tuple[Any, ...], BitMap] = {}
    if not rows.num_rows:
        return out
    # rows are sorted by ``by``: a group ends where any key column changes (vectorised, as
    # tag_values holds tens of millions of rows)
    change = np.zeros(rows.num_rows, dtype=bool)
    change[0] = True
    for col in by:
        codes = pc.fill_null(rows[col].combine_chunks().dictionary_encode().indices, -1)
        values = codes.to_numpy(zero_copy_only=False)
        change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], rows.num_rows)
    persons = rows["person_key"].to_numpy(zero_copy_only=False)
    keys = [rows[c].take(pa.array(starts)).to_pylist() for c in by]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        out[tuple(k[i] for k in keys)] = from_keys(persons[start:end])
    return out


def refresh_from_warehouse(ws: Workspace) -> dict[str, int]:
    """Rebuild every set from ``tag_values`` and ``segment_members`` (and the universe);
    name -> size."""
    with ws.warehouse.connect() as con:
        sets: dict[str, BitMap] = {UNIVERSE: keys_of(universe_table(con))}
        sets.update(_tag_sets(con.table("tag_values")))
        sets.update(_segment_sets(con.table("segment_members")))
    store(ws).put_many(sets, drop_prefix="")
    return {name: len(b) for name, b in sets.items()}


def _tag_sets(tv: ir.Table) -> dict[str, BitMap]:
    sets: dict[str, BitMap] = {}
    tv = tv.filter(tv.person_key >= 0)
    for (tag, value), bitmap in _grouped(tv, ["tag", "value"]).items():
        sets[tag_name(tag, value)] = bitmap
        sets[tag_name(tag)] = sets.get(tag_name(tag), BitMap()) | bitmap
    return sets


def _segment_sets(sm: ir.Table, only: str | None = None) -> dict[str, BitMap]:
    sets: dict[str, BitMap] = {}
    sm = sm.filter(sm.person_key >= 0)
    if only is not None:
        sm = sm.filter(sm.segment == only)
    for (segment, bucket), bitmap in _grouped(sm, ["segment", "bucket"]).items():
        if bucket is not None:
            sets[segment_name(segment, bucket)] = bitmap
        sets[segment_name(segment)] = sets.get(segment_name(segment), BitMap()) | bitmap
    return sets


def refresh_tag(ws: Workspace, tag: str) -> int:
    """Rebuild one tag's sets after a tag run; the number of persons carrying it."""
    with ws.warehouse.connect() as con:
        tv = con.table("tag_values")
        sets = _tag_sets(tv.filter(tv.tag == tag))
    sets.setdefault(tag_name(tag), BitMap())
    store(ws).put_many(sets, drop_prefix=tag_name(tag) + "=")
    return len(sets[tag_name(tag)])


def put_segment(ws: Workspace, segment: str, buckets: dict[str | None, BitMap]) -> None:
    """Store a segment's sets as just written to ``segment_members`` (bucket None: audience)."""
    sets: dict[str, BitMap] = {}
    everyone = BitMap()
    for bucket, bitmap in buckets.items():
        everyone |= bitmap
        if bucket is not None:
            sets[segment_name(segment, bucket)] = bitmap
    sets[segment_name(segment)] = everyone
    bs = store(ws)
    bs.put_many(sets, drop_prefix=segment_name(segment) + "/")


def drop_segment(ws: Workspace, segment: str) -> None:
    bs = store(ws)
    bs.drop(segment_name(segment) + "/")
    bs.drop(segment_name(segment))


# -- evaluation ---------------------------------------------------------------------------------
def _leaf_names(cond: HasTag | InSegment) -> list[str]:
    if isinstance(cond, HasTag):
        if cond.values is None:
            return [tag_name(cond.tag)]
        return [tag_name(cond.tag, v) for v in cond.values]
    return [segment_name(cond.segment, cond.bucket)]


def _leaf_bitmap(bs: BitmapStore, cond: HasTag | InSegment) -> BitMap | None:
    """The leaf's set from the index; None when the index has never seen the tag/segment."""
    owner = tag_name(cond.tag) if isinstance(cond, HasTag) else segment_name(cond.segment)
    if not bs.has(owner):
        return None
    out = BitMap()
    for name in _leaf_names(cond):
        found = bs.get(name)
        if found is not None:
            out |= found
    return out


def bitmap_only(cond: Condition, bs: BitmapStore) -> bool:
    """True when every leaf is a tag / segment the index holds (and the universe, if a Not)."""
    if isinstance(cond, HasTag | InSegment):
        owner = tag_name(cond.tag) if isinstance(cond, HasTag) else segment_name(cond.segment)
        return bs.has(owner)
    if isinstance(cond, And):
        return all(bitmap_only(c, bs) for c in cond.all)
    if isinstance(cond, Or):
        return all(bitmap_only(c, bs) for c in cond.any)
    if isinstance(cond, Not):
        return bs.has(UNIVERSE) and bitmap_only(cond.cond, bs)
    return False


def _algebra(cond: Condition, bs: BitmapStore) -> BitMap:
    if isinstance(cond, HasTag | InSegment):
        found = _leaf_bitmap(bs, cond)
        assert found is not None
        return found
    if isinstance(cond, And):
        parts = sorted((_algebra(c, bs) for c in cond.all), key=len)
        return BitMap.intersection(*parts) if len(parts) > 1 else parts[0]
    if isinstance(cond, Or):
        return BitMap.union(*(_algebra(c, bs) for c in cond.any))
    if isinstance(cond, Not):
        everyone = bs.get(UNIVERSE)
        assert everyone is not None
        return everyone - _algebra(cond.cond, bs)
    raise TypeError(f"not a bitmap condition: {cond.kind}")


def bitmap_eval(ws: Workspace, cond: Condition) -> BitMap | None:
    """The person set from the index alone, or None when a leaf is not bitmap-able."""
    bs = store(ws)
    if not bitmap_only(cond, bs):
        return None
    return _algebra(cond, bs)


def bitmap_count(ws: Workspace, cond: Condition) -> int | None:
    found = bitmap_eval(ws, cond)
    return None if found is None else len(found)


@dataclass
class Evaluation:
    persons: BitMap
    bitmap_only: bool


def evaluate(cond: Condition, ws: Workspace, as_of: datetime) -> BitMap:
    """The persons matching ``cond`` at ``as_of``: bitmap algebra where the index can answer,
    warehouse queries for the rest (each maximal warehouse-only subtree is one query)."""
    return evaluate_detail(cond, ws, as_of).persons


def evaluate_detail(cond: Condition, ws: Workspace, as_of: datetime) -> Evaluation:
    """``evaluate``, saying whether the index alone answered. A tag recomputed since its
    bitmaps were written is re-indexed first, so a size never lags a tag run."""
    for tag in stale_tags(ws, cond):
        refresh_tag(ws, tag)
    bs = store(ws)
    if bitmap_only(cond, bs):
        return Evaluation(_algebra(cond, bs), True)
    from rapport.warehouse.spark import reader  # DuckDB, or Spark (warehouse_backend)

    with reader(ws).connect() as con:
        ctx = _Mixed(ws, con, as_of, bs)
        return Evaluation(ctx.eval(cond), False)


def _has_index_leaf(cond: Condition, bs: BitmapStore) -> bool:
    if isinstance(cond, HasTag | InSegment):
        return bitmap_only(cond, bs)
    if isinstance(cond, And):
        return any(_has_index_leaf(c, bs) for c in cond.all)
    if isinstance(cond, Or):
        return any(_has_index_leaf(c, bs) for c in cond.any)
    if isinstance(cond, Not):
        return _has_index_leaf(cond.cond, bs)
    return False


class _Mixed:
    def __init__(self, ws: Workspace, con: Backend, as_of: datetime, bs: BitmapStore) -> None:
        self.ws, self.con, self.as_of, self.bs = ws, con, as_of, bs
        self._universe: BitMap | None = None

    def universe(self) -> BitMap:
        if self._universe is None:
            self._universe = keys_of(universe_table(self.con))
        return self._universe

    def eval(self, cond: Condition) -> BitMap:
        if bitmap_only(cond, self.bs) and not isinstance(cond, Not):
            return _algebra(cond, self.bs)
        if not _has_index_leaf(cond, self.bs):
            return self.query(cond)
        if isinstance(cond, And):
            return self.all_of(cond.all)
        if isinstance(cond, Or):
            # the warehouse-only alternatives as one query
            wh = [c for c in cond.any if not _has_index_leaf(c, self.bs)]
            parts = [self.eval(c) for c in cond.any if _has_index_leaf(c, self.bs)]
            if wh:
                parts.append(self.query(wh[0] if len(wh) == 1 else Or(any=wh)))
            return BitMap.union(*parts)
        if isinstance(cond, Not):
            # the universe of the warehouse, not the index's (possibly older) one
            return self.universe() - self.eval(cond.cond)
        return self.query(cond)

    def all_of(self, children: list[Condition]) -> BitMap:
        """``And``: positives intersected, then the negated children subtracted, so that a
        ``not <behaviour>`` beside a tag costs one query of the behaviour, not of the
        universe (members of tags and segments are persons of the universe). The
        warehouse-only positives run as one query, and so do the warehouse-only negatives."""
        negatives = [c.cond for c in children if isinstance(c, Not)]
        positives: list[Condition] = [c for c in children if not isinstance(c, Not)]
        wh_pos = [c for c in positives if not _has_index_leaf(c, self.bs)]
        parts = [self.eval(c) for c in positives if _has_index_leaf(c, self.bs)]
        if wh_pos:
            parts.append(self.query(wh_pos[0] if len(wh_pos) == 1 else And(all=wh_pos)))
        if not parts:
            parts = [self.universe()]
        parts.sort(key=len)
        out = BitMap.intersection(*parts) if len(parts) > 1 else parts[0]
        if negatives and out:
            out = out - self.eval(negatives[0] if len(negatives) == 1 else Or(any=negatives))
        return out

    def query(self, cond: Condition) -> BitMap:
        """A warehouse-only subtree through the batch compiler."""
        from rapport.conditions import to_ibis  # the batch compiler (brief "ibis")

        types = attr_types(self.ws)
        columns = set(self.con.table("profiles").columns) if self.has_profiles() else set()
        # a property whose name clashes with a fixed column is stored as prop_<name>
        renamed = {a: f"prop_{a}" for a in types if a not in columns and f"prop_{a}" in columns}
        ctx = to_ibis.BatchContext(
            self.con, self.as_of, types, attr_columns=renamed, props_in_columns=True
        )
        if not self.has_profiles():  # before the first profile build: nobody has attributes
            ctx.tables = {**ctx.tables, "profiles": self._no_profiles()}
        table = to_ibis.compile(cond, ctx)
        return keys_of(table)

    def has_profiles(self) -> bool:
        return "profiles" in self.con.list_tables()

    def _no_profiles(self) -> str:
        from rapport.warehouse.spark import temp_table

        name = "_no_profiles"
        if name not in self.con.list_tables():
            nobody = ibis.memtable(pa.table({"person_key": pa.array([], pa.int64())}))
            temp_table(self.con, name, nobody)
        return name


def attr_types(ws: Workspace) -> dict[str, str]:
    """Declared user properties -> plan type (what ``Attr`` casts profile values to)."""
    from rapport.catalog import current_plan

    return dict(current_plan(ws.db).user_properties())


def stale_tags(ws: Workspace, cond: Condition) -> list[str]:
    """Tags of ``cond`` computed (a finished run) after their bitmaps were written."""
    names = sorted(_tags_in(cond))
    if not names:
        return []
    from sqlalchemy import func, select

    from rapport.db.tables import tag_runs, tags

    query = (
        select(tags.c.name, func.max(tag_runs.c.finished_at))
        .join(tag_runs, tag_runs.c.tag_id == tags.c.id)
        .where(tags.c.name.in_(names), tag_runs.c.status == "done")
        .group_by(tags.c.name)
    )
    with ws.db.connect() as conn:
        finished = {name: at for name, at in conn.execute(query) if at is not None}
    manifest = store(ws).manifest()
    out = []
    for name, at in finished.items():
        entry = manifest.get(tag_name(name))
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        if entry is None or datetime.fromisoformat(entry["refreshed_at"]) < at:
            out.append(name)
    return out


def _tags_in(cond: Condition) -> set[str]:
    if isinstance(cond, HasTag):
        return {cond.tag}
    if isinstance(cond, And):
        return set().union(*(_tags_in(c) for c in cond.all))
    if isinstance(cond, Or):
        return set().union(*(_tags_in(c) for c in cond.any))
    if isinstance(cond, Not):
        return _tags_in(cond.cond)
    return set()


def key_array(keys: BitMap) -> np.ndarray:
    """The set's person keys, ascending, as int64."""
    return np.frombuffer(array.array("I", keys), dtype=np.uint32).astype(np.int64)


def persons_table(keys: BitMap) -> pa.Table:
    return pa.table({"person_key": pa.array(key_array(keys), pa.int64())})


def memtable(keys: BitMap) -> ir.Table:
    return ibis.memtable(persons_table(keys))
