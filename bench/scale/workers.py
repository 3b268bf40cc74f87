"""Scaling out over processes (issue 7): lead-rule and ingest throughput with 1, 2 and 3
worker processes, and the scaling factor against one.

    .venv/bin/python bench/scale/workers.py rules    # EVENTS=100000 PERSONS=20000 RUNS=3
    .venv/bin/python bench/scale/workers.py ingest   # INGEST_EVENTS=120000 SENDERS=6 RUNS=3
    WORKERS=1,2 ...                                  # the process counts to run
    PAUSE=0 ... rules                                # no SIGSTOP: clock from the last ready

``rules``: the stream bench's events and 20 lead rules (``bench/stream/core.py``, ``RARE=1``
by default: ~1 % of events lead) are published once to a JetStream stream of 6 partitions
(``stream.partitions.wire``: messages of 256 events, by person). Then, for each count, fresh
``rapport worker rules`` processes split the partitions evenly over a fresh PostgreSQL
metadata database (a copy of a template with the rules); each is paused (SIGSTOP) as soon as
it has opened its consumers, and the clock starts when all are resumed, so the interpreters'
start-up is not timed. The clock stops when every partition's consumer has delivered its last
message and the leads table stops growing. Events/s counts what was left to deliver at the
start. The lead set must be the same for every count.

``ingest``: ``rapport serve --role collector`` processes (1, 2, 3) on free ports, the event
log on NATS (``log_backend = "nats"``) and metadata on PostgreSQL, as in
``tests/test_cluster.py``; ``SENDERS`` sender processes (``bench/ingest/loadgen.py``'s bodies
and keep-alive connections), spread round-robin over the collectors, build their bodies, then
all start together. Events/s = events answered ``accepted`` / (last sender's end − first
sender's start); the log must hold exactly the accepted events.

Every process is started in its own session: its own scheduling group under the kernel's
autogroup, as separate services would be (in one session, N processes share one group's CPU
on a busy machine, and more processes get no more CPU).

Both need NATS (``RAPPORT_NATS_URL``, default ``nats://127.0.0.1:4222``) and PostgreSQL
(``RAPPORT_BENCH_PG``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

HERE = Path(__file__).parent
EVENTS = int(os.environ.get("EVENTS", 100_000))
PERSONS = int(os.environ.get("PERSONS", 20_000))
INGEST_EVENTS = int(os.environ.get("INGEST_EVENTS", 120_000))
SENDERS = int(os.environ.get("SENDERS", 6))
CONNECTIONS = int(os.environ.get("CONNECTIONS", 4))
RUNS = int(os.environ.get("RUNS", 3))
COUNTS = [int(n) for n in os.environ.get("WORKERS", "1,2,3").split(",")]
PARTITIONS = 6
#: PAUSE=0: do not pause the workers once ready (the clock starts when the last is ready;
#: what the others did before counts as done already)
PAUSE = os.environ.get("PAUSE", "1") == "1"
NATS_URL = os.environ.get("RAPPORT_NATS_URL", "nats://127.0.0.1:4222")
PG_URL = os.environ.get("RAPPORT_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: seconds for processes to start and for a run to finish (the machine may be busy)
PATIENCE = 300
#: seconds without a new lead, every partition delivered, before a rules run is over
STABLE = 1.0
#: seconds between checks of a rules run (6 consumer infos and a count: the checks share the
#: cores with the workers, so not too often)
POLL = 0.25


def _load(name: str, path: Path) -> Any:
    """A bench script as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- shared -------------------------------------------------------------------------------------
def _settings_file(home: Path, **values: Any) -> None:
    home.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    (home / "rapport.toml").write_text("[rapport]\n" + "\n".join(lines) + "\n")


