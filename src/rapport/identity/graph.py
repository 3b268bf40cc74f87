"""The identity graph core: the greedy resolution rule of docs/identity.md, twice.

`Resolver` applies it one record at a time over an in-memory union-find (the incremental path);
`rebuild` gives the same persons for a whole link log at once: connected components with scipy,
and the greedy replay only for the few components whose full union breaks a limit. Both are pure
(no database): callers load node types and links, and store what comes back.

State kept per node is three flat slots (parent pointer, type code, type counts of the person it
roots), so millions of nodes fit in a few hundred MB. A person's counts of limited types are
packed in one small Python int (a few bits per type), so a union's limit check is one add and one
mask; singletons share a constant, so only persons with several nodes own a count.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Outcome", "RebuildResult", "Resolver", "TypeRule", "rebuild"]

_NODE_BITS = 40  # node ids inside the resolver's per-record sort key
_NODE_MASK = (1 << _NODE_BITS) - 1


@dataclass(frozen=True, slots=True)
class TypeRule:
    """One identifier type as the graph sees it (the rest lives in `identifier_types`)."""

    index: int  # position in the rules list == the type code stored per node
    name: str
    priority: int  # higher first
    limit: int | None  # max distinct values of this type per person; None = no limit
    merge: bool = True  # False: identifies a person but never merges two


@dataclass(slots=True)
class Outcome:
    """What resolving one record did (the caller turns it into history rows)."""

    person: int | None  # the record's person (None: every node blocked)
    merges: list[tuple[int, int, int]]  # (survivor, absorbed, via_node), in order
    rejected: list[tuple[int, int, str]]  # (node, node's person, reason e.g. "limit:mobile")
    blocked: list[int]  # nodes skipped because blocked


@dataclass
class RebuildResult:
    """Persons recomputed from the whole link log."""

    node_person: np.ndarray  # int64 per node id, -1 = unlinked/blocked
    record_person: tuple[np.ndarray, np.ndarray]  # (unique seqs ascending, person per seq; -1)
    rejected: list[tuple[int, int, str]]  # (seq, node, reason) of refused links, in seq order
    hard_components: int  # how many components needed the greedy replay


class _Plan:
    """Per-type tables derived once from the rules, shared by both paths so they cannot drift."""

    def __init__(self, rules: Sequence[TypeRule]) -> None:
        rules = list(rules)
        if not 0 < len(rules) <= 256:
            raise ValueError("between 1 and 256 identifier types are supported")
        for i, rule in enumerate(rules):
            if rule.index != i:
                raise ValueError(f"rule {rule.name!r} has index {rule.index}, expected {i}")
            if rule.limit is not None and rule.limit < 0:
                raise ValueError(f"rule {rule.name!r}: limit must be >= 0")
        self.rules = rules
        # order inside a record: merging types first, then priority high -> low, then node id
        order = sorted({(not r.merge, -r.priority) for r in rules})
        self.rank = [order.index((not r.merge, -r.priority)) for r in rules]
        self.merging = [r.merge for r in rules]
        # limited types, highest priority first: that is also the order a reason is looked for
        self.limited = sorted(
            (r for r in rules if r.merge and r.limit is not None),
            key=lambda r: (-r.priority, r.index),
        )
        self.limits = [r.limit or 0 for r in self.limited]  # (all set: the list is filtered)
        # Packed counts: one bit field per limited type. A stored count never exceeds limit + 1
        # (a singleton of a type with limit 0; `load` clamps), so a field of w bits with
        # G = 2**(w-1) >= limit + 2 holds count_a + count_b + bias, bias = G - 1 - limit,
        # without a carry, and its top bit G is set exactly when count_a + count_b > limit.
        self.shifts: list[int] = []
        self.widths: list[int] = []
        shift = 0
        for lim in self.limits:
            width = (lim + 1).bit_length() + 1
            self.shifts.append(shift)
            self.widths.append(width)
            shift += width
        self.bits = shift
        field_of = {r.index: k for k, r in enumerate(self.limited)}
        self.single = [
            1 << self.shifts[field_of[r.index]] if r.index in field_of else 0 for r in rules
        ]
        tops = [1 << (w - 1) for w in self.widths]
        self.bias = sum((tops[k] - 1 - lim) << self.shifts[k] for k, lim in enumerate(self.limits))
        self.guard = sum(top << sh for top, sh in zip(tops, self.shifts, strict=True))

    def reason(self, packed: int) -> str:
        """Name the highest-priority type over its limit (only called on a refusal)."""
        for k, rule in enumerate(self.limited):
            if (packed >> self.shifts[k]) & ((1 << self.widths[k]) - 1) > self.limits[k]:
                return f"limit:{rule.name}"
        raise AssertionError("no limit exceeded")  # pragma: no cover

    def pack(self, counts: np.ndarray) -> np.ndarray | list[int]:
        """Packed counts from a (persons x limited types) count matrix, clamped to limit + 1:
        int64 when the fields fit in 62 bits, else a list of Python ints (rare)."""
        clamped = np.minimum(counts, np.array(self.limits, dtype=np.int64) + 1)
        if self.bits <= 62:
            packed: np.ndarray = (clamped << np.array(self.shifts, dtype=np.int64)).sum(axis=1)
            return packed
        out = [0] * len(clamped)
        for k, sh in enumerate(self.shifts):
            out = [a + (int(c) << sh) for a, c in zip(out, clamped[:, k], strict=True)]
        return out


class Resolver:
    """Incremental greedy resolution over an in-memory union-find.

    A person's id is its smallest merging node (a person started by a non-merging node holds only
    non-merging nodes, and its id is that node), so a union keeps the smaller root and attaching
    a non-merging node never renames a person.
    """

    __slots__ = ("_plan", "_key", "_parent", "_types", "_counts")

    def __init__(self, rules: Sequence[TypeRule]) -> None:
        self._plan = _Plan(rules)
        self._key = [rank << _NODE_BITS for rank in self._plan.rank]
        self._parent: list[int] = []  # -1 unlinked, else parent node (roots point to themselves)
        self._types = bytearray()  # type code per node
        # per root: packed counts of limited types; -1 (a cached small int) for other nodes
        self._counts: list[int] = []

    @property
    def node_count(self) -> int:
        return len(self._parent)

    def add_node(self, type_index: int) -> int:
        """Register a new identifier value; returns its dense id."""
        if not 0 <= type_index < len(self._plan.rules):
            raise ValueError(f"unknown type {type_index}")
        self._types.append(type_index)
        self._parent.append(-1)
        self._counts.append(-1)
        return len(self._parent) - 1

    def ensure_nodes(self, node_types: Sequence[int] | np.ndarray) -> None:
        """Grow to ``len(node_types)`` nodes, node i of type node_types[i] (existing ones kept)."""
        types = np.asarray(node_types, dtype=np.int64)
        tail = types[len(self._parent) :]
        if not len(tail):
            return
        if tail.min() < 0 or tail.max() >= len(self._plan.rules):
            raise ValueError("unknown type code in node_types")
        self._types.extend(tail.astype(np.uint8).tobytes())
        self._parent.extend([-1] * len(tail))
        self._counts.extend([-1] * len(tail))

    def _find(self, node: int) -> int:
        parent = self._parent
        p = parent[node]
        while p != node:  # path halving
            gp = parent[p]
            parent[node] = gp
            node = gp
            p = parent[node]
        return node

    def resolve(self, nodes: Sequence[int], blocked: Container[int] = ()) -> Outcome:
        """Apply the greedy rule to one record carrying ``nodes`` (see docs/identity.md).

        ``blocked`` holds node ids (a set): those nodes are skipped, never linked by this record.
        """
        if isinstance(nodes, np.ndarray):
            nodes = nodes.tolist()
        plan = self._plan
        parent, types, counts, key = self._parent, self._types, self._counts, self._key
        merging, single, bias, guard = plan.merging, plan.single, plan.bias, plan.guard
        out = Outcome(None, [], [], [])
        rp = -1  # the record's person (a root), -1 while none
        for k in sorted({key[types[n]] | n for n in nodes}):
            n = k & _NODE_MASK
            if n in blocked:
                out.blocked.append(n)
                continue
            t = types[n]
            p = parent[n]
            if merging[t]:
                if p < 0:  # new: a singleton person, then try to join the record's person
                    parent[n] = n
                    counts[n] = single[t]
                    r = n
                elif p == n or parent[p] == p:
                    r = p
                else:
                    r = self._find(n)
                if rp < 0:
                    rp = r
                elif r != rp:
                    s = counts[rp] + counts[r]
                    if (s + bias) & guard:
                        out.rejected.append((n, r, plan.reason(s)))
                    else:
                        survivor, absorbed = (r, rp) if r < rp else (rp, r)
                        parent[absorbed] = survivor
                        counts[survivor] = s
                        counts[absorbed] = -1
                        out.merges.append((survivor, absorbed, n))
                        rp = survivor
            elif p >= 0:  # known non-merging value: only looked up
                if rp < 0:
                    rp = self._find(n)
            elif rp < 0:  # new non-merging value and no person yet: it starts one
                parent[n] = n
                counts[n] = 0
                rp = n
            else:  # new non-merging value: attaches, never refused, never renames
                parent[n] = rp
        if rp >= 0:
            out.person = rp
        return out

    def person(self, node: int) -> int | None:
        """The node's person, None if it never got linked."""
        if self._parent[node] < 0:
            return None
        return self._find(node)

    def persons(self) -> np.ndarray:
        """Person per node id (int64, -1 = unlinked), e.g. to store or to compare with rebuild."""
        parent = np.array(self._parent, dtype=np.int64)
        out = np.full(len(parent), -1, dtype=np.int64)
        idx = np.flatnonzero(parent >= 0)
        p = parent[idx]
        while True:  # pointer jumping; trees are shallow thanks to path halving
            pp = parent[p]
            if np.array_equal(pp, p):
                break
            p = pp
        out[idx] = p
        return out

    def load(self, node_person: np.ndarray) -> None:
        """Set the state from a node->person array (-1 = unlinked), e.g. a rebuild's result.

        Nodes of one person share one int object in the parent list, so loading millions of
        nodes costs list slots, not an object each.
        """
        n = len(self._parent)
        arr = np.asarray(node_person, dtype=np.int64)
        if arr.ndim != 1 or len(arr) > n:
            raise ValueError("node_person is longer than node_count (call ensure_nodes first)")
        if len(arr) < n:
            arr = np.concatenate([arr, np.full(n - len(arr), -1, dtype=np.int64)])
        types = np.frombuffer(bytes(self._types), dtype=np.uint8).astype(np.int64)
        idx = np.flatnonzero(arr >= 0)
        person = arr[idx]
        if len(idx) and (person.max() >= n or not np.array_equal(arr[person], person)):
            raise ValueError(
                "node_person: a person id must be a linked node that is its own person"
            )
        merging = np.array(self._plan.merging, dtype=bool)
        if not np.all(merging[types[person]] | ~merging[types[idx]]):
            raise ValueError("node_person: a merging node's person must be a merging node")
        sizes = np.bincount(person, minlength=n)
        multi = np.flatnonzero(sizes > 1)
        ones = np.flatnonzero(sizes == 1)
        # counts of limited types per multi-node person, in one bincount
        plan = self._plan
        field = np.full(len(plan.rules), -1, dtype=np.int64)
        field[[r.index for r in plan.limited]] = np.arange(len(plan.limited))
        f = field[types[idx]]
        row = np.full(n, -1, dtype=np.int64)
        row[multi] = np.arange(len(multi))
        r = row[person]
        sel = (f >= 0) & (r >= 0)
        width = max(1, len(plan.limited))
        matrix = np.bincount(r[sel] * width + f[sel], minlength=len(multi) * width)
        packed = plan.pack(matrix.reshape(len(multi), width)[:, : len(plan.limited)])
        del matrix, f, r, sel, row
        if isinstance(packed, np.ndarray) and plan.bits <= 62:
            counts = np.full(n, -1, dtype=np.int64)
            counts[multi] = packed
            counts[ones] = np.array(plan.single, dtype=np.int64)[types[ones]]
            self._counts = counts.tolist()
            del counts
        else:  # wide packed counts: Python ints
            self._counts = [-1] * n
            for i, c in zip(multi.tolist(), packed, strict=True):
                self._counts[i] = c
            single = plan.single
            for i, t in zip(ones.tolist(), types[ones].tolist(), strict=True):
                self._counts[i] = single[t]
        roots = np.full(n + 1, -1, dtype=object)  # slot n: the -1 of unlinked nodes
        roots[multi] = multi.tolist()
        roots[ones] = ones.tolist()
        self._parent = roots[np.where(arr >= 0, arr, n)].tolist()


