"""The rule core's throughput and a worker's event-to-lead latency (issue 5 targets:
>= 50,000 events/s per core; p99 <= 100 ms at 10,000 events/s).

    .venv/bin/python bench/stream/core.py throughput   # EVENTS=200000 PERSONS=20000 RUNS=3
    .venv/bin/python bench/stream/core.py latency      # RATE=10000 SECONDS=20 (needs NATS)
    RARE=1 ...                                         # selective rules: ~1 % of events lead
    NULL=1 ... throughput                              # rules that never fire: the core alone
    IDENTITY=1 ... throughput                          # stage 1 in the same process, too

``throughput``: 20 live lead rules (10 event triggers with filters, 10 sequences: 5 ``A then
B``, 5 ``A then not B``) fed the worker's way — each message msgpack-decoded, its properties
parsed, then ``Core.feed`` — on one process; outputs are counted, not written (the metadata
DB's cost is the latency run's). CPU seconds of the process; median of ``RUNS``. With
``IDENTITY=1`` each event first goes through stage 1's in-memory identity graph the way the
identity resolver does it (keyed identifier values → nodes → ``Resolver.resolve`` → the
person; a merge goes to ``Core.merge``): a person has a member id and one or two anonymous
ids, and half the events are logged in (anonymous id + member id), as Segment clients send.

``latency``: a publisher process sends person events to one JetStream partition at ``RATE``
events/s, each stamped with its send time as event time; this process runs a worker
(``stream.worker``: fetch, feed, ``fire`` in the metadata DB, checkpoint, ack) and measures,
for each lead of an event-triggered rule, commit time minus the triggering event's send time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from rapport.conditions.model import Duration
from rapport.leads import live
from rapport.leads.rules import LeadRule, parse_condition
from rapport.stream.core import Core
from rapport.stream.partitions import WIRE_BATCH, PersonEvent, decode
from rapport.stream.state import EventRec

EVENTS = int(os.environ.get("EVENTS", 200_000))
PERSONS = int(os.environ.get("PERSONS", 20_000))
RUNS = int(os.environ.get("RUNS", 3))
RATE = int(os.environ.get("RATE", 10_000))
SECONDS = float(os.environ.get("SECONDS", 20))
NAMES = ["view_product", "search", "login", "add_to_cart", "order_paid", "book_hotel"]
SHARE = [0.45, 0.17, 0.15, 0.12, 0.06, 0.05]
CATEGORIES = ["fridge", "tv", "phone", "laptop", "washer", "camera"]

TRIGGERS = [
    'event view_product where category = "fridge" and price >= 5000',
    'event view_product where category = "tv" and duration_s >= 60',
    "event view_product where price >= 8000",
    'event add_to_cart where category = "laptop"',
    "event add_to_cart where quantity >= 3",
    "event order_paid where price >= 9000",
    'event search where category = "camera"',
    'event book_hotel where category = "washer"',
    "event login where duration_s >= 110",
    'event view_product where category = "phone" and price < 500',
    "sequence view_product then add_to_cart within 20 minutes",
    "sequence search then view_product within 5 minutes",
    "sequence add_to_cart then order_paid within 1 hours",
    "sequence login then book_hotel within 30 minutes",
    'sequence view_product where category = "fridge" then add_to_cart within 10 minutes',
    "sequence add_to_cart then not order_paid within 30 minutes",
    'sequence view_product where category = "tv" then not add_to_cart within 15 minutes',
    "sequence search then not view_product within 10 minutes",
    "sequence book_hotel then not order_paid within 2 hours",
    "sequence login then not search within 20 minutes",
]


#: RARE=1: every trigger's first step also needs ``duration_s >= 119`` (1 event in 60 of its
#: kind): leads at a realistic rate (~1 % of events) instead of a third of them
RARE = os.environ.get("RARE") == "1"


def trigger_texts() -> list[str]:
    if not RARE:
        return TRIGGERS
    out = []
    for text in TRIGGERS:
        head, sep, tail = text.partition(" then ")
        head += " and duration_s >= 119" if " where " in head else " where duration_s >= 119"
        out.append(head + sep + tail)
    return out


def lead_rules() -> list[LeadRule]:
    out = []
    for i, text in enumerate(trigger_texts(), 1):
        out.append(
            LeadRule(
                id=i,
                name=f"r{i}",
                lead_type=f"type {i}",
                version=1,
                trigger=parse_condition("trigger", text),
                conditions=None,
                suppression=None,
                cooldown=Duration(amount=1, unit="hours"),  # type: ignore[arg-type]
                score=50,
                priority=3,
                route="auto",
                mode="realtime",
                schedule=None,
                status="live",
            )
        )
    return out


class CountingProvider:
    """The 20 rules; outputs counted, not written."""

    name = "lead"

    def __init__(self) -> None:
        self.hits = 0

    def version(self, ws: Any) -> int:
        return 1

    def rules(self, ws: Any) -> list[live.LeadStreamRule]:
        return [live.LeadStreamRule(r, {}) for r in lead_rules()]

    def begin(self, ws: Any) -> None:
        return None

    def apply(self, ws: Any, outputs: list[Any]) -> None:
        self.hits += sum(len(o) for o in outputs)


class NullRule:
    """A rule with a lead rule's interest and retention that never fires: what the core
    costs by itself (decode, states, dispatch, schedule, prune) with 20 rules."""

    def __init__(self, real: live.LeadStreamRule) -> None:
        from rapport.conditions.to_stream import StreamRule

        self.key, self.reads, self.horizon = real.key, real.reads, real.horizon
        self.compiled = StreamRule(
            lambda s, a, e=None: False,
            lambda s, a: None,
            real.compiled.interest,
            real.compiled.retention,
            real.compiled.accepts,
        )

    def on_event(self, state: Any, at: Any, event: Any) -> None:
        return None

    def on_timer(self, state: Any, at: Any) -> None:
        return None

    def on_merge(self, survivor: int, merged_away: int, at: Any) -> None:
        return None

    def watched(self) -> tuple[int, ...]:
        return ()


class NullProvider(CountingProvider):
    def rules(self, ws: Any) -> list[NullRule]:  # type: ignore[override]
        return [NullRule(r) for r in super().rules(ws)]


def props(rng: np.random.Generator, n: int) -> list[bytes]:
    cats = rng.integers(0, len(CATEGORIES), n)
    price = rng.integers(100, 10_000, n)
    qty = rng.integers(1, 5, n)
    dur = rng.integers(1, 120, n)
    return [
        orjson.dumps(
            {
                "category": CATEGORIES[cats[i]],
                "price": int(price[i]),
                "quantity": int(qty[i]),
                "duration_s": int(dur[i]),
            }
        )
        for i in range(n)
    ]


def messages(seed: int) -> list[bytes]:
    """EVENTS person events over a day, in time order, as the partitions carry them (NATS
    messages of ``WIRE_BATCH`` events)."""
    rng = np.random.default_rng(seed)
    persons = rng.integers(0, PERSONS, EVENTS)
    names = rng.choice(len(NAMES), EVENTS, p=SHARE)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    step = timedelta(days=1) / EVENTS
    from msgspec.msgpack import Encoder

    encode = Encoder().encode
    events = []
    body = props(rng, EVENTS)
    for i in range(EVENTS):
        ts = start + step * i
        events.append(
            PersonEvent(
                i + 1, int(persons[i]), ts, NAMES[names[i]], uuid.UUID(int=i).hex,
                body[i].decode(), None, ts,
            )
        )  # fmt: skip
    return [encode(events[k : k + WIRE_BATCH]) for k in range(0, EVENTS, WIRE_BATCH)]


def identifiers(seed: int) -> list[list[tuple[str, str]]]:
    """Per message, the identifiers a tracking client sends (IDENTITY=1)."""
    rng = np.random.default_rng(seed + 1)
    persons = np.random.default_rng(seed).integers(0, PERSONS, EVENTS)  # as ``messages``
    second = rng.random(EVENTS) < 0.5  # the person's other device
    logged_in = rng.random(EVENTS) < 0.5
    out = []
    for i in range(EVENTS):
        p = int(persons[i])
        ids = [("anonymous_id", f"{'b' if second[i] and p % 2 else 'a'}{p:08d}")]
        if logged_in[i]:
            ids.append(("member_id", f"m{p:08d}"))
        out.append(ids)
    return out


class Stage1:
    """Stage 1's per-event work, in memory: identifier keys, nodes, the graph."""

    def __init__(self) -> None:
        from rapport.identity.graph import Resolver, TypeRule
        from rapport.identity.keys import Keyer

        self.types = {"member_id": 0, "anonymous_id": 1}
        self.resolver = Resolver(
            [TypeRule(0, "member_id", 70, 3), TypeRule(1, "anonymous_id", 30, 10)]
        )  # the default identifier types' priorities and limits
        self.keyer = Keyer(b"bench secret")
        self.nodes: dict[int, int] = {}
        self.merges: list[tuple[int, int, int]] = []

    def person(self, ids: list[tuple[str, str]]) -> int:
        nodes = []
        for id_type, value in ids:
            key = self.keyer.key(id_type, value.strip())
            node = self.nodes.get(key)
            if node is None:
                node = self.nodes[key] = self.resolver.add_node(self.types[id_type])
            nodes.append(node)
        outcome = self.resolver.resolve(nodes)
        for survivor, absorbed, _ in outcome.merges:
            self.merges.append((len(self.merges), survivor, absorbed))
        assert outcome.person is not None
        return outcome.person


