"""How good the persons are, against a ground truth ``(source, record_key, true_person)``.

Pairwise measures, as entity-resolution papers report them: of all pairs of records we put in
one person, the share that truly are one (precision); of all pairs that truly are one person,
the share we put together (recall). A record we could not resolve (or never loaded: it was
quarantined) counts as a person of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir

from rapport.workspace import Workspace

TEST_PHONE = "+8613800138000"


def _pairs(counts: ir.Table) -> ir.IntegerValue:
    return (counts.n * (counts.n - 1) / 2).sum().cast("int64")


def evaluate(ws: Workspace, truth_path: Path) -> dict[str, Any]:
    if not truth_path.exists():
        raise FileNotFoundError(f"no ground truth at {truth_path} (run `rapport demo` first)")
    with ws.warehouse.connect() as con:
        truth = con.read_parquet(truth_path)
        events, slices = con.table("events"), con.table("profile_slices")
        ours = events.select(events.source, record_key=events.event_id, person=events.person_key)
        ours = ours.union(slices.select(slices.source, slices.record_key, person=slices.person_key))
        ours = ours.distinct(on=["source", "record_key"], keep="first")
        joined = truth.left_join(ours, ["source", "record_key"]).select(
            "true_person", person=ibis._.person
        )
        singleton = -(ibis.row_number() + 2)  # unresolved: a person of its own
        joined = joined.mutate(
            pred=((joined.person.notnull()) & (joined.person >= 0)).ifelse(joined.person, singleton)
        )
        cells = joined.group_by(["pred", "true_person"]).aggregate(n=ibis._.count())
        pred = joined.group_by("pred").aggregate(n=ibis._.count())
        true = joined.group_by("true_person").aggregate(n=ibis._.count())
        tp, pp, tt = (int(_pairs(t).to_pyarrow().as_py() or 0) for t in (cells, pred, true))
        resolved = joined.filter(joined.pred >= 0)
        stats = {
            "records": int(joined.count().to_pyarrow().as_py()),
            "unresolved": int(joined.filter(joined.pred < 0).count().to_pyarrow().as_py()),
            "persons": int(resolved.pred.nunique().to_pyarrow().as_py()),
            "true_persons": int(joined.true_person.nunique().to_pyarrow().as_py()),
        }
        stats["test_phone_merged_persons"] = _test_phone_merges(con, truth, joined)
    return {
        "precision": round(tp / pp, 6) if pp else 1.0,
        "recall": round(tp / tt, 6) if tt else 1.0,
        **stats,
        "pairs": {"true_positive": tp, "predicted": pp, "true": tt},
    }


def _test_phone_merges(con: Any, truth: ir.Table, joined: ir.Table) -> int:
    """Persons of ours holding two or more real people who gave the shared test number."""
    slices = con.table("profile_slices")
    mobile = slices.identifiers["mobile"].unwrap_as("string")
    with_test = slices.filter(mobile == TEST_PHONE).select("source", "record_key")
    users = truth.semi_join(with_test, ["source", "record_key"]).select("true_person").distinct()
    theirs = joined.semi_join(users, "true_person").filter(joined.pred >= 0)
    mixed = theirs.group_by("pred").aggregate(k=theirs.true_person.nunique()).filter(ibis._.k > 1)
    return int(mixed.count().to_pyarrow().as_py())
