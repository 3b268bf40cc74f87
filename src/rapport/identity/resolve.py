"""Identity resolution over the warehouse: stage 1 of the stream path, splits, full rebuilds.

Records waiting for a person (``person_key IS NULL`` in ``events`` and ``profile_slices``) are
read with their identifiers, resolved one by one by an in-memory ``Resolver`` and written back
in ONE DuckDB transaction: new nodes, the link log, the history, every record's person, and the
re-keying of persons merged away. A record with no usable identifier gets ``person_key = -1``
(resolved: nobody), so it is not read again.

Each process keeps its resolver between passes; the warehouse's ``identity_version`` tells it
when another process (an import from a shell, the server's API) changed the graph, and it then
reloads the nodes. DuckDB lets one process write the file at a time, so passes never interleave.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
from ibis.backends.duckdb import Backend

from rapport.identity import config as cfg
from rapport.identity.graph import Resolver, TypeRule, rebuild
from rapport.identity.keys import Keyer, identity_secret
from rapport.ingest.normalize import InvalidValue
from rapport.warehouse import layout
from rapport.workspace import Workspace

VERSION_KEY = "identity_version"
SEQ_KEY = "identity_seq"
NOBODY = -1  # person_key of a record that carried no usable identifier
BATCH = 200_000  # records per pass: bounded memory, and the follower gets back to the log


@dataclass
class PassReport:
    records: int = 0
    new_nodes: int = 0
    links: int = 0
    merges: int = 0
    rejected: int = 0
    blocked: int = 0
    nobody: int = 0

    def add(self, other: PassReport) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class _State:
    """One process's view of the graph: the resolver and the key -> node index."""

    rules: tuple[TypeRule, ...]
    resolver: Resolver
    nodes: dict[int, int] = field(default_factory=dict)  # keyed hash -> node id
    version: str | None = None
    seq: int = 0


_STATES: dict[Path, _State] = {}
#: held by every change of the graph in this process (other processes: DuckDB's file lock)
GRAPH_LOCK = threading.Lock()


# -- extraction: which identifiers a record carries -------------------------------------------
def _json_path(value: ir.JSONValue, parts: Sequence[str]) -> ir.StringValue:
    for part in parts:
        value = value[part]
    return value.unwrap_as("string")


def _event_path(t: ir.Table, path: str) -> ir.StringValue | None:
    """An event column or JSON path as the Segment message names it."""
    head, *rest = path.split(".")
    if head == "userId" and not rest:
        return t.user_id
    if head == "anonymousId" and not rest:
        return t.anonymous_id
    if head == "traits" and rest:  # the loader keeps identify traits in ``properties``
        return (t.type == "identify").ifelse(_json_path(t.properties, rest), ibis.null("string"))
    if head == "properties" and rest:
        return _json_path(t.properties, rest)
    if head == "context" and rest:
        return _json_path(t.context, rest)
    return None


def _candidates(conf: cfg.IdentityConfig, table: ir.Table, kind: str) -> dict[str, Any]:
    """Column name -> expression; names are ``<type>\\x1f<n>`` (and ``<type>\\x1fscope``)."""
    columns: dict[str, Any] = {}
    for t in conf.types:
        exprs: list[ir.StringValue] = []
        if kind == "slice":
            exprs.append(_json_path(table.identifiers, [t.name]))
        else:
            exprs.append(_json_path(table.context, ["identifiers", t.name]))  # imported events
            exprs += [e for p in t.paths if (e := _event_path(table, p)) is not None]
        for n, expr in enumerate(exprs):
            columns[f"{t.name}\x1f{n}"] = expr
        if t.scope_path and kind == "event":
            scope = _event_path(table, t.scope_path)
            if scope is not None:
                columns[f"{t.name}\x1fscope"] = scope
    return columns


