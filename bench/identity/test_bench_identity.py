"""Benchmark: identity graph rebuild on ~10 million links / ~3 million persons, and the
incremental resolver against that state.

Run: ``.venv/bin/pytest -m bench -s bench/identity`` (``PEOPLE=...`` to change the size,
``RUNS=...`` the repeats). Targets (issue 3, 2 cores): rebuild <= 60 s and <= 8 GB RSS; one
incremental record (2-4 nodes) median <= 1 ms.

The rebuild runs in a child process (this file run as a script) so its peak RSS is its own:
it loads the link arrays from .npy files, as ``rapport identity rebuild`` loads them from the
warehouse.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from rapport.identity.graph import Resolver, TypeRule, rebuild

PEOPLE = int(os.environ.get("PEOPLE", "2800000"))
RUNS = int(os.environ.get("RUNS", "3"))
INCREMENTAL = 10_000

RULES = [
    TypeRule(0, "member_id", 100, 1),
    TypeRule(1, "id_card", 90, 1),
    TypeRule(2, "mobile", 80, 2),
    TypeRule(3, "email", 70, 3),
    TypeRule(4, "device", 50, 5),
    TypeRule(5, "anonymous_id", 10, None, merge=False),
]
# P(0, 1, 2, ... values of the type) for one person
MULTIPLICITY = [
    [0.70, 0.30],
    [0.90, 0.10],
    [0.30, 0.65, 0.05],
    [0.70, 0.27, 0.03],
    [0.45, 0.42, 0.10, 0.03],
    [0.35, 0.55, 0.10],
]


def generate(people: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links (seq, node) and node types of a synthetic customer base.

    Each person gets a handful of values; one profile slice carries up to 4 of them, and
    Poisson(0.4) events carry 1-3 each. Noise (~1 % of persons): household devices shared by
    two persons, a few family mobiles, a test number and an emulator device id carried by
    thousands of persons, which makes a few components over their limits ("hard").
    Node ids are dense in first-seen order, as the warehouse assigns them.
    """
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.choice(len(p), size=people, p=p) for p in MULTIPLICITY])
    counts[5] += counts.sum(axis=0) == 0  # everybody has at least an anonymous id
    k = counts.sum(axis=0)
    owner = np.concatenate([np.repeat(np.arange(people), c) for c in counts])
    vtype = np.concatenate([np.full(c.sum(), t) for t, c in enumerate(counts)])
    order = np.lexsort((rng.random(len(owner)), owner))  # per person, in random order
    owner, vtype = owner[order], vtype[order]
    off = np.concatenate([[0], np.cumsum(k)[:-1]])

    rec_parts, val_parts = [], []
    # the profile slice of each person: its first (up to) 4 values
    pos = np.arange(len(owner)) - off[owner]
    sel = pos < 4
    rec_parts.append(owner[sel])
    val_parts.append(np.flatnonzero(sel))
    n_rec = people
    # events: 1-3 random values of the person (duplicates in a record happen, as in real data)
    ev_person = np.repeat(np.arange(people), rng.poisson(0.4, people))
    size = rng.choice([1, 2, 3], size=len(ev_person), p=[0.4, 0.4, 0.2])
    ev_of_link = np.repeat(np.arange(len(ev_person)), size)
    p_of_link = ev_person[ev_of_link]
    rec_parts.append(n_rec + ev_of_link)
    val_parts.append(off[p_of_link] + (rng.random(len(p_of_link)) * k[p_of_link]).astype(np.int64))
    n_rec += len(ev_person)

    n_values = len(owner)
    extra_types: list[int] = []

    def shared(value_ids: np.ndarray, persons: np.ndarray) -> None:
        """One event per person carrying a random value of that person and the shared value."""
        nonlocal n_rec
        recs = n_rec + np.arange(len(persons))
        mine = off[persons] + (rng.random(len(persons)) * k[persons]).astype(np.int64)
        rec_parts.append(np.concatenate([recs, recs]))
        val_parts.append(np.concatenate([mine, value_ids]))
        n_rec += len(persons)

    # household devices: a device value of one person, seen with another person's value
    devices = np.flatnonzero(vtype == 4)
    dev = rng.choice(devices, size=people // 125)  # ~0.8 % of persons
    shared(dev, rng.integers(0, people, len(dev)))
    # family mobiles: ~0.2 %
    mobiles = np.flatnonzero(vtype == 2)
    mob = rng.choice(mobiles, size=people // 500)
    shared(mob, rng.integers(0, people, len(mob)))
    # a test number and an emulator device id, each typed in by thousands of persons
    for type_code, n in ((2, 3000), (4, 1500)):
        extra_types.append(type_code)
        shared(np.full(n, n_values + len(extra_types) - 1), rng.integers(0, people, n))
    vtype = np.concatenate([vtype, np.array(extra_types, dtype=vtype.dtype)])

    rec = np.concatenate(rec_parts)
    val = np.concatenate(val_parts)
    seq = rng.permutation(n_rec)[rec]  # records arrive interleaved in time
    order = np.argsort(seq, kind="stable")
    seq, val = seq[order], val[order]
    uniq, first = np.unique(val, return_index=True)  # node ids in first-seen order
    node_of_value = np.empty(len(vtype), dtype=np.int64)
    by_first = np.argsort(first)
    node_of_value[uniq[by_first]] = np.arange(len(uniq))
    node_types = np.empty(len(uniq), dtype=np.int64)
    node_types[node_of_value[uniq]] = vtype[uniq]
    return seq.astype(np.int64), node_of_value[val], node_types


def merge_edges(seq: np.ndarray, node: np.ndarray, node_types: np.ndarray) -> np.ndarray:
    """Edges joining consecutive merging nodes of each record: the graph rebuild runs CC on."""
    merging = np.array([r.merge for r in RULES])[node_types[node]]
    s, n = seq[merging], node[merging]
    order = np.lexsort((n, s))
    s, n = s[order], n[order]
    same = (s[1:] == s[:-1]) & (n[1:] != n[:-1])
    return np.stack([n[:-1][same], n[1:][same]])


def _peak_rss_mb() -> float:
    """This process's own peak RSS. ru_maxrss of a child started by fork/vfork + exec also
    counts the parent's pages at the fork (Linux keeps the high-water mark across exec), so the
    child reads VmHWM, which belongs to its own address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rebuild_child(folder: Path) -> None:
    """In the child process: load the links, rebuild RUNS times, print timings as JSON."""
    seq, node, types = (np.load(folder / f"{name}.npy") for name in ("seq", "node", "types"))
    times, cpu = [], []
    for _ in range(RUNS):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = rebuild(RULES, types, seq, node)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    np.save(folder / "node_person.npy", result.node_person)
    persons = int(np.unique(result.node_person[result.node_person >= 0]).size)
    report = {
        "times": times,
        "cpu": cpu,
        "persons": persons,
        "hard": result.hard_components,
        "rejected": len(result.rejected),
        "max_rss_mb": _peak_rss_mb(),
    }
    print(json.dumps(report))


def _incremental_records(
    rng: np.random.Generator, node_person: np.ndarray, resolver: Resolver, node_types: np.ndarray
) -> tuple[list[list[int]], list[str]]:
    """10,000 typical new records: mostly known persons, some new values, some merges."""
    linked = np.flatnonzero(node_person >= 0)
    by_person = linked[np.argsort(node_person[linked], kind="stable")]
    person_sorted = node_person[by_person]
    records, kinds = [], []
    for _ in range(INCREMENTAL):
        n = int(rng.choice(linked))
        lo, hi = np.searchsorted(person_sorted, [node_person[n], node_person[n] + 1])
        same = by_person[lo:hi]
        nodes = [int(x) for x in rng.choice(same, size=min(len(same), int(rng.integers(2, 5))))]
        roll = rng.random()
        if roll < 0.2:  # a new anonymous id or device of a known person
            nodes.append(resolver.add_node(int(rng.choice([4, 5]))))
            kind = "new value"
        elif roll < 0.3:  # carries a value of another person: a merge (or a refusal)
            nodes.append(int(rng.choice(linked)))
            kind = "two persons"
        else:
            kind = "known person"
        if len(nodes) == 1:
            nodes.append(resolver.add_node(5))
        records.append(nodes[:4])
        kinds.append(kind)
    return records, kinds


@pytest.mark.bench
def test_identity_rebuild_and_incremental(tmp_path: Path) -> None:
    start = time.perf_counter()
    seq, node, types = generate(PEOPLE)
    print(
        f"\ngenerated {len(node):,} links, {len(np.unique(seq)):,} records, {len(types):,} nodes"
        f" in {time.perf_counter() - start:.1f}s"
    )
    for name, arr in (("seq", seq), ("node", node), ("types", types)):
        np.save(tmp_path / f"{name}.npy", arr)

    out = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, check=True
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    median = statistics.median(child["times"])
    runs = ", ".join(f"{t:.2f}" for t in child["times"])
    cpu = statistics.median(child["cpu"])
    print(
        f"rebuild: {child['persons']:,} persons, {child['hard']} hard components,"
        f" {child['rejected']:,} refused links"
    )
    print(
        f"rebuild: {runs} s -> median {median:.2f} s wall, {cpu:.2f} s CPU"
        f" ({median / 60:.1%} of the 60 s target)"
    )
    print(f"rebuild process peak RSS: {child['max_rss_mb']:,.0f} MB (target 8,192 MB)")

    edges = merge_edges(seq, node, types)
    cc_times, total_times, cc_cpu = [], [], []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        graph = csr_matrix(
            (np.ones(edges.shape[1], dtype=np.int8), (edges[0], edges[1])),
            shape=(len(types), len(types)),
        )
        t1, c1 = time.perf_counter(), time.process_time()
        connected_components(graph, directed=False)
        t2, c2 = time.perf_counter(), time.process_time()
        cc_times.append(t2 - t1)
        cc_cpu.append(c2 - c1)
        total_times.append(t2 - t0)
    cc, cc_total = statistics.median(cc_times), statistics.median(total_times)
    cc_c = statistics.median(cc_cpu)
    print(
        f"scipy connected_components on the same {edges.shape[1]:,} edges: {cc:.2f} s wall,"
        f" {cc_c:.2f} s CPU ({cc_total:.2f} s wall with building the CSR matrix);"
        f" rebuild / scipy = {median / cc:.1f}x wall, {cpu / cc_c:.1f}x CPU"
        f" ({median / cc_total:.1f}x vs CSR + CC)"
    )

    node_person = np.load(tmp_path / "node_person.npy")
    resolver = Resolver(RULES)
    t0, c0 = time.perf_counter(), time.process_time()
    resolver.ensure_nodes(types)
    resolver.load(node_person)
    print(
        f"Resolver ensure_nodes + load of {len(types):,} nodes: {time.perf_counter() - t0:.2f} s"
        f" wall, {time.process_time() - c0:.2f} s CPU"
    )
    assert np.array_equal(resolver.persons(), node_person)

    rng = np.random.default_rng(11)
    records, kinds = _incremental_records(rng, node_person, resolver, types)
    micros: dict[str, list[float]] = {}
    merges = rejected = 0
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
    for nodes, kind in zip(records, kinds, strict=True):
        t0 = clock()
        outcome = resolver.resolve(nodes)
        micros.setdefault(kind, []).append((clock() - t0) / 1000)
        merges += len(outcome.merges)
        rejected += len(outcome.rejected)
    cpu_each = (time.process_time() - cpu0) / len(records) * 1e6
    every = sorted(t for ts in micros.values() for t in ts)
    p50, p99 = statistics.median(every), every[int(len(every) * 0.99)]
    print(
        f"incremental: {len(every):,} records, {merges} merges, {rejected} refused:"
        f" median {p50:.1f} us, p99 {p99:.1f} us per record ({p50 / 1000:.1%} of the 1 ms target);"
        f" {cpu_each:.1f} us CPU per record on average, timer included"
    )
    for kind, ts in sorted(micros.items()):
        print(f"  {kind}: {len(ts):,} records, median {statistics.median(ts):.1f} us")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench process peak RSS (generator + scipy + loaded Resolver): {rss:,.0f} MB")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)")
    assert median <= 60 and child["max_rss_mb"] <= 8192 and p50 <= 1000


if __name__ == "__main__":
    _rebuild_child(Path(sys.argv[1]))