def rebuild(
    rules: Sequence[TypeRule],
    node_types: np.ndarray,
    seq: np.ndarray,
    node: np.ndarray,
    blocked: np.ndarray | None = None,
) -> RebuildResult:
    """Persons from a whole link log, equal to feeding `Resolver` every record in seq order.

    Links are parallel arrays (record seq, node id) in any order; ``blocked`` is a bool per node.
    A component whose full union stays within every limit cannot see a refusal in the greedy
    either (a partial union never has more values than the whole), so its person is simply its
    smallest node; only the other ("hard") components are replayed record by record.
    """
    plan = _Plan(rules)
    types = np.asarray(node_types, dtype=np.int64)
    n_nodes = len(types)
    seq = np.asarray(seq, dtype=np.int64)
    node = np.asarray(node, dtype=np.int64)
    if seq.shape != node.shape or seq.ndim != 1:
        raise ValueError("seq and node must be 1-d arrays of the same length")
    if len(node) and (node.min() < 0 or node.max() >= n_nodes):
        raise ValueError("node id out of range of node_types")
    if n_nodes and (types.min() < 0 or types.max() >= len(plan.rules)):
        raise ValueError("unknown type code in node_types")
    node_person = np.full(n_nodes, -1, dtype=np.int64)

    # records as dense ids 0..R-1 in seq order (the link log is usually sorted already)
    if len(seq) and np.all(seq[1:] >= seq[:-1]):
        new = np.empty(len(seq), dtype=bool)
        new[:1] = True
        np.not_equal(seq[1:], seq[:-1], out=new[1:])
        useqs = seq[new]
        rec = np.cumsum(new)
        rec -= 1
        del new
    else:
        useqs, rec = np.unique(seq, return_inverse=True)
    n_rec = len(useqs)
    if blocked is not None:
        keep = ~np.asarray(blocked, dtype=bool)[node]
        rec, node = rec[keep], node[keep]
    node_rank = np.array(plan.rank, dtype=np.uint8)[types]  # per node: small lookups, not
    node_merging = np.array(plan.merging, dtype=bool)[types]  # an int64 type per link
    rec, node = _sort_links(rec, node, node_rank, n_nodes, n_rec)
    is_merging = node_merging[node]
    head = np.empty(len(rec), dtype=bool)  # first link of each record in the greedy's order
    head[:1] = True
    np.not_equal(rec[1:], rec[:-1], out=head[1:])

    rejected, hard_count = _merging_persons(plan, types, rec, node, is_merging, useqs, node_person)
    _non_merging_persons(rec, node, is_merging, head, n_rec, node_merging, node_person)

    record_person = np.full(n_rec, -1, dtype=np.int64)
    record_person[rec[head]] = node_person[node[head]]
    return RebuildResult(node_person, (useqs, record_person), rejected, hard_count)