def _pending(con: Backend, conf: cfg.IdentityConfig, limit: int) -> list[tuple[str, pa.Table]]:
    """Unresolved slices, then unresolved events (by event time): their identifier columns."""
    out = []
    slices = con.table("profile_slices")
    s = slices.filter(slices.person_key.isnull())
    s = s.order_by([s.updated_at, s.slice_key]).limit(limit)
    out.append(
        (
            "slice",
            s.select(
                source=s.source, record_key=s.record_key, ts=s.updated_at,
                about=ibis.null("int64"),
                **_candidates(conf, s, "slice"),
            ).to_pyarrow(),
        )
    )  # fmt: skip
    room = limit - out[0][1].num_rows
    if room > 0:
        events = con.table("events")
        e = events.filter(events.person_key.isnull())
        e = e.order_by([e.ts, e.source, e.event_id]).limit(room)
        out.append(
            (
                "event",
                e.select(
                    source=e.source, record_key=e.event_id, ts=e.ts,
                    about=e.context["rapport"]["person_key"].unwrap_as("int64"),
                    **_candidates(conf, e, "event"),
                ).to_pyarrow(),
            )
        )  # fmt: skip
    return out


# -- the per-process state ---------------------------------------------------------------------
def _type_codes(conf: cfg.IdentityConfig, names: list[str]) -> np.ndarray:
    """Type code per node; a type deleted since counts as the first type, and its values are
    blocked (``_node_arrays``) so that they link nothing after a rebuild."""
    return np.array([conf.index.get(t, 0) for t in names], dtype=np.int64)


def _get_state(con: Backend, ws: Workspace, conf: cfg.IdentityConfig) -> _State:
    """The cached resolver, reloaded when the rules or the stored graph changed."""
    rules = tuple(conf.rules())
    version = ws.warehouse.get_state(con, VERSION_KEY)
    state = _STATES.get(ws.warehouse.path)
    if state is not None and state.rules == rules and state.version == version:
        return state
    state = _State(rules=rules, resolver=Resolver(rules), version=version)
    nodes = con.table("identity_nodes").order_by("node_id")
    arrow = nodes.select("node_id", "key", "id_type", "person_id").to_pyarrow()
    if arrow.num_rows:
        ids = arrow["node_id"].to_numpy()
        if ids[-1] != len(ids) - 1:
            raise RuntimeError("identity_nodes ids are not dense: run `rapport identity rebuild`")
        types = _type_codes(conf, arrow["id_type"].to_pylist())
        state.resolver.ensure_nodes(types)
        person = arrow["person_id"].fill_null(-1).to_numpy()
        state.resolver.load(person.astype(np.int64))
        state.nodes = dict(zip(arrow["key"].to_pylist(), ids.tolist(), strict=True))
    state.seq = int(ws.warehouse.get_state(con, SEQ_KEY) or 0)
    _STATES[ws.warehouse.path] = state
    return state


def _bump(ws: Workspace, con: Backend, state: _State) -> None:
    state.version = uuid.uuid4().hex
    ws.warehouse.set_state(con, VERSION_KEY, state.version)
    ws.warehouse.set_state(con, SEQ_KEY, str(state.seq))


@contextmanager
def _session(ws: Workspace, con: Backend | None = None) -> Iterator[Backend]:
    """The caller's connection or a new one; one identity operation per process at a time."""
    with GRAPH_LOCK:
        if con is not None:
            yield con
            return
        with ws.warehouse.connect() as own:
            yield own