def throughput() -> None:
    data = messages(1)
    ids = identifiers(1) if os.environ.get("IDENTITY") == "1" else None
    cpu, wall, hits, judged, merges = [], [], 0, 0, 0
    for _ in range(RUNS):
        provider = NullProvider() if os.environ.get("NULL") == "1" else CountingProvider()
        core = Core(None, [provider], lambda persons, ref: {}, max_persons=sys.maxsize)  # type: ignore[arg-type]
        core.refresh_rules()
        loads, wants, feed = orjson.loads, core.wants, core.feed
        stage1 = Stage1()
        c0, w0 = time.process_time(), time.perf_counter()
        i = 0
        for raw in data:  # a NATS message: a worker's batch
            for e in decode(raw):
                assert isinstance(e, PersonEvent)
                person = e.person
                if ids is not None:
                    person = stage1.person(ids[i])
                    if stage1.merges:
                        core.merge(stage1.merges)
                        merges += len(stage1.merges)
                        stage1.merges.clear()
                i += 1
                if wants(e.event):
                    rec = EventRec(e.ts, e.event, loads(e.props) if e.props else {}, None, e.id)
                    feed(person, rec, e.running)
            core.advance(e.running)  # the timers due, the outputs
            core.apply_outputs()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        hits, judged = provider.hits, core.stats.judged
    c, w = statistics.median(cpu), statistics.median(wall)
    print(
        f"{EVENTS:,} events, {PERSONS:,} persons, 20 rules (10 sequences): "
        f"median of {RUNS}: {c:.2f} s CPU = {EVENTS / c:,.0f} events/s/core "
        f"(wall {w:.2f} s = {EVENTS / w:,.0f}/s); {hits:,} leads, {judged:,} judgements; "
        + (f"identity resolved, {merges // RUNS:,} merges; " if ids is not None else "")
        + f"load average {os.getloadavg()[0]:.1f}"
    )