def _merging_persons(
    plan: _Plan,
    types: np.ndarray,
    rec: np.ndarray,
    node: np.ndarray,
    is_merging: np.ndarray,
    useqs: np.ndarray,
    node_person: np.ndarray,
) -> tuple[list[tuple[int, int, str]], int]:
    """Persons of merging nodes: components over consecutive merging nodes of each record.

    Fills node_person; returns the refused links and the number of hard components.
    """
    mi = np.flatnonzero(is_merging)
    if not len(mi):
        return [], 0
    mrec, mnode = rec[mi], node[mi]
    del mi
    same = mrec[1:] == mrec[:-1]
    n_nodes = len(types)
    graph = csr_matrix(
        (np.ones(int(same.sum()), dtype=np.int8), (mnode[:-1][same], mnode[1:][same])),
        shape=(n_nodes, n_nodes),
    )
    del same
    n_comp, labels = connected_components(graph, directed=False)
    del graph
    seen = np.zeros(n_nodes, dtype=bool)
    seen[mnode] = True
    present = np.flatnonzero(seen)  # ascending
    del seen
    lab = labels[present]
    hard = np.zeros(n_comp, dtype=bool)
    present_types = types[present]
    for rule, limit in zip(plan.limited, plan.limits, strict=True):
        of_type = lab[present_types == rule.index]
        if len(of_type):
            hard |= np.bincount(of_type, minlength=n_comp) > limit
    del present_types
    smallest = np.full(n_comp, n_nodes, dtype=np.int64)
    np.minimum.at(smallest, lab, present)
    node_person[present] = smallest[lab]
    del smallest
    hard_count = int(hard.sum())
    if not hard_count:
        return [], 0
    in_hard = hard[labels[mnode]]
    hard_nodes = present[hard[lab]]
    rejected = _replay(plan, types, hard_nodes, mrec[in_hard], mnode[in_hard], useqs, node_person)
    return rejected, hard_count