# -- resolving new records --------------------------------------------------------------------
class _Pass:
    """Resolve records and collect the rows to write (nothing is written until ``flush``)."""

    def __init__(self, ws: Workspace, conf: cfg.IdentityConfig, state: _State) -> None:
        self.ws, self.conf, self.state = ws, conf, state
        self.keyer = Keyer(identity_secret(ws.settings))
        self.report = PassReport()
        self.norm: dict[tuple[str, str], tuple[str, bool] | None] = {}
        self.new_nodes: list[tuple[int, int, str, str, int, str, datetime | None]] = []
        self.links: list[tuple[int, str, str, str, int, datetime | None]] = []
        self.history: list[tuple[Any, ...]] = []
        self.records: dict[str, list[tuple[str, str, int]]] = {"event": [], "slice": []}
        self.absorbed: set[int] = set()
        self.now = datetime.now(UTC)

    def _value(self, id_type: str, raw: str) -> tuple[str, bool] | None:
        """(normalised value, blocked) or None when it is not a usable identifier."""
        k = (id_type, raw)
        if k in self.norm:
            return self.norm[k]
        try:
            value = self.conf.normalise(id_type, raw)
            found: tuple[str, bool] | None = (value, self.conf.blocked(id_type, value) is not None)
        except InvalidValue:
            found = None
        if len(self.norm) < 1_000_000:
            self.norm[k] = found
        return found

    def node(self, type_index: int, value: str, source: str, ts: datetime | None) -> int:
        id_type = self.conf.types[type_index].name
        key = self.keyer.key(id_type, value)
        node = self.state.nodes.get(key)
        if node is None:
            node = self.state.resolver.add_node(type_index)
            self.state.nodes[key] = node
            self.new_nodes.append((node, key, id_type, value, self.state.seq, source, ts))
        return node

    def resolve(
        self,
        kind: str,
        source: str,
        record_key: str,
        ts: datetime | None,
        identifiers: Iterable[tuple[str, str]] | int,
    ) -> int | None:
        """One record; returns its person (None: no usable identifier). Given a person id
        instead of identifiers, the record is that person's (where it was merged since), and
        links nothing."""
        if isinstance(identifiers, int):
            person = self.state.resolver.person(identifiers)
            self.report.records += 1
            if kind in self.records:
                self.records[kind].append(
                    (source, record_key, NOBODY if person is None else person)
                )
            return person
        found: dict[tuple[int, str], bool] = {}
        for id_type, raw in identifiers:
            checked = self._value(id_type, raw)
            if checked is not None:
                found[(self.conf.index[id_type], checked[0])] = checked[1]
        self.state.seq += 1
        seq = self.state.seq
        self.report.records += 1
        if not found:
            self.report.nobody += 1
            if kind in self.records:
                self.records[kind].append((source, record_key, NOBODY))
            return None
        nodes, blocked = [], set()
        before = self.state.resolver.node_count
        types = self.conf.types
        for (type_index, value), is_blocked in sorted(
            found.items(), key=lambda kv: (-types[kv[0][0]].priority, kv[0])
        ):  # new nodes are numbered strongest identifier first
            n = self.node(type_index, value, source, ts)
            nodes.append(n)
            if is_blocked:
                blocked.add(n)
            self.links.append((seq, source, record_key, kind, n, ts))
        outcome = self.state.resolver.resolve(nodes, blocked)
        for survivor, absorbed, via in outcome.merges:
            if absorbed >= before:
                continue  # an identifier first seen in this record joins: a link, not a merge
            self.absorbed.add(absorbed)
            self.report.merges += 1
            self.history.append(
                (
                    self.now,
                    "merge",
                    survivor,
                    absorbed,
                    via,
                    seq,
                    source,
                    record_key,
                    "shared value",
                )
            )
        for node, person, reason in outcome.rejected:
            self.history.append(
                (self.now, "reject", outcome.person, person, node, seq, source, record_key, reason)
            )
        self.report.rejected += len(outcome.rejected)
        self.report.blocked += len(outcome.blocked)
        if outcome.person is None:
            self.report.nobody += 1
        if kind in self.records:
            person = NOBODY if outcome.person is None else outcome.person
            self.records[kind].append((source, record_key, person))
        return outcome.person

    def flush(self, con: Backend) -> None:
        """Write everything collected, in the caller's transaction."""
        resolver = self.state.resolver
        self.report.new_nodes += len(self.new_nodes)
        self.report.links += len(self.links)
        if self.new_nodes:
            cols = list(zip(*self.new_nodes, strict=True))
            persons = [resolver.person(n) for n in cols[0]]
            con.insert(
                "identity_nodes",
                ibis.memtable(
                    pa.table(
                        {
                            "node_id": pa.array(cols[0], pa.int64()),
                            "key": pa.array(cols[1], pa.int64()),
                            "id_type": pa.array(cols[2], pa.string()),
                            "value": pa.array(cols[3], pa.string()),
                            "person_id": pa.array(persons, pa.int64()),
                            "first_seq": pa.array(cols[4], pa.int64()),
                            "first_source": pa.array(cols[5], pa.string()),
                            "first_seen": pa.array(cols[6], pa.timestamp("us", "UTC")),
                        }
                    )
                ),
            )
        if self.links:
            cols = list(zip(*self.links, strict=True))
            con.insert(
                "identity_links",
                ibis.memtable(
                    pa.table(
                        {
                            "seq": pa.array(cols[0], pa.int64()),
                            "source": pa.array(cols[1], pa.string()),
                            "record_key": pa.array(cols[2], pa.string()),
                            "kind": pa.array(cols[3], pa.string()),
                            "node_id": pa.array(cols[4], pa.int64()),
                            "ts": pa.array(cols[5], pa.timestamp("us", "UTC")),
                            "removed": pa.array([False] * len(cols[0]), pa.bool_()),
                        }
                    )
                ),
            )
        _insert_history(con, self.history)
        remap = {a: resolver.person(a) for a in self.absorbed}
        _rekey(con, {a: p for a, p in remap.items() if p is not None and p != a})
        for kind, rows in self.records.items():
            if rows:
                final = [(s, k, _final(resolver, p)) for s, k, p in rows]
                _set_persons(con, kind, final)


