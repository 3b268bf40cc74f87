"""Stage 2 scaled out: lead rules in worker processes over NATS JetStream partitions.

Real NATS (127.0.0.1:4222, skipped when absent unless RAPPORT_REQUIRE_SERVICES=1), real
``rapport worker rules`` subprocesses over a file workspace. The same seeded events go to two
workspaces: one runs the rules embedded (the expected leads), the other publishes to NATS
where three workers run them — one SIGKILLed mid-stream and restarted. The leads must be the
same, each exactly once. The checkpoints are files or, as in a cluster, objects in a JetStream
object store, from which a worker on another machine (another home) resumes a partition.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cluster_mode import write_settings
from conftest import copy_home, service_unavailable
from rapport.db.tables import leads
from rapport.leads import rules
from rapport.log import nats as natslog
from rapport.settings import Settings, load_settings
from rapport.stream import checkpoints, engine, follow, partitions, worker
from rapport.workspace import Workspace
from test_stream_engine import person, send

NATS_URL = os.environ.get("RAPPORT_TEST_NATS", "nats://127.0.0.1:4222")
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
PARTITIONS = 6
WORKERS = [[0, 1], [2, 3], [4, 5]]
RULES = [
    {
        "name": "big_view",
        "lead_type": "big view",
        "trigger": "event view_product where price >= 3000",
        "cooldown": {"amount": 1, "unit": "hours"},
    },
    {
        "name": "view_then_cart",
        "lead_type": "view then cart",
        "trigger": "sequence view_product then add_to_cart within 20 minutes",
        "cooldown": {"amount": 90, "unit": "minutes"},
    },
    {
        "name": "cart_abandoned",
        "lead_type": "cart abandoned",
        "trigger": "sequence add_to_cart then not order_paid within 30 minutes",
        "cooldown": {"amount": 2, "unit": "hours"},
    },
]


def _write_settings(home: Path, backend: str, stream: str, store: str, **more: object) -> None:
    """Into the home's rapport.toml, so that the worker subprocesses read the same settings."""
    write_settings(
        home,
        stream_backend=backend,
        nats_url=NATS_URL,
        nats_stream=stream,
        stream_partitions=PARTITIONS,
        stream_idle_seconds=0,
        checkpoint_store=store,
        **more,
    )


def _home(migrated_home: Path, tmp_path: Path, backend: str, stream: str, store: str) -> Workspace:
    home = tmp_path / "home"
    copy_home(migrated_home, tmp_path)
    _write_settings(home, backend, stream, store)
    ws = Workspace(load_settings(home=home))
    from rapport.ingest.sources import create_source

    create_source(ws.db, "web", kind="server")
    for spec in RULES:
        rules.create_rule(ws.db, rules.RuleIn(**spec, status="live"), None)
    return ws


@pytest.fixture
def pair(
    request: pytest.FixtureRequest, migrated_home: Path, tmp_path: Path
) -> Iterator[tuple[Workspace, Workspace]]:
    """(embedded, scaled out): the same rules; the second publishes to its own stream and
    keeps its checkpoints in the store ``request.param`` ("file" unless parametrised)."""
    store = getattr(request, "param", "file")
    stream = f"RAPPORT_TEST_{uuid.uuid4().hex[:10].upper()}"
    scaled = _home(migrated_home, tmp_path / "scaled", "nats", stream, store)
    try:
        asyncio.run(natslog.delete_stream(scaled.settings))
    except ConnectionError as exc:
        service_unavailable("NATS", exc)
    embedded = _home(migrated_home, tmp_path / "embedded", "embedded", stream, store)
    yield embedded, scaled
    asyncio.run(natslog.delete_stream(scaled.settings))  # the stream and its consumers
    asyncio.run(checkpoints.delete_bucket(scaled.settings))  # and the checkpoints' bucket
    for ws in (embedded, scaled):
        engine.forget(ws)
        ws.close()


