"""Stage 1's output on NATS JetStream: per person partition, the events that have a person,
the profile data the workers' rules read, and identity merges.

``publish_ready(ws)`` (the follower, after each pass, when ``stream_backend = "nats"``)
publishes, in this order:

1. **merges** (``identity_history`` rows past the ``nats_merge_seq`` checkpoint; a first
   start skips the past, as the embedded engine does): a chain within a round is folded to
   its last survivor. The survivor's partition gets a ``Merge`` carrying the survivor's
   history of interest as the warehouse now holds it (the merged-away events re-keyed to it,
   up to the events already published, within the rules' retention) and its profile; every
   merged-away person's partition (when another) gets a ``Drop`` of that person's state;
2. **profile changes** of the persons published before: a ``Profile`` (the attributes, tags
   and segments the workers' rules read, ``core.Reads``) for each person whose fingerprint
   changed since the last one published;
3. **events** past the ``nats_offset`` checkpoint up to the last offset whose events (and all
   before it) have a person, in log order; a person not published before gets its
   ``Profile`` first. After each chunk every partition gets a *tick* (``person = -1``)
   carrying the latest event time published: a quiet partition's timers still fire.

Change detection is a per-person fingerprint (an order-free hash of that profile data,
computed by the warehouse) kept in ``nats_profiles``; the checkpoints and the fingerprints
move in one warehouse transaction after JetStream acknowledged the messages. A crash in
between re-publishes with the same message ids (``rapport.log.nats``): ``o<offset>`` for an
event, ``m<seq>.<survivor>`` / ``d<seq>.<person>`` for a merge, profiles by round or chunk,
person and fingerprint. The first publish starts at offset 0, so workers see each person's
whole history once.

An event message (``PersonEvent``, msgpack) holds what the rule core needs: the log offset,
the person, event time, name, event id, the properties and the item the event's ``item_id``
names (as JSON text), and ``running``, the latest event time of the whole log up to it — so a
worker's watermark moves as the embedded engine's does, not only with its own partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import msgspec
import pyarrow as pa

from rapport.log import nats as natslog
from rapport.stream import core, profiles
from rapport.stream.core import Core, Reads
from rapport.stream.state import PersonState

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

log = logging.getLogger(__name__)

OFFSET_KEY = "nats_offset"
MERGE_KEY = "nats_merge_seq"
ROUND_KEY = "nats_profile_round"
#: (person_key, fp): the fingerprint of the profile data last published per person
FINGERPRINTS = "nats_profiles"
#: log offsets published per round (one warehouse query and one ack wait each)
CHUNK = 20_000


class PersonEvent(msgspec.Struct, array_like=True, frozen=True, tag="e"):
    """One event of a partition; ``person = -1``: a tick (only ``running`` counts)."""

    offset: int
    person: int
    ts: datetime
    event: str
    id: str | None
    props: str | None
    item: str | None
    running: datetime


class Profile(msgspec.Struct, array_like=True, frozen=True, tag="p"):
    """A person's profile data the rules read: replaces what the state held."""

    person: int
    attrs: dict[str, Any]
    tags: dict[str, list[str]]
    segments: dict[str, list[str | None]]


class Past(msgspec.Struct, array_like=True, frozen=True):
    """An event of a merged history (props and item as JSON text, as in ``PersonEvent``)."""

    ts: datetime
    event: str
    props: str | None
    item: str | None
    id: str | None


class Merge(msgspec.Struct, array_like=True, frozen=True, tag="m"):
    """``away`` merged into ``profile.person``: its state becomes ``events`` + ``profile``."""

    seq: int
    away: list[int]
    profile: Profile
    events: list[Past]


class Drop(msgspec.Struct, array_like=True, frozen=True, tag="d"):
    """``person`` was merged away (into a person of another partition): forget its state."""

    seq: int
    person: int


Message = PersonEvent | Profile | Merge | Drop

#: messages per NATS message: the client's cost per NATS message (parsing, acks, the
#: consumer's bookkeeping) is paid once for this many events
WIRE_BATCH = 256

_encode = msgspec.msgpack.Encoder().encode
#: a NATS message of a partition: its messages, in order
decode = msgspec.msgpack.Decoder(list[Message]).decode

#: an outgoing message: (partition key = person, message id, message)
_Out = tuple[int, str, Message]