def _final(resolver: Resolver, person: int) -> int:
    found = None if person == NOBODY else resolver.person(person)
    return NOBODY if found is None else found


def _insert_history(con: Backend, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    names = list(layout.IDENTITY_HISTORY.names)
    types = [
        pa.timestamp("us", "UTC"), pa.string(), pa.int64(), pa.int64(), pa.int64(),
        pa.int64(), pa.string(), pa.string(), pa.string(),
    ]  # fmt: skip
    con.insert(
        "identity_history",
        ibis.memtable(
            pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})
        ),
    )


def _rekey(con: Backend, remap: dict[int, int]) -> None:
    """Persons merged away: their nodes and records now belong to the survivor."""
    if not remap:
        return
    mapping = pa.table(
        {
            "old": pa.array(list(remap), pa.int64()),
            "new": pa.array(list(remap.values()), pa.int64()),
        }
    )
    con.create_table("__identity_remap", ibis.memtable(mapping), temp=True, overwrite=True)
    for table, column in (
        ("identity_nodes", "person_id"),
        ("events", "person_key"),
        ("profile_slices", "person_key"),
    ):
        con.raw_sql(
            f'UPDATE "{table}" SET "{column}" = m.new FROM __identity_remap m '
            f'WHERE "{table}"."{column}" = m.old'
        )
    con.drop_table("__identity_remap", force=True)


def _set_persons(con: Backend, kind: str, rows: Sequence[tuple[str, str, int]]) -> None:
    """Records' persons by (source, record key)."""
    cols = list(zip(*rows, strict=True))
    people = pa.table(
        {
            "source": pa.array(cols[0], pa.string()),
            "record_key": pa.array(cols[1], pa.string()),
            "person": pa.array(cols[2], pa.int64()),
        }
    )
    con.create_table("__identity_people", ibis.memtable(people), temp=True, overwrite=True)
    table, key = ("events", "event_id") if kind == "event" else ("profile_slices", "record_key")
    con.raw_sql(
        f'UPDATE "{table}" SET person_key = p.person FROM __identity_people p '
        f'WHERE "{table}".source = p.source AND "{table}"."{key}" = p.record_key'
    )
    con.drop_table("__identity_people", force=True)


def _records(
    table: pa.Table,
) -> Iterator[tuple[str, str, datetime | None, list[tuple[str, str]] | int]]:
    """(source, record key, time, [(type, raw value)]) per row, read column by column (Arrow
    to Python row dicts would cost more than resolving). Instead of identifiers, an event that
    Rapport itself emitted about a person (``context.rapport.person_key``: a lifecycle change)
    carries that person id."""
    names = table.column_names[4:]
    types = [name.split("\x1f")[0] for name in names]
    scoped = {t: i for i, (t, n) in enumerate(zip(types, names, strict=True)) if "scope" in n}
    columns = [table[name].to_pylist() for name in names]
    heads = (table[name].to_pylist() for name in ("source", "record_key", "ts", "about"))
    for i, (source, key, ts, about) in enumerate(zip(*heads, strict=True)):
        if about is not None:  # an event Rapport emitted about a known person
            yield source, key, ts, about
            continue
        ids = []
        for j, column in enumerate(columns):
            value = column[i]
            if value is None or names[j].endswith("scope"):
                continue
            scope = scoped.get(types[j])
            prefix = columns[scope][i] if scope is not None else None
            ids.append((types[j], f"{prefix}:{value}" if prefix else str(value)))
        yield source, key, ts, ids