def start_worker(
    ws: Workspace, partitions: list[int], home: Path | None = None
) -> subprocess.Popen[bytes]:
    """A worker of ``ws``'s partitions, run in ``home`` (another machine's) or ``ws``'s."""
    home = home or ws.settings.home
    env = {**os.environ, "RAPPORT_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "rapport", "worker", "rules", "--partitions"]
        + [",".join(map(str, partitions)), "--batch", "50"],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def events(seed: int, persons: int, batches: int, per_batch: int) -> list[list[dict[str, Any]]]:
    """Batches of track messages: views, carts and orders of ``persons``, in time order."""
    rng = random.Random(seed)
    clock = T0
    out = []
    for _ in range(batches):
        batch = []
        for _ in range(per_batch):
            clock += timedelta(seconds=rng.choice([1, 5, 20, 60]))
            name = rng.choice(["view_product", "view_product", "add_to_cart", "order_paid"])
            props = {"price": rng.choice([500, 1500, 3500, 6000])} if name == "view_product" else {}
            batch.append(
                {
                    "type": "track",
                    "event": name,
                    "anonymousId": f"a{rng.randrange(persons)}",
                    "timestamp": clock.isoformat(),
                    "properties": props,
                    "messageId": uuid.uuid4().hex,
                }
            )
        out.append(batch)
    # one last event a day later: every absence due by then matures in both
    closing = {**batch[-1], "timestamp": (clock + timedelta(days=1)).isoformat()}
    out.append([{**closing, "event": "login", "messageId": uuid.uuid4().hex}])
    return out


def wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def lead_rows(ws: Workspace) -> list[tuple[str, int, int, datetime]]:
    query = select(leads.c.dedupe_key, leads.c.rule_id, leads.c.person_key, leads.c.created_at)
    with ws.db.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(query))  # type: ignore[misc]


def caught_up(ws: Workspace) -> bool:
    """Every partition's checkpoint is at the last message of its subject."""

    async def last_seqs() -> list[int]:
        nc, js = await natslog.connect(ws.settings.nats_url)
        try:
            out = []
            for p in range(PARTITIONS):
                subj = natslog.subject(ws.settings.nats_stream, p)
                out.append((await js.get_last_msg(ws.settings.nats_stream, subj)).seq or 0)
            return out
        finally:
            await nc.close()

    want = asyncio.run(last_seqs())
    for p, seq in enumerate(want):
        ckpt = worker.load_checkpoint(ws.settings, p)
        if ckpt is None or ckpt.seq < seq:
            return False
    return True


def feed(ws: Workspace, *batches: list[dict[str, Any]]) -> None:
    """Send each batch and run a follower pass over it (loads, resolves, publishes to NATS)."""
    for batch in batches:
        send(ws, *batch)
        follow.one_pass(ws)