def publish_ready(ws: Workspace) -> int:
    """Publish merges, profile changes and what stage 1 has finished since the checkpoint;
    how many events."""
    from rapport.stream.engine import ready_until

    pub = _publisher(ws)
    rules = pub.rules
    wh = ws.warehouse
    with wh.connect() as con:
        if not pub.ready:
            _ensure_fingerprints(con)
            pub.ready = True
        done = int(wh.get_state(con, OFFSET_KEY) or 0)
        hi = ready_until(ws, con, done)
        _round(ws, con, pub, done)
    total = 0
    while done < hi:
        upto = min(hi, done + CHUNK)
        with wh.connect() as con:
            total += _chunk(ws, con, rules, done, upto)
        done = upto
    return total


# -- the workers' rules, as the publisher needs them --------------------------------------------
def _no_history(persons: set[int], ref: datetime) -> dict[int, PersonState]:
    return {}


@dataclass
class _Publisher:
    """Per process and warehouse: a core holding the workers' rules (what they read, keep and
    look back on), and when the profile data was last compared with what was published."""

    rules: Core
    stamp: tuple[Any, ...] = ()
    checked: float = float("-inf")
    ready: bool = False  # the fingerprints' table exists


_PUBLISHERS: dict[Any, _Publisher] = {}


def _publisher(ws: Workspace) -> _Publisher:
    """The process's publisher, its rules rebuilt when a provider's version changed."""
    from rapport.stream.engine import provider_paths

    pub = _PUBLISHERS.get(ws.warehouse.path)
    if pub is None or pub.rules.ws is not ws:
        providers = core.load_providers(provider_paths(ws.settings, "worker"))
        c = Core(ws, providers, _no_history)
        c.keep_states = True  # it holds none
        pub = _PUBLISHERS[ws.warehouse.path] = _Publisher(c)
    pub.rules.refresh_rules()
    return pub


def forget() -> None:
    """Drop the publishers' memory (as a restart does): the next round compares every
    fingerprint."""
    _PUBLISHERS.clear()


# -- one round: merges and profile changes ------------------------------------------------------
def _round(ws: Workspace, con: Backend, pub: _Publisher, done: int) -> None:
    """Publish the merges and the profile changes since the last round, then checkpoint.
    The fingerprints are compared when ``profiles.stamp`` moved, and every
    ``profiles.PROFILE_SECONDS``."""
    wh, rules = ws.warehouse, pub.rules
    seq = wh.get_state(con, MERGE_KEY)
    if seq is None:  # a first start: what was merged before is in the events published
        merges: list[tuple[int, int, int]] = []
        with wh.transaction(con):
            wh.set_state(con, MERGE_KEY, str(_last_merge(con)))
    else:
        merges = _merges(con, int(seq))
    survivor_of = {merged: survivor for _, survivor, merged in merges}
    gone = set(survivor_of)
    survivors = {_final(survivor_of, s) for _, s, _ in merges}
    stamp, now = profiles.stamp(ws, con, rules.reads), time.monotonic()
    compare = stamp != pub.stamp or now - pub.checked >= profiles.PROFILE_SECONDS
    changed = profiles.changed(con, rules.reads, con.table(FINGERPRINTS)) if compare else {}
    persons = (survivors | set(changed)) - gone
    fps = changed | profiles.fingerprints(con, rules.reads, survivors)
    if persons or merges:
        _send_round(ws, con, pub.rules, done, merges, survivor_of, persons, fps)
    if compare:  # only once what it found is published
        pub.stamp, pub.checked = stamp, now


def _send_round(
    ws: Workspace,
    con: Backend,
    rules: Core,
    done: int,
    merges: list[tuple[int, int, int]],
    survivor_of: dict[int, int],
    persons: set[int],
    fps: dict[int, int],
) -> None:
    """Merges (folded by ``survivor_of``), then profiles of ``persons``; checkpoint."""
    wh, gone = ws.warehouse, set(survivor_of)
    survivors = {_final(survivor_of, s) for _, s, _ in merges}
    n = int(wh.get_state(con, ROUND_KEY) or 0)
    found = _profiles(ws, con, persons, rules.reads)
    history = _history(ws, con, rules, survivors, done)
    out: list[_Out] = []
    parts = ws.settings.stream_partitions
    for s, away, top in _groups(merges, survivor_of, survivors):
        events = history.get(s, [])
        out.append((s, f"m{top}.{s}", Merge(top, away, found[s], events)))
    for where, _, a in merges:
        if natslog.partition_of(a, parts) != natslog.partition_of(_final(survivor_of, a), parts):
            out.append((a, f"d{where}.{a}", Drop(where, a)))
    for p in sorted(persons - survivors):
        out.append((p, f"p{n}.{p}.{fps.get(p, 0)}", found[p]))
    asyncio.run(_publish(ws, out, None))
    with wh.transaction(con):
        _store_fingerprints(con, {p: fps.get(p, 0) for p in persons}, gone)
        if merges:
            wh.set_state(con, MERGE_KEY, str(max(m[0] for m in merges)))
        wh.set_state(con, ROUND_KEY, str(n + 1))