def _non_merging_persons(
    rec: np.ndarray,
    node: np.ndarray,
    is_merging: np.ndarray,
    head: np.ndarray,
    n_rec: int,
    node_merging: np.ndarray,
    node_person: np.ndarray,
) -> None:
    """Persons of non-merging nodes, as the greedy saw them, without replaying it.

    A non-merging node is linked by the first record carrying it, to that record's person at
    that moment, whose final person is the final person of the record's first node (merging
    or not). That first node may itself be a non-merging node first seen even earlier: chains
    are followed by pointer doubling.
    """
    ni = np.flatnonzero(~is_merging)
    if not len(ni):
        return
    first = np.full(len(node_person), len(node), dtype=np.int64)  # first link of each node
    np.minimum.at(first, node[ni], ni)
    del ni
    nm_nodes = np.flatnonzero(first < len(node))
    starts = np.flatnonzero(head)
    rec_start = np.zeros(n_rec, dtype=np.int64)
    rec_start[rec[starts]] = starts
    del starts
    ptr = np.arange(len(node_person), dtype=np.int64)
    ptr[nm_nodes] = node[rec_start[rec[first[nm_nodes]]]]
    del first, rec_start
    while True:
        nxt = ptr[ptr[nm_nodes]]
        if np.array_equal(nxt, ptr[nm_nodes]):
            break
        ptr[nm_nodes] = nxt
    end = ptr[nm_nodes]  # a merging node (person known) or a non-merging person's own node
    node_person[nm_nodes] = np.where(node_merging[end], node_person[end], end)