@contextmanager
def _database(name: str, template: str | None = None) -> Iterator[str]:
    """A PostgreSQL database for the run (a copy of ``template`` if given), dropped after."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(
            text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        )
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _spawn(home: Path, *args: str, stderr: Any = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "rapport", *args],
        env={**os.environ, "RAPPORT_HOME": str(home)},
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        start_new_session=True,  # its own scheduling group, as a separate service would be
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _cpu(pid: int) -> float:
    """CPU seconds of a process (user + system) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _nats_server_cpu() -> float:
    """CPU seconds of the local nats-server of ``NATS_URL`` (found by its port; 0 when it
    is not a local process)."""
    port = str(urllib.parse.urlsplit(NATS_URL).port or 4222)
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            args = (comm.parent / "cmdline").read_bytes().split(b"\0")
            if comm.read_text().strip() == "nats-server" and port.encode() in args:
                return _cpu(int(comm.parent.name))
        except (OSError, ValueError):
            continue
    return 0.0


def _split(count: int) -> list[list[int]]:
    """The partitions over ``count`` workers, evenly (6 over 1, 2, 3)."""
    return [list(range(PARTITIONS))[i::count] for i in range(count)]


def _summary(kind: str, unit: str, results: dict[int, list[float]], extra: str) -> list[str]:
    base = statistics.median(results[COUNTS[0]])
    lines = []
    for n, runs in results.items():
        med = statistics.median(runs)
        lines.append(
            f"{kind}: {n} process{'es' if n > 1 else ''}: median {med:,.0f} {unit} "
            f"(runs {' / '.join(f'{r:,.0f}' for r in runs)}); "
            f"scaling {med / base:.2f}x vs {COUNTS[0]}"
        )
    lines.append(extra)
    return lines


# -- rules --------------------------------------------------------------------------------------
def _publish_events(settings: Any) -> tuple[Any, dict[int, list[int]]]:
    """The stream bench's events, partitioned by person, published once; the stream bench
    (its rules) and, per partition, the number of events of each NATS message in order."""
    os.environ.setdefault("RARE", "1")
    stream_bench = _load("stream_bench", HERE.parent / "stream" / "core.py")
    stream_bench.EVENTS, stream_bench.PERSONS = EVENTS, PERSONS
    from rapport.log import nats as natslog
    from rapport.stream import partitions

    parts: dict[int, list[tuple[str, Any]]] = {}
    for raw in stream_bench.messages(1):
        for e in partitions.decode(raw):
            parts.setdefault(natslog.partition_of(e.person, PARTITIONS), []).append(
                (f"o{e.offset}", e)
            )
    sizes = {
        p: [
            len(msgs[i : i + partitions.WIRE_BATCH])
            for i in range(0, len(msgs), partitions.WIRE_BATCH)
        ]
        for p, msgs in parts.items()
    }

    async def go() -> None:
        nc, js = await natslog.connect(settings.nats_url)
        try:
            await natslog.ensure_stream(js, settings)
            await natslog.publish(js, partitions.wire(settings.nats_stream, parts))
        finally:
            await nc.close()

    asyncio.run(go())
    return stream_bench, sizes


async def _pending(js: Any, stream: str) -> dict[int, int]:
    """Messages each partition's consumer has yet to deliver."""
    from rapport.log import nats as natslog

    out = {}
    for p in range(PARTITIONS):
        info = await js.consumer_info(stream, natslog.durable(stream, p))
        out[p] = int(info.num_pending or 0)
    return out


def _ready_then_pause(proc: subprocess.Popen[bytes], ready: threading.Event, log: Path) -> None:
    """Read the worker's log; pause it (SIGSTOP) when its consumers are open."""
    assert proc.stderr is not None
    with log.open("wb") as out:
        for line in proc.stderr:
            if not ready.is_set() and b"from sequences" in line:
                if PAUSE:
                    proc.send_signal(signal.SIGSTOP)
                ready.set()
            out.write(line)