def resolve_pending(ws: Workspace, con: Backend | None = None, limit: int = BATCH) -> PassReport:
    """Resolve every record still waiting for a person (in batches); the totals."""
    total = PassReport()
    conf = cfg.load(ws.db)
    with _session(ws, con) as con:
        while True:
            state = _get_state(con, ws, conf)
            batches = _pending(con, conf, limit)
            count = sum(t.num_rows for _, t in batches)
            if not count:
                break
            work = _Pass(ws, conf, state)
            try:
                for kind, table in batches:
                    for source, key, ts, ids in _records(table):
                        work.resolve(kind, source, key, ts, ids)
                with ws.warehouse.transaction(con):
                    work.flush(con)
                    _bump(ws, con, state)
            except BaseException:
                _STATES.pop(ws.warehouse.path, None)  # memory ran ahead of the file
                raise
            total.add(work.report)
            if count < limit:
                break
    return total


# -- manual links, splits, blocks, rebuilds ---------------------------------------------------
def lookup(ws: Workspace, id_type: str, raw_value: str) -> int | None:
    """The person holding this identifier value (normalised first), or None."""
    conf = cfg.load(ws.db)
    if conf.type(id_type) is None:
        raise cfg.ConfigError(f"type: unknown identifier type {id_type!r}")
    value = conf.normalise(id_type, raw_value)
    key = Keyer(identity_secret(ws.settings)).key(id_type, value)
    with ws.warehouse.connect() as con:
        nodes = con.table("identity_nodes")
        rows = nodes.filter(nodes.key == key).select("person_id").to_pyarrow().to_pylist()
    return rows[0]["person_id"] if rows else None


def current_person(con: Backend, person_id: int) -> int | None:
    """Where a person id points now: itself, its survivor after a merge, or None (gone)."""
    nodes = con.table("identity_nodes")
    rows = nodes.filter(nodes.node_id == person_id).select("person_id").to_pyarrow().to_pylist()
    return rows[0]["person_id"] if rows else None


def link_persons(
    ws: Workspace, person_a: int, person_b: int, *, kind: str, actor: str, reason: str
) -> tuple[int | None, str | None]:
    """Merge two persons as a record of its own in the link log (a probabilistic match or a
    person's decision), subject to the same limits: (survivor, None) or (None, why not)."""
    conf = cfg.load(ws.db)
    with _session(ws) as con:
        a, b = current_person(con, person_a), current_person(con, person_b)
        if a is None or b is None:
            return None, f"person {person_a if a is None else person_b} does not exist"
        if a == b:
            return a, None
        state = _get_state(con, ws, conf)
        nodes = con.table("identity_nodes")
        rows = nodes.filter(nodes.node_id.isin([a, b])).select("node_id", "id_type", "value")
        work = _Pass(ws, conf, state)
        ids = [(r["id_type"], r["value"]) for r in rows.to_pyarrow().to_pylist()]
        record_key = f"{kind}:{a}-{b}:{uuid.uuid4().hex[:8]}"
        try:
            work.resolve(kind, "identity", record_key, work.now, ids)
            refused = [h for h in work.history if h[1] == "reject"]
            with ws.warehouse.transaction(con):
                work.flush(con)
                _insert_history(
                    con,
                    [(work.now, kind, a, b, None, state.seq, "identity", record_key, reason)],
                )
                _bump(ws, con, state)
        except BaseException:
            _STATES.pop(ws.warehouse.path, None)
            raise
        survivor = state.resolver.person(a)
    if refused:
        return None, f"refused: {refused[0][-1]} ({actor})"
    return survivor, None


def _all_links(con: Backend, where: ir.BooleanValue | None = None) -> pa.Table:
    links = con.table("identity_links")
    links = links.filter(~links.removed.fill_null(False))
    if where is not None:
        links = links.filter(where)
    return links.select("seq", "node_id", "source", "record_key", "kind").to_pyarrow()