# -- latency ------------------------------------------------------------------------------------
def publisher(url: str, stream: str, rate: int, seconds: float) -> None:
    """Send events at ``rate``/s for ``seconds`` to partition 0 (a child process)."""
    from msgspec.msgpack import Encoder

    from rapport.log import nats as natslog

    encode = Encoder().encode
    rng = np.random.default_rng(2)
    n = int(rate * seconds)
    persons = rng.integers(0, PERSONS, n)
    names = rng.choice(len(NAMES), n, p=SHARE)
    body = props(rng, n)
    subj = natslog.subject(stream, 0)

    async def go() -> None:
        nc, js = await natslog.connect(url)
        t0 = time.perf_counter()
        tick = 0.005  # send in slices of 5 ms
        i = 0
        while i < n:
            due = min(n, int((time.perf_counter() - t0) * rate))
            batch = []  # what a follower's pass publishes: the events ready, in one message
            while i < due:
                now = datetime.now(UTC)
                batch.append(
                    PersonEvent(
                        i + 1, int(persons[i]), now, NAMES[names[i]], f"{i + 1:012d}",
                        body[i].decode(), None, now,
                    )
                )  # fmt: skip
                i += 1
            for k in range(0, len(batch), WIRE_BATCH):
                part = batch[k : k + WIRE_BATCH]
                mid = f"o{part[0].offset}..o{part[-1].offset}"
                await nc.publish(subj, encode(part), headers={"Nats-Msg-Id": mid})
            await nc.flush()
            await asyncio.sleep(tick)
        await nc.close()

    asyncio.run(go())