def _rules_run(home: Path, db_url: str, count: int, sizes: dict[int, list[int]]) -> dict[str, Any]:
    from rapport.db.tables import leads
    from rapport.settings import load_settings

    settings = load_settings(home=home)
    procs, threads, readies = [], [], []
    try:
        for i, parts in enumerate(_split(count)):
            proc = _spawn(
                home, "worker", "rules", "--partitions", ",".join(map(str, parts)),
                stderr=subprocess.PIPE,
            )  # fmt: skip
            ready = threading.Event()
            t = threading.Thread(
                target=_ready_then_pause, args=(proc, ready, home / f"worker-{i}.log"), daemon=True
            )
            t.start()
            procs.append(proc)
            threads.append(t)
            readies.append(ready)
        deadline = time.monotonic() + PATIENCE
        for proc, ready in zip(procs, readies, strict=True):
            while not ready.wait(0.2):
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker died: see {home}/worker-*.log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the workers did not start in {PATIENCE} s")
        engine = create_engine(db_url)
        seconds, left, cpu, loads = asyncio.run(_timed(settings, procs, engine, sizes, home))
    finally:
        _stop(procs)
    with engine.connect() as conn:  # after the workers stopped: every lead is committed
        rows = conn.execute(select(leads.c.dedupe_key, leads.c.rule_id, leads.c.person_key))
        made = {tuple(r) for r in rows}
    engine.dispose()
    return {
        "events": left,
        "seconds": seconds,
        "events_per_s": left / seconds,
        "worker_cpu_s": cpu,
        "load": loads,
        "leads": made,
    }


async def _timed(
    settings: Any,
    procs: list[subprocess.Popen[bytes]],
    engine: Any,
    sizes: dict[int, list[int]],
    home: Path,
) -> tuple[float, int, float, tuple[float, float]]:
    """Resume the paused workers; the seconds until every partition is delivered and the
    leads table has stopped growing (``STABLE`` seconds unchanged), the events that were
    left to deliver, the workers' CPU seconds and the load average before and after."""
    from rapport.db.tables import leads
    from rapport.log import nats as natslog

    stream = settings.nats_stream
    nc, js = await natslog.connect(settings.nats_url)
    try:
        pending = await _pending(js, stream)
        left = sum(sum(sizes[p][len(sizes[p]) - n :]) if n else 0 for p, n in pending.items())
        cpu0 = sum(_cpu(p.pid) for p in procs)
        load0 = os.getloadavg()[0]
        count_leads = select(func.count()).select_from(leads)
        with engine.connect() as conn:
            started = time.perf_counter()
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
            last, changed, drained = -1, started, 0.0
            while True:
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker died: see {home}/worker-*.log")
                now = time.perf_counter()
                if now - started > PATIENCE:
                    raise RuntimeError("the workers did not finish")
                n = conn.execute(count_leads).scalar_one()
                conn.rollback()
                if n != last:
                    last, changed = n, now
                if any((await _pending(js, stream)).values()):
                    drained = 0.0
                elif not drained:
                    drained = now
                if drained and now - max(drained, changed) >= STABLE:
                    break
                await asyncio.sleep(POLL)
            done = max(drained, changed)
        cpu = sum(_cpu(p.pid) for p in procs) - cpu0
        return done - started, left, cpu, (load0, os.getloadavg()[0])
    finally:
        await nc.close()