def _final(survivor_of: dict[int, int], person: int) -> int:
    while person in survivor_of:
        person = survivor_of[person]
    return person


def _groups(
    merges: list[tuple[int, int, int]], survivor_of: dict[int, int], survivors: set[int]
) -> list[tuple[int, list[int], int]]:
    """(final survivor, the persons merged into it, the last merge's seq), by survivor."""
    into: dict[int, tuple[list[int], int]] = {s: ([], -1) for s in survivors}
    for seq, _, away in merges:
        s = _final(survivor_of, away)
        ids, top = into[s]
        ids.append(away)
        into[s] = (ids, max(top, seq))
    return [(s, ids, top) for s, (ids, top) in sorted(into.items())]


def _merges(con: Backend, after: int) -> list[tuple[int, int, int]]:
    """(seq, survivor, merged away) after ``after``, in order (every pass: plain SQL, no
    expression to compile)."""
    rows = con.raw_sql(
        "SELECT seq, person_id, other_id FROM identity_history WHERE action = 'merge' "
        "AND seq > ? AND other_id IS NOT NULL ORDER BY seq",
        parameters=[after],
    ).fetchall()
    return [(int(a), int(b), int(c)) for a, b, c in rows]


def _last_merge(con: Backend) -> int:
    h = con.table("identity_history")
    last = h.filter(h.action == "merge").seq.max().to_pyarrow().as_py()
    return -1 if last is None else int(last)


def _history(
    ws: Workspace, con: Backend, rules: Core, persons: set[int], done: int
) -> dict[int, list[Past]]:
    """The persons' events of interest the workers have been sent (and imported ones), within
    the rules' retention at the workers' watermark: what the embedded engine reloads."""
    from rapport.stream.engine import event_columns

    if not persons or rules.names == []:
        return {}
    ev = con.table("events")
    q = ev.filter((ev.log_offset <= done) | ev.log_offset.isnull())
    if rules.names is not None:
        q = q.filter(q.event.isin(rules.names))
    keep = _kept(ws, con, rules, done, q)
    if keep is not None:
        q = q.filter(keep)
    q = q.join(profiles.people(persons), "person_key")
    t = event_columns(con, q, rules.reads.items).order_by(["person_key", "ts", "log_offset"])
    out: dict[int, list[Past]] = {}
    rows = t.to_pyarrow()
    items = rows["item"].to_pylist() if rules.reads.items else None
    columns = (rows[c].to_pylist() for c in ("person_key", "ts", "event", "props", "event_id"))
    for i, (p, ts, name, props, eid) in enumerate(zip(*columns, strict=True)):
        item = items[i] if items is not None else None
        out.setdefault(p, []).append(Past(ts, name, props, item, eid))
    return out


def _kept(ws: Workspace, con: Backend, rules: Core, done: int, q: Any) -> Any | None:
    """A filter on ``q``'s events keeping what the rules can need at the workers' watermark,
    per event (``Retention.where``); None: all."""
    from rapport.stream.engine import clock

    r = rules.retention
    if r.lookback is None or r.anchors:
        return None
    ev = con.table("events")
    top = clock(ev.filter(ev.log_offset <= done)).max().to_pyarrow().as_py()
    if top is None:
        return None if r.since is None else q.ts >= r.since
    return r.where(q.ts, q.event, top - timedelta(seconds=ws.settings.stream_lateness_seconds))


# -- profiles and their fingerprints ------------------------------------------------------------
def _ensure_fingerprints(con: Backend) -> None:
    if FINGERPRINTS not in con.list_tables():
        con.create_table(FINGERPRINTS, schema=ibis.schema({"person_key": "int64", "fp": "int64"}))


def _store_fingerprints(con: Backend, fps: dict[int, int], gone: Iterable[int] = ()) -> None:
    drop = sorted(gone)
    if drop:
        sql = f"DELETE FROM {FINGERPRINTS} WHERE person_key IN (SELECT unnest(?::BIGINT[]))"
        con.raw_sql(sql, parameters=[drop])
    if fps:
        rows = pa.table(
            {
                "person_key": pa.array(list(fps), pa.int64()),
                "fp": pa.array(list(fps.values()), pa.int64()),
            }
        )
        con.upsert(FINGERPRINTS, ibis.memtable(rows), on="person_key")