def _node_arrays(con: Backend, conf: cfg.IdentityConfig) -> tuple[np.ndarray, np.ndarray]:
    """Type index and blocked flag per node id, from the stored values and today's rules."""
    arrow = con.table("identity_nodes").order_by("node_id").select("id_type", "value")
    table = arrow.to_pyarrow()
    types = _type_codes(conf, table["id_type"].to_pylist())
    blocked = np.fromiter(
        (
            conf.blocked(t, v) is not None or t not in conf.index
            for t, v in zip(table["id_type"].to_pylist(), table["value"].to_pylist(), strict=True)
        ),
        dtype=bool,
        count=table.num_rows,
    )
    return types, blocked


def _apply(
    con: Backend,
    ws: Workspace,
    conf: cfg.IdentityConfig,
    links: pa.Table,
    nodes: np.ndarray | None,
    action: str,
    reason: str,
) -> dict[str, int]:
    """Recompute persons from ``links`` (a closed set of records) and store the result."""
    types, blocked = _node_arrays(con, conf)
    seq = links["seq"].to_numpy()
    node = links["node_id"].to_numpy()
    result = rebuild(conf.rules(), types, seq, node, blocked)
    scope = np.unique(node) if nodes is None else np.union1d(nodes, np.unique(node))
    old = con.table("identity_nodes").select("node_id", "person_id").to_pyarrow()
    old_person = old["person_id"].fill_null(-1).to_numpy()
    new_person = result.node_person[scope]
    changed = scope[old_person[scope] != new_person]
    now = datetime.now(UTC)
    history = []
    splits = 0
    for before in np.unique(old_person[changed]):
        if before < 0:
            continue
        members = scope[old_person[scope] == before]
        for after in np.unique(result.node_person[members]):
            if after != before:
                splits += 1
                other = None if after < 0 else int(after)
                history.append((now, action, int(before), other, None, None, None, None, reason))
    moved = result.node_person[changed]
    update = pa.table(
        {
            "node_id": pa.array(changed, pa.int64()),
            "person": pa.array(moved, pa.int64(), mask=moved < 0),  # -1: blocked, no person
        }
    )
    con.create_table("__identity_nodes_new", ibis.memtable(update), temp=True, overwrite=True)
    con.raw_sql(
        "UPDATE identity_nodes SET person_id = u.person FROM __identity_nodes_new u "
        "WHERE identity_nodes.node_id = u.node_id"
    )
    con.drop_table("__identity_nodes_new", force=True)
    seqs, persons = result.record_person
    first = links.group_by("seq").aggregate(
        [("source", "min"), ("record_key", "min"), ("kind", "min")]
    )
    order = np.searchsorted(seqs, first["seq"].to_numpy())
    rec_person = np.where(persons[order] < 0, NOBODY, persons[order])
    for kind in ("event", "slice"):
        mask = np.array([k == kind for k in first["kind_min"].to_pylist()], dtype=bool)
        if mask.any():
            src = np.array(first["source_min"].to_pylist(), dtype=object)[mask]
            key = np.array(first["record_key_min"].to_pylist(), dtype=object)[mask]
            _set_persons(con, kind, list(zip(src, key, rec_person[mask].tolist(), strict=True)))
    _insert_history(con, history)
    return {"nodes_changed": int(len(changed)), "splits": splits, "records": int(len(seqs))}


def _closure(con: Backend, persons: set[int], nodes: set[int]) -> pa.Table:
    """Every link of the records touching these persons, repeated until no new person joins."""
    links = con.table("identity_links")
    ids = con.table("identity_nodes")
    for _ in range(8):
        member = ids.filter(ids.person_id.isin(list(persons)) | ids.node_id.isin(list(nodes)))
        seqs = links.filter(links.node_id.isin(member.node_id)).select("seq").distinct()
        touched = links.filter(links.seq.isin(seqs.seq))
        found = ids.filter(ids.node_id.isin(touched.node_id)).select("node_id", "person_id")
        arrow = found.to_pyarrow()
        more = {p for p in arrow["person_id"].to_pylist() if p is not None} - persons
        nodes |= set(arrow["node_id"].to_pylist())
        if not more:
            break
        persons |= more
    return _all_links(con, links.seq.isin(seqs.seq))