def rules() -> list[str]:
    from rapport import settings as settings_mod
    from rapport.leads import rules as rules_mod
    from rapport.log import nats as natslog
    from rapport.workspace import Workspace

    tag = uuid.uuid4().hex[:8]
    stream = f"RAPPORT_BENCH_SCALE_{tag.upper()}"
    values = {
        "nats_url": NATS_URL,
        "stream_backend": "nats",
        "nats_stream": stream,
        "stream_partitions": PARTITIONS,
        "stream_idle_seconds": 0,
    }
    results: dict[int, list[float]] = {n: [] for n in COUNTS}
    loads: list[float] = []
    cpus: dict[int, list[float]] = {n: [] for n in COUNTS}
    expected: set[Any] | None = None
    with tempfile.TemporaryDirectory(prefix="rapport-bench-scale-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        settings = settings_mod.load_settings(home=root / "publish", **values)
        stream_bench, sizes = _publish_events(settings)
        print(
            f"{EVENTS:,} events of {PERSONS:,} persons in {PARTITIONS} partitions, "
            f"{sum(len(s) for s in sizes.values()):,} NATS messages, published in "
            f"{time.perf_counter() - t0:.1f} s; 20 lead rules (RARE={os.environ['RARE']})"
        )
        template = f"rapport_bench_scale_{tag}"
        try:
            with _database(template) as url:
                ws = Workspace(settings_mod.load_settings(home=root / "template", database_url=url))
                ws.init()
                for i, trigger in enumerate(stream_bench.trigger_texts(), 1):
                    rules_mod.create_rule(
                        ws.db,
                        rules_mod.RuleIn(
                            name=f"r{i}", lead_type=f"type {i}", trigger=trigger,
                            cooldown={"amount": 1, "unit": "hours"}, status="live",
                        ),
                        None,
                    )  # fmt: skip
                ws.close()
                for run in range(RUNS):
                    for n in COUNTS:
                        with _database(f"{template}_{n}_{run}", template) as db_url:
                            home = root / f"w{n}-{run}"
                            _settings_file(home, database_url=db_url, **values)
                            out = _rules_run(home, db_url, n, sizes)
                        if expected is None:
                            expected = out["leads"]
                        same = out["leads"] == expected
                        assert same, (
                            f"{n} workers made {len(out['leads'])} leads, "
                            f"{len(expected)} expected; differ: {len(out['leads'] ^ expected)}"
                        )
                        results[n].append(out["events_per_s"])
                        cpus[n].append(out["worker_cpu_s"])
                        loads.extend(out["load"])
                        print(
                            f"run {run + 1}, {n} worker(s): {out['events']:,} events in "
                            f"{out['seconds']:.2f} s = {out['events_per_s']:,.0f} events/s; "
                            f"{len(out['leads']):,} leads (same set: {same}); worker CPU "
                            f"{out['worker_cpu_s']:.1f} s = "
                            f"{out['worker_cpu_s'] / out['events'] * 1e6:.1f} µs/event; "
                            f"load {out['load'][0]:.1f} -> "
                            f"{out['load'][1]:.1f}",
                            flush=True,
                        )
        finally:
            asyncio.run(natslog.delete_stream(settings))
    assert expected is not None
    return _summary(
        "rules",
        "events/s",
        results,
        f"{len(expected):,} leads in every run; worker CPU per run (median): "
        + ", ".join(f"{n}: {statistics.median(c):.1f} s" for n, c in cpus.items())
        + f"; load average {min(loads):.1f}-{max(loads):.1f} (2 cores)",
    )


# -- ingest -------------------------------------------------------------------------------------
def sender(url: str, key: str, events: int, connections: int) -> None:
    """A sender process: build the bodies, say ``ready``, wait for a line on stdin, send;
    print the result with wall-clock start and end."""
    loadgen = _load("loadgen", HERE.parent / "ingest" / "loadgen.py")
    bodies = loadgen.build_bodies(events, 500)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    result = loadgen.run(url, key, bodies, connections)
    result.update(start=start, end=time.time())
    print(json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(ports: list[int], procs: list[subprocess.Popen[bytes]], home: Path) -> None:
    deadline = time.monotonic() + PATIENCE
    for port in ports:
        while True:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a collector died: see {home}/collector-*.log")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the collectors did not start")
            time.sleep(0.2)


def _ingest_run(ports: list[int], key: str) -> dict[str, Any]:
    per = INGEST_EVENTS // SENDERS
    senders = [
        subprocess.Popen(
            [sys.executable, __file__, "send", f"http://127.0.0.1:{ports[i % len(ports)]}", key,
             str(per), str(CONNECTIONS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        for i in range(SENDERS)
    ]  # fmt: skip
    try:
        for s in senders:
            assert s.stdout is not None and s.stdout.readline().strip() == "ready"
        load0 = os.getloadavg()[0]
        for s in senders:
            assert s.stdin is not None
            s.stdin.write("go\n")
            s.stdin.flush()
        outs = []
        for s in senders:
            out, _ = s.communicate(timeout=PATIENCE)
            if s.returncode != 0:
                raise RuntimeError(f"a sender failed ({s.returncode})")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for s in senders:
            if s.poll() is None:
                s.kill()
    accepted = sum(o["accepted"] for o in outs)
    seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return {
        "accepted": accepted,
        "seconds": seconds,
        "events_per_s": accepted / seconds,
        "p99_ms": max(o["p99_ms"] for o in outs),
        "retries": sum(o["retries_503"] for o in outs),
        "client_us": statistics.mean(o["client_cpu_us_per_event"] for o in outs),
        "load": (load0, os.getloadavg()[0]),
    }


def ingest() -> list[str]:
    from rapport.ingest.sources import create_source
    from rapport.settings import load_settings
    from rapport.workspace import Workspace

    tag = uuid.uuid4().hex[:8]
    results: dict[int, list[float]] = {n: [] for n in COUNTS}
    loads: list[float] = []
    per = INGEST_EVENTS // SENDERS
    with (
        tempfile.TemporaryDirectory(prefix="rapport-bench-ingest-") as tmp,
        _database(f"rapport_bench_ingest_{tag}") as db_url,
    ):
        home = Path(tmp) / "home"
        _settings_file(
            home,
            database_url=db_url,
            log_backend="nats",
            nats_url=NATS_URL,
            nats_log_stream=f"RAPPORT_BENCH_LOG_{tag.upper()}",
            collector_rate_limit=0,  # capacity, not the per-write-key limit (5,000/s default)
        )
        ws = Workspace(load_settings(home=home))
        ws.init()
        key = str(create_source(ws.db, "bench")["write_key"])
        total = 0
        try:
            print(
                f"{SENDERS} senders x {per:,} events ({CONNECTIONS} connections each, batches "
                f"of 500 view_product events), round-robin over the collectors"
            )
            for run in range(RUNS):
                for n in COUNTS:
                    ports = [_free_port() for _ in range(n)]
                    procs = [
                        _spawn(home, "serve", "--role", "collector", "--port", str(p),
                               stderr=(home / f"collector-{p}.log").open("wb"))
                        for p in ports
                    ]  # fmt: skip
                    try:
                        _healthy(ports, procs, home)
                        cpu0, nats0 = [_cpu(p.pid) for p in procs], _nats_server_cpu()
                        out = _ingest_run(ports, key)
                        cpu = sum(_cpu(p.pid) for p in procs) - sum(cpu0)
                        nats_cpu = _nats_server_cpu() - nats0
                    finally:
                        _stop(procs)
                    total += out["accepted"]
                    stored = ws.log.count()
                    assert out["accepted"] == SENDERS * per and stored == total, (out, stored)
                    results[n].append(out["events_per_s"])
                    loads.extend(out["load"])
                    print(
                        f"run {run + 1}, {n} collector(s): {out['accepted']:,} accepted in "
                        f"{out['seconds']:.2f} s = {out['events_per_s']:,.0f} events/s; p99 "
                        f"{out['p99_ms']:.0f} ms, {out['retries']} retries after 503; "
                        f"CPU per event: collectors {cpu / out['accepted'] * 1e6:.1f} µs, "
                        f"nats-server {nats_cpu / out['accepted'] * 1e6:.1f} µs, senders "
                        f"{out['client_us']:.1f} µs; log holds "
                        f"{stored:,}; load {out['load'][0]:.1f} -> {out['load'][1]:.1f}",
                        flush=True,
                    )
        finally:
            ws.close()
            asyncio.run(_drop_log(f"RAPPORT_BENCH_LOG_{tag.upper()}"))
    return _summary(
        "ingest",
        "events/s acknowledged",
        results,
        f"load average {min(loads):.1f}-{max(loads):.1f} (2 cores)",
    )


async def _drop_log(name: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(name)
    except NotFoundError:
        pass
    finally:
        await nc.close()


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "rules"
    if what == "send":
        sender(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    lines = rules() if what == "rules" else ingest()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