def latency() -> None:
    from rapport import settings as settings_mod
    from rapport.db.tables import leads
    from rapport.leads import rules as rules_mod
    from rapport.log import nats as natslog
    from rapport.stream import worker
    from rapport.workspace import Workspace

    stream = f"RAPPORT_BENCH_{uuid.uuid4().hex[:8].upper()}"
    home = Path(tempfile.mkdtemp(prefix="stream-latency-")) / "home"
    s = settings_mod.load_settings(
        home=home,
        stream_backend="nats",
        nats_stream=stream,
        stream_partitions=1,
        stream_idle_seconds=0,
    )
    ws = Workspace(s)
    ws.init()
    for r in lead_rules():
        rules_mod.create_rule(
            ws.db,
            rules_mod.RuleIn(
                name=r.name,
                lead_type=r.lead_type,
                trigger=trigger_texts()[r.id - 1],
                cooldown={"amount": 1, "unit": "hours"},
                status="live",
            ),
            None,
        )
    asyncio.run(_ensure(ws))
    committed: list[tuple[float, int]] = []
    orig = worker.Partition.apply

    def apply(self: worker.Partition) -> None:  # the leads of the batch are committed
        orig(self)
        if not committed or committed[-1][1] != self.offset:
            committed.append((time.time(), self.offset))

    worker.Partition.apply = apply  # type: ignore[method-assign]
    stop = asyncio.Event()

    async def go() -> None:
        task = asyncio.create_task(worker.run(ws, [0], stop=stop))
        await asyncio.sleep(3)  # the worker's rules and consumer are ready
        pub = subprocess.Popen(
            [sys.executable, __file__, "publish", s.nats_url, stream, str(RATE), str(SECONDS)]
        )
        while pub.poll() is None:
            await asyncio.sleep(0.2)
        total = int(RATE * SECONDS)
        deadline = time.monotonic() + 600
        while (not committed or committed[-1][1] < total) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # until the worker has caught up
        stop.set()
        await task

    c0 = time.process_time()
    try:
        asyncio.run(go())
    finally:
        asyncio.run(natslog.delete_stream(s))
    cpu = time.process_time() - c0
    from sqlalchemy import select

    with ws.db.connect() as conn:
        rows = conn.execute(select(leads.c.rule_id, leads.c.evidence, leads.c.id)).all()
    # the commit time of each lead: the first commit after the batch holding its trigger
    # (leads of event triggers and "A then B": the trigger is the last evidence event)
    import bisect

    seqs = [q for _, q in committed]
    lat = []
    for rule_id, evidence, _ in rows:
        if rule_id > 15:
            continue  # absences fire on the watermark, not on an event
        last = evidence[-1]
        sent = datetime.fromisoformat(last["ts"]).timestamp()
        offset = int(last["id"])  # the publisher's event ids are the offsets
        k = bisect.bisect_left(seqs, offset)
        if k < len(committed):
            lat.append(committed[k][0] - sent)
    lat.sort()
    n = len(lat)
    p = lambda q: lat[min(n - 1, int(q * n))] * 1000  # noqa: E731
    print(
        f"{RATE:,} events/s for {SECONDS:.0f} s through NATS, one worker, 20 rules: "
        f"{n:,} event-triggered leads; latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
        f"max {lat[-1] * 1000:.1f} ms; worker CPU {cpu:.1f} s; load average "
        f"{os.getloadavg()[0]:.1f}"
    )


async def _ensure(ws: Any) -> None:
    from rapport.log import nats as natslog

    nc, js = await natslog.connect(ws.settings.nats_url)
    await natslog.ensure_stream(js, ws.settings)
    await nc.close()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "throughput"
    if what == "publish":
        publisher(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    elif what == "latency":
        latency()
    else:
        throughput()