def _sort_links(
    rec: np.ndarray, node: np.ndarray, node_rank: np.ndarray, n_nodes: int, n_rec: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sort links by (record, rank of the node's type, node), dropping duplicates in a record.

    One int64 key built in place and sorted in place: several times faster than a lexsort of
    three arrays, and only one extra array of the links' size.
    """
    if not len(rec):
        return rec, node
    node_bits = max(1, (n_nodes - 1).bit_length())
    rank_bits = max(1, int(node_rank.max()).bit_length())
    rec_bits = max(1, (n_rec - 1).bit_length())
    if node_bits + rank_bits + rec_bits > 63:
        rank = node_rank[node]
        order = np.lexsort((node, rank, rec))
        rec, node = rec[order], node[order]
        keep = np.empty(len(rec), dtype=bool)
        keep[:1] = True
        keep[1:] = (rec[1:] != rec[:-1]) | (node[1:] != node[:-1])
        return rec[keep], node[keep]
    key = rec << (rank_bits + node_bits)
    part = node_rank[node].astype(np.int64)
    part <<= node_bits
    key |= part
    del part
    key |= node
    key.sort()
    keep = np.empty(len(key), dtype=bool)
    keep[:1] = True
    np.not_equal(key[1:], key[:-1], out=keep[1:])
    if not keep.all():
        key = key[keep]
    del keep
    rec = key >> (rank_bits + node_bits)
    key &= (1 << node_bits) - 1
    return rec, key


def _replay(
    plan: _Plan,
    types: np.ndarray,
    hard_nodes: np.ndarray,
    rec: np.ndarray,
    node: np.ndarray,
    useqs: np.ndarray,
    node_person: np.ndarray,
) -> list[tuple[int, int, str]]:
    """Greedy replay of the hard components' merging links (sorted), on compact local ids.

    Local ids keep the order of global ids, so "the smaller root survives" is unchanged.
    """
    resolver = Resolver(plan.rules)
    resolver.ensure_nodes(types[hard_nodes])
    local = np.searchsorted(hard_nodes, node).tolist()
    cut = np.flatnonzero(np.r_[True, rec[1:] != rec[:-1], True]).tolist()
    seqs = useqs[rec[cut[:-1]]].tolist()
    rejected: list[tuple[int, int, str]] = []
    for i, s in enumerate(seqs):
        out = resolver.resolve(local[cut[i] : cut[i + 1]])
        for n, _person, reason in out.rejected:
            rejected.append((s, int(hard_nodes[n]), reason))
    node_person[hard_nodes] = hard_nodes[resolver.persons()]
    return rejected