def wait_caught_up(ws: Workspace, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until every partition is checkpointed to its end (60 s at most), the workers alive."""
    deadline = time.monotonic() + 60
    while not caught_up(ws):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a worker died: {p.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the workers did not catch up in 60 s"
        time.sleep(0.3)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def assert_same_leads(embedded: Workspace, scaled: Workspace) -> None:
    """Every rule made leads, the scaled-out ones are the embedded ones, none made twice."""
    expected, got = lead_rows(embedded), lead_rows(scaled)
    by_rule = {r: sum(1 for e in expected if e[1] == r) for r in (1, 2, 3)}
    assert all(by_rule.values()), by_rule  # every rule made leads (an absence one too)
    assert len({e[0] for e in got}) == len(got)  # none twice
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, (len(expected), len(got), missing[:5], extra[:5])


@pytest.mark.parametrize("pair", ["file", "nats"], indirect=True)
def test_three_workers_one_killed_make_every_lead_exactly_once(pair):
    embedded, scaled = pair
    batches = events(seed=5, persons=500, batches=8, per_batch=600)
    procs = [start_worker(scaled, parts) for parts in WORKERS]
    killed = restarted = None
    try:
        for n, batch in enumerate(batches):
            feed(scaled, batch)
            if n == 3:  # mid-stream: the worker has applied some batches, not all
                wait_for(lambda: worker.load_checkpoint(scaled.settings, 2) is not None)
                killed = procs[1]
                killed.send_signal(signal.SIGKILL)
                killed.wait(10)
            if n == 5:
                restarted = start_worker(scaled, WORKERS[1])
                procs.append(restarted)
        assert killed is not None and killed.returncode == -signal.SIGKILL
        feed(embedded, [e for batch in batches for e in batch])  # the expected leads
        wait_caught_up(scaled, [p for p in procs if p is not killed])
    finally:
        stop(procs)
    assert_same_leads(embedded, scaled)
    # the restarted worker resumed from its checkpoints, not from the start
    assert restarted is not None and restarted.stderr is not None
    said = restarted.stderr.read().decode()
    resumed = re.search(r"partitions \[2, 3\] from sequences \[(\d+), (\d+)\]", said)
    assert resumed and int(resumed[1]) > 0, said[-2000:]
    files = list(scaled.settings.home.glob("stream/*/p*.ckpt"))
    assert len(files) == (PARTITIONS if scaled.settings.checkpoint_store == "file" else 0)


@pytest.mark.parametrize("pair", ["nats"], indirect=True)
def test_a_worker_on_another_machine_resumes_partitions_from_the_nats_checkpoints(pair, tmp_path):
    """Machine A's worker checkpoints every partition, makes leads past its checkpoints and
    is killed; machine B (another home: no file of A's, the same metadata DB and NATS) takes
    the partitions over from the object store, and the leads are the embedded ones, once."""
    embedded, scaled = pair
    batches = events(seed=9, persons=300, batches=6, per_batch=400)
    other = tmp_path / "machine-b"
    other.mkdir()
    settings = scaled.settings
    _write_settings(other, "nats", settings.nats_stream, "nats", database_url=settings.metadata_url)
    every = list(range(PARTITIONS))
    first = start_worker(scaled, every)
    second = None
    try:
        feed(scaled, *batches[:3])
        wait_caught_up(scaled, [first])  # every partition's checkpoint is in NATS
        made = len(lead_rows(scaled))
        feed(scaled, batches[3])
        wait_for(lambda: len(lead_rows(scaled)) > made, 90)  # leads made after the checkpoints...
        first.send_signal(signal.SIGKILL)  # ...then A dies
        first.wait(10)
        second = start_worker(scaled, every, home=other)
        feed(scaled, *batches[4:])
        feed(embedded, [e for batch in batches for e in batch])
        wait_caught_up(scaled, [second])
    finally:
        stop([first] + ([second] if second else []))
    assert_same_leads(embedded, scaled)
    assert second is not None and second.stderr is not None
    said = second.stderr.read().decode()
    resumed = re.search(r"partitions \[0, 1, 2, 3, 4, 5\] from sequences \[([\d, ]+)\]", said)
    assert resumed and all(int(s) > 0 for s in resumed[1].split(", ")), said[-2000:]
    assert "NATS object store" in said
    # no checkpoint file on either machine: B read A's checkpoints from NATS
    assert not list(settings.home.glob("stream/**/*.ckpt")) and not (other / "stream").exists()


def corrupt(settings: Settings, partition: int) -> None:
    """Damage a stored checkpoint as a disk or a storage fault could: its bytes are no longer
    those stored (a file cut short; an object with a chunk too many)."""
    if settings.checkpoint_store == "file":
        path = checkpoints.FileStore(settings.home / "stream" / settings.nats_stream).path(
            partition
        )
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return

    async def go() -> None:
        nc, js = await natslog.connect(settings.nats_url)
        try:
            bucket = checkpoints.bucket(settings)
            info = await (await js.object_store(bucket)).get_info(checkpoints.key(partition))
            await js.publish(f"$O.{bucket}.C.{info.nuid}", b"not a checkpoint")
        finally:
            await nc.close()

    asyncio.run(go())


@pytest.mark.parametrize("pair", ["file", "nats"], indirect=True)
def test_a_corrupt_checkpoint_is_never_loaded_its_partition_is_replayed_from_the_log(pair):
    """A worker stops with every partition checkpointed; partition 1's checkpoint is then
    damaged. The restarted worker does not load it (digest or msgpack fails): it replays that
    partition from the start of the stream, resumes the others, and the leads are still the
    embedded ones, each once."""
    embedded, scaled = pair
    batches = events(seed=3, persons=200, batches=4, per_batch=300)
    every = list(range(PARTITIONS))
    first = start_worker(scaled, every)
    try:
        feed(scaled, *batches[:2])
        wait_caught_up(scaled, [first])
    finally:
        stop([first])
    corrupt(scaled.settings, 1)
    assert worker.load_checkpoint(scaled.settings, 1) is None  # not loaded...
    assert worker.load_checkpoint(scaled.settings, 0) is not None  # ...unlike the others
    second = start_worker(scaled, every)
    try:
        feed(scaled, *batches[2:])
        feed(embedded, [e for batch in batches for e in batch])
        wait_caught_up(scaled, [second])
    finally:
        stop([second])
    assert_same_leads(embedded, scaled)
    assert second.stderr is not None
    said = second.stderr.read().decode()
    assert "the checkpoint of partition 1 in" in said and "is corrupt" in said, said[-2000:]
    resumed = re.search(r"partitions \[0, 1, 2, 3, 4, 5\] from sequences \[([\d, ]+)\]", said)
    assert resumed, said[-2000:]
    seqs = [int(s) for s in resumed[1].split(", ")]
    assert seqs[1] == 0 and all(seqs[:1] + seqs[2:]), seqs


def test_an_upload_killed_midway_leaves_the_previous_checkpoint(tmp_path):
    """The child storing a checkpoint in NATS is SIGKILLed (its machine lost) halfway through
    the chunks: the object is still the previous checkpoint, whole, and the next upload
    replaces it."""
    stream = f"RAPPORT_TEST_{uuid.uuid4().hex[:10].upper()}"
    settings = load_settings(
        home=tmp_path, nats_url=NATS_URL, nats_stream=stream, checkpoint_store="nats"
    )
    store = checkpoints.open_store(settings)
    old, big = b"previous checkpoint" * 1000, os.urandom(64 << 20)  # 512 chunks of 128 KiB
    try:
        store.put(0, old)
    except ConnectionError as exc:
        service_unavailable("NATS", exc)

    async def kill_midway(pid: int) -> int:
        """SIGKILL ``pid`` once some of its chunks are stored; the bucket's messages then."""
        nc, js = await natslog.connect(NATS_URL)
        try:
            objects = f"OBJ_{checkpoints.bucket(settings)}"
            while (await js.stream_info(objects)).state.messages < 2 + 8:  # old chunk + meta
                await asyncio.sleep(0.005)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return (await js.stream_info(objects)).state.messages
        finally:
            await nc.close()

    try:
        pid = os.fork()
        if pid == 0:  # as the worker's child does
            try:
                store.put(0, big)
            finally:
                os._exit(0)
        stored = asyncio.run(kill_midway(pid))
        assert 2 + 8 <= stored < 2 + 512  # killed with chunks stored, before the metadata
        assert asyncio.run(store.get(0)) == old  # the previous checkpoint, digest verified
        store.put(0, b"next checkpoint")
        assert asyncio.run(store.get(0)) == b"next checkpoint"
    finally:
        asyncio.run(checkpoints.delete_bucket(settings))


def test_a_worker_refuses_a_partition_that_does_not_exist(pair):
    _, scaled = pair
    env = {**os.environ, "RAPPORT_HOME": str(scaled.settings.home)}
    out = subprocess.run(
        [sys.executable, "-m", "rapport", "worker", "rules", "--partitions", "1,9"],
        env=env,
        cwd=scaled.settings.home,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert b"partitions are 0..5" in out.stderr


def test_a_republish_after_a_crash_is_deduplicated_by_jetstream(pair):
    _, scaled = pair
    feed(scaled, events(seed=1, persons=20, batches=1, per_batch=50)[0])

    async def count() -> int:
        nc, js = await natslog.connect(scaled.settings.nats_url)
        try:
            return (await js.stream_info(scaled.settings.nats_stream)).state.messages
        finally:
            await nc.close()

    first = asyncio.run(count())
    assert first == PARTITIONS  # per partition one NATS message: its events, then a tick
    wh = scaled.warehouse
    with wh.connect() as con:  # a publisher that died before its checkpoint
        wh.set_state(con, partitions.OFFSET_KEY, "0")
    assert partitions.publish_ready(scaled) == 50  # published again...
    assert asyncio.run(count()) == first  # ...and dropped by message id


# -- profiles and merges reach the workers --------------------------------------------------------
def run_workers(ws: Workspace, groups: list[list[int]], steps: list[Any]) -> None:
    """Start a worker per group, run ``steps`` (each a follower pass's input), wait until the
    workers have checkpointed everything, stop them."""
    procs = [start_worker(ws, parts) for parts in groups]
    try:
        for step in steps:
            step(ws)
        wait_caught_up(ws, procs)
    finally:
        stop(procs)


@pytest.fixture
def seeded(pair: tuple[Workspace, Workspace]) -> tuple[Workspace, Workspace]:
    """The pair with the demo's plan, the seed's tags, channel and route, the seed rule and a
    rule of a tag and an attribute (only them: the rules of ``RULES`` are paused)."""
    from rapport.db.tables import lead_rules
    from rapport.delivery.channels import ChannelSpec, create_channel
    from rapport.demo.load import load_plan
    from rapport.leads import routing
    from rapport.leads.seed import SEED_RULE, TAGS
    from rapport.tags.definitions import TagIn, create_tag

    for ws in pair:
        with ws.db.begin() as conn:
            conn.execute(lead_rules.update().values(status="paused"))
        load_plan(ws)
        for name in TAGS:
            definition = {"condition": {"kind": "did", "event": "x"}}
            create_tag(ws.db, TagIn(name=name, kind="rule", definition=definition))
        create_channel(ws.db, ChannelSpec(name="outbound_call", kind="call_list"))
        route = routing.RouteIn(name="outbound_call", target_kind="channel", target="outbound_call")
        routing.create_route(ws.db, route)
        rules.create_rule(ws.db, rules.RuleIn(**SEED_RULE, status="live"), None)
        rules.create_rule(ws.db, rules.RuleIn(**SHANGHAI, status="live"), None)
    return pair


SHANGHAI: dict[str, Any] = {
    "name": "shanghai_fridge",
    "lead_type": "fridge viewer in Shanghai",
    "trigger": 'event view_product where category = "fridge"',
    "conditions": 'has tag strong_purchasing_power and city = "Shanghai"',
    "cooldown": {"amount": 1, "unit": "minutes"},
}


def city(ws: Workspace, at: datetime, **cities: str) -> None:
    """Identify traits (anonymous id = city), then the profiles rebuilt from them."""
    from rapport.identity.survivorship import build_profiles

    send(
        ws,
        *(
            {
                "messageId": f"identify.{anon}.{at.isoformat()}",
                "type": "identify",
                "anonymousId": anon,
                "traits": {"city": name},
                "timestamp": at.isoformat(),
            }
            for anon, name in cities.items()
        ),
    )
    follow.one_pass(ws)
    build_profiles(ws)


def tag(ws: Workspace, persons: list[int]) -> None:
    """Give ``persons`` (only them) the seed's two tags, as a tag run would."""
    import pyarrow as pa

    from rapport.leads.seed import TAGS
    from rapport.tags import store as tag_store

    for name in TAGS:
        run_id = tag_store.start_run(ws.db, name)
        values = pa.table(
            {"person_key": pa.array(persons, pa.int64()), "value": ["yes"] * len(persons)}
        )
        tag_store.write_values(ws, name, run_id, values)


def track(anon: str, event: str, ts: datetime, **props: Any) -> dict[str, Any]:
    """A track message whose id is the same in both workspaces (leads cite event ids)."""
    return {
        "messageId": f"{anon}.{event}.{ts.isoformat()}",
        "type": "track",
        "event": event,
        "anonymousId": anon,
        "timestamp": ts.isoformat(),
        "properties": props,
    }


def fridge(anon: str, ts: datetime) -> dict[str, Any]:
    """The seed's view: a fridge of 5,999 for 75 s (no order follows)."""
    props = {"item_id": "F-1", "category": "fridge", "price": 5999, "duration_s": 75}
    return track(anon, "view_product", ts, **props)


def test_rules_read_tags_and_attributes_in_a_worker_and_later_changes(seeded):
    embedded, scaled = seeded
    minute, t1 = timedelta(minutes=1), T0 + timedelta(hours=2)
    logins = [track(a, "login", T0 - timedelta(days=1)) for a in ("a1", "a2", "a3")]
    keys: list[int] = []

    def people(ws: Workspace) -> None:
        feed(ws, logins)
        keys[:] = [person(ws, a) for a in ("a1", "a2", "a3")]
        tag(ws, keys[:2])  # a1, a2 are high-value; a3 is not
        city(ws, T0 - timedelta(hours=1), a1="Shanghai", a3="Beijing")

    def views(at: datetime) -> Any:
        def step(ws: Workspace) -> None:
            send(ws, *(fridge(a, at) for a in ("a1", "a2", "a3")))
            send(ws, track("a9", "login", at + 31 * minute))  # 30 minutes pass: they mature
            follow.one_pass(ws)

        return step

    def retag(ws: Workspace) -> None:
        tag(ws, [keys[0], keys[2]])  # a2 loses the tags, a3 gains them
        city(ws, T0 + timedelta(hours=1), a3="Shanghai")

    for step in (people, views(T0)):
        step(embedded)
    first = lead_rows(embedded)
    by_rule = {(r[1], r[2]) for r in first}
    assert sorted(by_rule) == [(4, keys[0]), (4, keys[1]), (5, keys[0])]  # each once
    retag(embedded)
    views(t1)(embedded)
    expected = lead_rows(embedded)
    # the seed: a1's cooldown (7 days) holds, a3 now fires, a2 no longer does; Shanghai: a3
    # moved there, a1 is still there
    later = sorted((r[1], r[2]) for r in set(expected) - set(first))
    assert later == [(4, keys[2]), (5, keys[0]), (5, keys[2])]

    run_workers(scaled, [[0, 1, 2], [3, 4, 5]], [people, views(T0), retag, views(t1)])
    assert lead_rows(scaled) == expected


def test_a_merge_across_partitions_completes_a_sequence_once_in_the_survivors_worker(pair):
    embedded, scaled = pair
    minute = timedelta(minutes=1)
    before = [track(a, "login", T0 - timedelta(days=1)) for a in ("a1", "b1")]
    merging = [
        {
            "messageId": f"identify.{anon}",
            "type": "identify",
            "userId": "u1",
            "anonymousId": anon,
            "timestamp": (T0 + n * minute).isoformat(),
        }
        for n, anon in ((1, "a1"), (2, "b1"))
    ]
    after = [
        track("a1", "add_to_cart", T0 + 5 * minute),  # completes b1's view, now the survivor's
        track("z9", "login", T0 + timedelta(days=1)),  # every absence matures
    ]

    def step(*msgs: dict[str, Any]) -> Any:
        def run(ws: Workspace) -> None:
            feed(ws, list(msgs))

        return run

    steps = [step(*before), step(track("b1", "view_product", T0, price=500)), step(*merging)]
    steps.append(step(*after))
    for s in steps:
        s(embedded)
    survivor = person(embedded, "a1")
    assert person(embedded, "b1") == survivor
    expected = lead_rows(embedded)
    view_then_cart = [r for r in expected if r[1] == 2]
    assert [r[2] for r in view_then_cart] == [survivor]  # once, for the survivor

    groups: list[list[int]] = []
    keys: list[int] = []

    def first(ws: Workspace) -> None:
        steps[0](ws)
        a, b = person(ws, "a1"), person(ws, "b1")
        assert a % PARTITIONS != b % PARTITIONS  # two partitions, two workers
        groups.extend([[a % PARTITIONS], [p for p in range(PARTITIONS) if p != a % PARTITIONS]])
        keys.extend([a, b])

    first(scaled)
    run_workers(scaled, groups, steps[1:])
    assert keys[0] == survivor
    assert lead_rows(scaled) == expected
    # the merged-away person's state is gone from its partition's checkpoint
    ckpt = worker.load_checkpoint(scaled.settings, keys[1] % PARTITIONS)
    assert ckpt is not None and keys[1] not in {p.person for p in ckpt.persons}


def test_profiles_and_merges_republished_after_a_crash_are_deduplicated(seeded):
    _, scaled = seeded
    wh, minute = scaled.warehouse, timedelta(minutes=1)
    feed(scaled, [track(a, "login", T0) for a in ("a1", "b1", "c1")])
    tag(scaled, [person(scaled, "a1"), person(scaled, "c1")])
    keys = (partitions.OFFSET_KEY, partitions.MERGE_KEY, partitions.ROUND_KEY)
    with wh.connect() as con:  # the publisher's checkpoint before the pass
        state = {k: wh.get_state(con, k) for k in keys}
        fps = con.table(partitions.FINGERPRINTS).to_pyarrow()
    merge = {"type": "identify", "userId": "u1", "timestamp": (T0 + minute).isoformat()}
    send(scaled, {**merge, "anonymousId": "a1"}, {**merge, "anonymousId": "b1"})
    send(scaled, fridge("a1", T0 + 2 * minute))
    follow.one_pass(scaled)  # publishes a merge, a profile change and events

    async def kinds() -> list[str]:
        nc, js = await natslog.connect(scaled.settings.nats_url)
        try:
            sub = await js.subscribe(f"{natslog.prefix(scaled.settings.nats_stream)}.*")
            out: list[str] = []
            while True:
                try:
                    msg = await sub.next_msg(timeout=1)
                except TimeoutError:
                    return out
                out += [type(m).__name__ for m in partitions.decode(msg.data)]
        finally:
            await nc.close()

    first = asyncio.run(kinds())
    assert {"Merge", "Drop", "Profile", "PersonEvent"} == set(first), first
    with wh.connect() as con:  # a publisher that died before its checkpoint
        for k, v in state.items():
            wh.set_state(con, k, v or "")
        con.create_table(partitions.FINGERPRINTS, fps, overwrite=True)
    partitions.forget()
    assert partitions.publish_ready(scaled) == 3  # two identifies and the view, again...
    assert asyncio.run(kinds()) == first  # ...and every message dropped by its id


def test_a_worker_skips_events_it_has_fed_when_a_batch_comes_again(pair):
    """A publisher that crashed may publish a chunk again cut into other NATS messages
    (JetStream then keeps both): the worker feeds each log offset once."""
    from types import SimpleNamespace

    _, scaled = pair
    part = worker.Partition(scaled, 0)
    part.start()
    t = datetime(2026, 11, 2, 9, tzinfo=UTC)
    evs = [
        partitions.PersonEvent(i, 6 * i, t + timedelta(seconds=i), "view_product",
                               f"e{i}", '{"price": 1}', None, t + timedelta(seconds=i))
        for i in range(1, 7)
    ]  # fmt: skip

    def msg(seq: int, batch: list[partitions.PersonEvent]) -> Any:
        meta = SimpleNamespace(sequence=SimpleNamespace(stream=seq))
        return SimpleNamespace(data=partitions.wire("s", {0: [("x", m) for m in batch]})[0][2],
                               metadata=meta)  # fmt: skip

    part.feed([msg(1, evs[:4])])
    part.feed([msg(2, evs[2:]), msg(3, evs)])  # offsets 3-4, then 1-6: seen already
    assert part.core.stats.events == 6
    assert part.offset == 6 and part.seq == 3
    assert [len(s.events) for s in part.core.states.values()] == [1] * 6


def test_the_cluster_profile_keeps_checkpoints_in_nats_unless_told_otherwise(tmp_path):
    pg = "postgresql+psycopg://postgres@127.0.0.1:5432/x"
    assert load_settings(home=tmp_path).checkpoint_store == "file"
    cluster = load_settings(home=tmp_path, profile="cluster", database_url=pg)
    store = checkpoints.open_store(cluster)
    assert isinstance(store, checkpoints.NatsStore)
    assert store.bucket == "RAPPORT_PERSONS_CHECKPOINTS"
    explicit = load_settings(
        home=tmp_path, profile="cluster", database_url=pg, checkpoint_store="file"
    )
    assert isinstance(checkpoints.open_store(explicit), checkpoints.FileStore)
    with pytest.raises(ValueError, match="one of file, nats"):
        checkpoints.open_store(load_settings(home=tmp_path, checkpoint_store="s3"))