def recompute(
    ws: Workspace, *, persons: Iterable[int] = (), nodes: Iterable[int] = (), reason: str
) -> dict[str, int]:
    """Recompute only the components holding these persons / nodes (after a block or removal)."""
    conf = cfg.load(ws.db)
    with _session(ws) as con:
        links = _closure(con, set(persons), set(nodes))
        with ws.warehouse.transaction(con):
            out = _apply(con, ws, conf, links, np.array(sorted(nodes), np.int64), "split", reason)
            state = _get_state(con, ws, conf)
            _bump(ws, con, state)
        _STATES.pop(ws.warehouse.path, None)
    return out


def full_rebuild(ws: Workspace) -> dict[str, int]:
    """Recompute every person from the link log (same rules, same order: same ids)."""
    conf = cfg.load(ws.db)
    with _session(ws) as con:
        links = _all_links(con)
        with ws.warehouse.transaction(con):
            out = _apply(con, ws, conf, links, None, "split", "full rebuild")
            _insert_history(
                con, [(datetime.now(UTC), "rebuild", None, None, None, None, None, None, "")]
            )
            state = _get_state(con, ws, conf)
            _bump(ws, con, state)
        _STATES.pop(ws.warehouse.path, None)
    return out


def remove_link(ws: Workspace, seq: int, node_id: int, actor: str) -> dict[str, int]:
    """Take one record's link to an identifier away; the person splits if it held them."""
    with _session(ws) as con:
        links = con.table("identity_links")
        hit = links.filter((links.seq == seq) & (links.node_id == node_id)).count()
        if not int(hit.to_pyarrow().as_py()):
            raise LookupError(f"no link of record {seq} to identifier {node_id}")
        con.con.execute(
            "UPDATE identity_links SET removed = true WHERE seq = ? AND node_id = ?",
            [seq, node_id],
        )
    return recompute(ws, nodes=[node_id], reason=f"link {seq}->{node_id} removed by {actor}")


def remove_identifier(
    ws: Workspace, node_id: int, actor: str, reason: str, person_id: int | None = None
) -> dict[str, int]:
    """Detach an identifier value from everyone: it is blocked, its person recomputed (the
    parts it held together split). With ``person_id``, only if it belongs to that person."""
    with ws.warehouse.connect() as con:
        nodes = con.table("identity_nodes")
        rows = nodes.filter(nodes.node_id == node_id).select("id_type", "value", "person_id")
        found = rows.to_pyarrow().to_pylist()
    if not found or found[0]["value"] is None:
        raise LookupError(f"no identifier {node_id}")
    if person_id is not None and found[0]["person_id"] != person_id:
        raise LookupError(f"identifier {node_id} does not belong to person {person_id}")
    cfg.add_block(
        ws.db, id_type=found[0]["id_type"], value=found[0]["value"], actor=actor, reason=reason
    )
    return recompute(ws, nodes=[node_id], reason=f"identifier removed by {actor}: {reason}")


def block(
    ws: Workspace,
    *,
    reason: str,
    actor: str,
    id_type: str | None = None,
    value: str | None = None,
    pattern: str | None = None,
) -> tuple[int, int]:
    """Block a value (normalised for its type) or a pattern and detach the known values it
    matches, splitting the persons they held together: (block id, values detached)."""
    conf = cfg.load(ws.db)
    if id_type is not None:
        if conf.type(id_type) is None:
            raise cfg.ConfigError(f"id_type: unknown identifier type {id_type!r}")
        if value is not None:
            value = conf.normalise(id_type, value)
    block_id = cfg.add_block(
        ws.db, reason=reason, actor=actor, id_type=id_type, value=value, pattern=pattern
    )
    nodes = _matching_nodes(ws, id_type, value, pattern)
    if nodes:
        recompute(ws, nodes=nodes, reason=f"blocked: {reason}")
    return block_id, len(nodes)


def _matching_nodes(
    ws: Workspace, id_type: str | None, value: str | None, pattern: str | None
) -> list[int]:
    with ws.warehouse.connect() as con:
        nodes = con.table("identity_nodes")
        if id_type:
            nodes = nodes.filter(nodes.id_type == id_type)
        if value is not None:
            nodes = nodes.filter(nodes.value == value)
        rows = nodes.select("node_id", "value").to_pyarrow().to_pylist()
    if pattern is not None:
        rx = re.compile(pattern)
        rows = [r for r in rows if r["value"] is not None and rx.search(r["value"])]
    return [r["node_id"] for r in rows]
