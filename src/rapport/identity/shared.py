"""Shared values found by degree: a household tablet, a clerk's test number.

A value of a type with ``shared_after = N`` is shared when the records carrying it also carry
stronger identifiers (higher priority) of more than N different persons, where those persons
are told apart by the stronger identifiers alone (connected components without the weak
type). A device used by two family members who each log in with their own member id is seen
with two such persons; a person's second member id is not (the member DB links the two).
Found values are blocked (``auto``) and the persons they had merged are recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import ibis
import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rapport.identity import config as cfg
from rapport.identity.resolve import _all_links, _node_arrays, _session, recompute
from rapport.workspace import Workspace


@dataclass(frozen=True)
class SharedValue:
    node_id: int
    id_type: str
    value: str
    persons: int


def _components(n: int, seq: np.ndarray, node: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Component label per node over edges joining strong nodes that share a record."""
    keep = strong[node]
    s, v = seq[keep], node[keep]
    order = np.lexsort((v, s))
    s, v = s[order], v[order]
    same = s[1:] == s[:-1]
    a, b = v[:-1][same], v[1:][same]
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_shared(ws: Workspace) -> list[SharedValue]:
    conf = cfg.load(ws.db)
    out: list[SharedValue] = []
    with _session(ws) as con:
        types, blocked = _node_arrays(con, conf)
        links = _all_links(con)
        if not links.num_rows:
            return []
        seq = links["seq"].to_numpy()
        node = links["node_id"].to_numpy()
        n = len(types)
        # strongest first, each type's finds blocked before the next: once a household device
        # id is blocked, the same value as the SDK's anonymous id no longer holds the family
        # together in the weaker type's view
        for t in sorted(conf.types, key=lambda t: -t.priority):
            if t.shared_after is None:
                continue
            index = conf.index[t.name]
            stronger = [
                conf.index[o.name] for o in conf.types if o.merge and o.priority > t.priority
            ]
            if not stronger:
                continue
            strong = np.isin(types, stronger) & ~blocked
            labels = _components(n, seq, node, strong)
            weak_links = (types[node] == index) & ~blocked[node]
            strong_links = strong[node]
            weak = pa.table({"seq": seq[weak_links], "v": node[weak_links]})
            other = pa.table({"seq": seq[strong_links], "c": labels[node[strong_links]]})
            w, o = ibis.memtable(weak), ibis.memtable(other)
            degree = (
                w.join(o, "seq")
                .group_by("v")
                .aggregate(persons=ibis._.c.nunique())
                .filter(ibis._.persons > t.shared_after)
            )
            found = con.execute(degree)
            if found.empty:
                continue
            ids = con.table("identity_nodes")
            values = ids.filter(ids.node_id.isin(found["v"].tolist())).select("node_id", "value")
            by_id = dict(con.execute(values).itertuples(index=False, name=None))
            for v, persons in found.itertuples(index=False, name=None):
                out.append(SharedValue(int(v), t.name, by_id[int(v)], int(persons)))
                blocked[int(v)] = True
    return out


def block_shared(ws: Workspace, actor: str = "auto") -> list[SharedValue]:
    """Block every shared value found, and split the persons it had merged."""
    found = find_shared(ws)
    for value in found:
        cfg.add_block(
            ws.db,
            id_type=value.id_type,
            value=value.value,
            auto=True,
            actor=actor,
            reason=f"shared: seen with {value.persons} persons",
        )
    if found:
        recompute(ws, nodes=[v.node_id for v in found], reason="shared values blocked")
    return found