def _profiles(ws: Workspace, con: Backend, persons: set[int], reads: Reads) -> dict[int, Profile]:
    """The profile messages of ``persons`` (empty ones for a person with no data)."""
    from rapport.stream.engine import load_profile

    if not persons:
        return {}
    states = {p: PersonState(p) for p in persons}
    load_profile(ws, con, profiles.people(persons), states, reads)
    return {
        p: Profile(
            p,
            s.attrs,
            {k: sorted(v) for k, v in s.tags.items()},
            {k: sorted(v, key=lambda b: (b is not None, b or "")) for k, v in s.segments.items()},
        )
        for p, s in states.items()
    }


# -- events -------------------------------------------------------------------------------------
def _chunk(ws: Workspace, con: Backend, rules: Core, done: int, upto: int) -> int:
    """Publish the events of offsets ``(done, upto]`` (new persons' profiles first), then
    checkpoint; how many."""
    from rapport.stream.engine import event_columns, running

    wh = ws.warehouse
    ev = con.table("events")
    rng = ev.filter(ev.log_offset > done, ev.log_offset <= upto)
    q = rng.mutate(running=running(rng)).filter(lambda t: t.person_key >= 0)
    rows = (
        event_columns(con, q, True, extra=("running",))
        .order_by("log_offset")
        .to_pyarrow()
        .to_pylist()
    )
    seen = {r["person_key"] for r in rows}
    known = con.table(FINGERPRINTS).join(profiles.people(seen), "person_key")
    new = seen - set(known.person_key.to_pyarrow().to_pylist())
    fps = profiles.fingerprints(con, rules.reads, new)
    found = _profiles(ws, con, set(fps), rules.reads)
    out: list[_Out] = [(p, f"q{upto}.{p}.{fp}", found[p]) for p, fp in sorted(fps.items()) if fp]
    out += [
        (
            r["person_key"],
            f"o{r['log_offset']}",
            PersonEvent(
                r["log_offset"],
                r["person_key"],
                r["ts"],
                r["event"] or "",  # identify, alias: no name
                r["event_id"],
                r["props"],
                r["item"],
                r["running"],
            ),
        )
        for r in rows
    ]
    top = max((r["running"] for r in rows), default=None)
    asyncio.run(_publish(ws, out, None if top is None else (upto, top)))
    with wh.transaction(con):
        _store_fingerprints(con, {p: fps.get(p, 0) for p in new})
        wh.set_state(con, OFFSET_KEY, str(upto))
    return len(rows)


async def _publish(ws: Workspace, out: list[_Out], tick: tuple[int, datetime] | None) -> None:
    """``out`` to the partitions of their persons, in order; then, given ``(upto, top)``, a
    tick to every partition."""
    if not out and tick is None:
        return
    s = ws.settings
    n = s.stream_partitions
    nc, js = await natslog.connect(s.nats_url)
    try:
        await natslog.ensure_stream(js, s)
        parts: dict[int, list[tuple[str, Message]]] = {}
        for p, mid, m in out:
            parts.setdefault(natslog.partition_of(p, n), []).append((mid, m))
        if tick is not None:
            upto, top = tick
            t = PersonEvent(upto, -1, top, "", None, None, None, top)
            for p in range(n):
                parts.setdefault(p, []).append((f"t{upto}.{p}", t))
        await natslog.publish(js, wire(s.nats_stream, parts))
    finally:
        await nc.close()


def wire(stream: str, parts: dict[int, list[tuple[str, Message]]]) -> list[tuple[str, str, bytes]]:
    """Each partition's ``(message id, message)`` list, in order, as NATS messages of up to
    ``WIRE_BATCH``: a batch's id names its first and last message, so the same list published
    again is dropped by JetStream; a worker also skips events it has fed (by log offset)."""
    out = []
    for p, msgs in parts.items():
        subj = natslog.subject(stream, p)
        for i in range(0, len(msgs), WIRE_BATCH):
            batch = msgs[i : i + WIRE_BATCH]
            mid = batch[0][0] if len(batch) == 1 else f"{batch[0][0]}..{batch[-1][0]}"
            out.append((subj, mid, _encode([m for _, m in batch])))
    return out
