"""The stream engine's cost per event: 20 live audiences over demo-like events.

    .venv/bin/python bench/stream/run.py            # EVENTS=200000 PERSONS=20000 RUNS=3

Events are written straight into a warehouse with log offsets and persons (stage 1 done), so
the number is stage 2 alone: reading the events, loading person states, judging the rules,
timers, and applying the changes (``change_members`` plus the system events to the log).
Each run starts the engine over from offset 0 with empty audiences; median of ``RUNS``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyroaring import BitMap

from rapport.conditions.model import (
    And,
    Compare,
    Condition,
    Did,
    Duration,
    Not,
    Op,
    Sequence,
    Step,
    Window,
)
from rapport.segments import audiences, live
from rapport.segments.store import members, write_members
from rapport.settings import load_settings
from rapport.stream import engine
from rapport.workspace import Workspace

EVENTS = int(os.environ.get("EVENTS", 200_000))
PERSONS = int(os.environ.get("PERSONS", 20_000))
RUNS = int(os.environ.get("RUNS", 3))
SEED = int(os.environ.get("SEED", 1))
END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 30
NAMES = ["view_product", "search", "login", "add_to_cart", "order_paid", "book_hotel"]
SHARE = [0.45, 0.17, 0.15, 0.12, 0.06, 0.05]
CATEGORIES = ["fridge", "tv", "phone", "laptop", "washer", "camera"]


def last(n: int, unit: str = "days") -> Window:
    return Window(last=Duration(amount=n, unit=unit))


def did(event: str, n: int = 1, window: Window | None = None, **kw: Any) -> Did:
    return Did(event=event, threshold=n, window=window or Window(), **kw)


def within(n: int, unit: str = "minutes") -> Duration:
    return Duration(amount=n, unit=unit)


def seq(*names: str, w: Duration, then_not: str | None = None, **kw: Any) -> Sequence:
    steps = [Step(event=n) for n in names]
    nope = Step(event=then_not) if then_not else None
    return Sequence(steps=steps, within=w, then_not=nope, **kw)


AUDIENCES: dict[str, Condition] = {
    "cart_1d": did("add_to_cart", window=last(1)),
    "cart_3x_7d": did("add_to_cart", 3, last(7)),
    "paid_30d": did("order_paid", window=last(30)),
    "fridge_7d": did(
        "view_product", window=last(7), where=[Compare(field="category", op=Op.eq, value="fridge")]
    ),
    "pricey_3d": did(
        "view_product", window=last(3), where=[Compare(field="price", op=Op.ge, value=5000)]
    ),
    "spent_1000_30d": Did(
        event="order_paid", agg="sum", property="amount", threshold=1000, window=last(30)
    ),
    "view_then_cart": seq("view_product", "add_to_cart", w=within(30)),
    "cart_no_pay_1h": seq("add_to_cart", w=within(60), then_not="order_paid", window=last(1)),
    "search_view_cart": seq("search", "view_product", "add_to_cart", w=within(60)),
    "login_no_pay": And(
        all=[did("login", window=last(1)), Not(cond=did("order_paid", window=last(14)))]
    ),
    "hotel_30d": did("book_hotel", window=last(30)),
    "hotel_2x_30d": did("book_hotel", 2, last(30)),
    "search_5x_1d": did("search", 5, last(1)),
    "login_7d": did("login", window=last(7)),
    "views_10x_1d": did("view_product", 10, last(1)),
    "pricey_cart_2d": did(
        "add_to_cart", window=last(2), where=[Compare(field="price", op=Op.gt, value=1000)]
    ),
    "categories_3_7d": Did(
        event="view_product", agg="distinct", property="category", threshold=3, window=last(7)
    ),
    "avg_price_7d": Did(
        event="view_product", agg="avg", property="price", op=Op.gt, threshold=3000, window=last(7)
    ),
    "hotel_then_pay": seq("book_hotel", "order_paid", w=within(2, "hours")),
    "paid_no_login_1d": seq("order_paid", w=within(1, "days"), then_not="login", window=last(3)),
}


def events_table(rng: np.random.Generator) -> pa.Table:
    """Demo-like events in arrival order: log-normal activity per person, 5 % arriving up
    to an hour late."""
    weight = rng.lognormal(0, 1.2, PERSONS)
    persons = rng.choice(PERSONS, EVENTS, p=weight / weight.sum())
    names = rng.choice(len(NAMES), EVENTS, p=SHARE)
    start = END - timedelta(days=DAYS)
    secs = np.sort(rng.uniform(0, DAYS * 86400, EVENTS))
    late = rng.random(EVENTS) < 0.05
    secs = np.where(late, np.maximum(secs - rng.uniform(0, 3600, EVENTS), 0), secs)
    ts = [start + timedelta(seconds=float(s)) for s in secs]
    props = []
    for i in range(EVENTS):
        name = NAMES[names[i]]
        p: dict[str, Any] = {}
        if name in ("view_product", "add_to_cart", "book_hotel"):
            p = {"item_id": f"i{rng.integers(2000)}", "price": int(rng.integers(50, 9000))}
            p["category"] = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        elif name == "order_paid":
            p = {"amount": round(float(rng.lognormal(5.5, 1)), 2)}
        elif name == "search":
            p = {"keyword": f"k{rng.integers(500)}"}
        props.append(json.dumps(p))
    offsets = np.arange(1, EVENTS + 1)
    return pa.table(
        {
            "event_id": pa.array([f"e{i}" for i in offsets]),
            "source": pa.repeat(pa.scalar("web"), EVENTS),
            "type": pa.repeat(pa.scalar("track"), EVENTS),
            "event": pa.array([NAMES[n] for n in names]),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "day": pa.array([t.date() for t in ts], pa.date32()),
            "received_at": pa.array(ts, pa.timestamp("us", "UTC")),
            "log_offset": pa.array(offsets, pa.int64()),
            "person_key": pa.array(persons, pa.int64()),
            "properties": pa.array(props),
        }
    )


def build(home: Path) -> Workspace:
    ws = Workspace(load_settings(home=home, stream_idle_seconds=0))
    ws.init()
    table = events_table(np.random.default_rng(SEED))
    with ws.warehouse.connect() as con:
        raw = con.con
        raw.register("_bench_events", table)
        raw.execute(
            "INSERT INTO events BY NAME SELECT * REPLACE (properties::JSON AS properties)"
            " FROM _bench_events"
        )
        raw.unregister("_bench_events")
        ws.warehouse.set_state(con, "log_offset", str(EVENTS))
    for name, cond in AUDIENCES.items():
        audiences.create_audience(ws, name, cond)
    return ws


class TimedProvider(live.AudienceProvider):
    """The audience provider, timing ``apply`` (writes and system events; CPU seconds)."""

    spent = 0.0

    def apply(self, ws: Workspace, outputs: list[Any]) -> None:
        started = time.process_time()
        super().apply(ws, outputs)
        TimedProvider.spent += time.process_time() - started


def reset(ws: Workspace) -> None:
    for name in AUDIENCES:
        write_members(ws, name, {None: BitMap()})
    with ws.warehouse.connect() as con:
        con.raw_sql(
            "DELETE FROM warehouse_state WHERE key IN (?, ?, ?)",
            parameters=[engine.OFFSET_KEY, engine.WATERMARK_KEY, engine.MERGE_KEY],
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rapport-bench-stream-") as tmp:
        started = time.perf_counter()
        ws = build(Path(tmp) / "home")
        print(
            f"data: {EVENTS} events, {PERSONS} persons, {len(AUDIENCES)} audiences "
            f"({time.perf_counter() - started:.1f} s to build)"
        )
        results: list[float] = []
        cpus: list[float] = []
        for run in range(RUNS):
            reset(ws)
            TimedProvider.spent = 0.0
            eng = engine.Engine(ws, providers=[TimedProvider()])
            started, cpu = time.perf_counter(), time.process_time()
            stats = eng.run_pass()
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu
            cpus.append(cpu)
            sizes = {n: len(members(ws, n)) for n in AUDIENCES}
            results.append(wall)
            print(
                f"run {run + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, "
                f"{cpu / EVENTS * 1e6:.1f} µs CPU/event "
                f"(apply {TimedProvider.spent:.2f} s); judged {stats.judged}, "
                f"timers {stats.timers}, changes {stats.outputs}, states loaded {stats.loaded}"
            )
        print("sizes:", sizes)
        median, cpu = statistics.median(results), statistics.median(cpus)
        print(
            f"median: {median:.2f} s wall = {median / EVENTS * 1e6:.1f} µs per event; "
            f"{cpu:.2f} s CPU = {cpu / EVENTS * 1e6:.1f} µs per event (the machine is shared)"
        )
        ws.close()


if __name__ == "__main__":
    sys.exit(main())
