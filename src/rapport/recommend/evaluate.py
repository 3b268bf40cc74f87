"""``rapport recommend evaluate``: train on the behaviour up to T, score the top 10 against
what people did after T, next to a popularity baseline that sees the same history.

What counts as a hit, per kind: guess-you-like, any item the person viewed, carted or bought
after T; cross-sell, an item bought after T that the person had not bought before; up-sell,
an item touched after T that the person had not touched before; repurchase, an item bought
again after T.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ibis import _

from rapport.recommend import data
from rapport.recommend.build import compute, record_run
from rapport.recommend.model import KINDS, Model, Touch, epoch
from rapport.recommend.params import Params
from rapport.warehouse import Warehouse

Truth = dict[int, dict[str, set[str]]]


def _truth(rows: list[dict[str, Any]], model: Model, purchases: tuple[str, ...]) -> Truth:
    """Each person's positives per kind after T, judged against their history before T."""
    out: Truth = {}
    for r in rows:
        person, item = r["person_key"], r["item_id"]
        touches = {t.item_id: t for t in model.persons.get(person, [])}
        before = touches.get(item)
        sets = out.setdefault(person, {k: set() for k in KINDS})
        sets["guess_you_like"].add(item)
        if before is None:
            sets["up_sell"].add(item)
        if r["event"] in purchases:
            sets["repurchase" if before and before.bought else "cross_sell"].add(item)
    return out


def _baselines(model: Model, now: float) -> dict[str, Callable[[list[Touch], int], list[str]]]:
    """Popularity, with the exclusions of the kind it stands against."""
    popular = [i.item_id for i in model.popular]

    def top(skip: set[str], n: int) -> list[str]:
        return [i for i in popular if i not in skip][:n]

    def rebuy(touches: list[Touch], n: int) -> list[str]:
        mine = {t.item_id for t in touches if t.bought}
        return [i for i in popular if i in mine][:n]

    return {
        "guess_you_like": lambda t, n: top(model._excluded(t, now), n),
        "cross_sell": lambda t, n: top({x.item_id for x in t if x.bought}, n),
        "up_sell": lambda t, n: top({x.item_id for x in t}, n),
        "repurchase": rebuy,
    }


def _score(found: list[str], relevant: set[str], k: int) -> tuple[float, float]:
    hits = len(set(found[:k]) & relevant)
    return hits / k, hits / len(relevant)


def evaluate(
    wh: Warehouse,
    test_days: int = 14,
    k: int = 10,
    max_persons: int = 5000,
    params: Params | None = None,
) -> dict[str, Any]:
    """Precision@k and recall@k per kind, model and baseline, on a time split at the last
    event minus ``test_days``; persons with a positive and some history, at most
    ``max_persons`` per kind (every n-th, so the sample is the same each run)."""
    params = params or Params()
    started = time.perf_counter()
    with wh.connect() as con:
        end = con.table("events").ts.max().to_pyarrow().as_py()
        split = end - timedelta(days=test_days)
        built = time.perf_counter()
        model = Model(compute(wh, con, params, split), params)
        build_seconds = time.perf_counter() - built
        after = data.interactions(wh, con, params, end + timedelta(seconds=1))
        after = after.filter(_.ts >= split).select("person_key", "item_id", "event").distinct()
        truth = _truth(after.to_pyarrow().to_pylist(), model, params.purchases)
        now = epoch(split)
        baselines = _baselines(model, now)
        results = []
        for kind in KINDS:
            persons = sorted(p for p, sets in truth.items() if sets[kind] and p in model.persons)
            step = max(1, len(persons) // max_persons)
            persons = persons[::step][:max_persons]
            sums = [0.0, 0.0, 0.0, 0.0]
            for person in persons:
                relevant = truth[person][kind]
                recs = [r.item_id for r in model.recommend(kind, person, k, at=split)]
                base = baselines[kind](model.persons[person], k)
                for i, value in enumerate((*_score(recs, relevant, k), *_score(base, relevant, k))):
                    sums[i] += value
            count = len(persons) or 1
            p, r, bp, br = (round(s / count, 4) for s in sums)
            results.append(
                {
                    "kind": kind,
                    "persons": len(persons),
                    "precision": p,
                    "recall": r,
                    "baseline_precision": bp,
                    "baseline_recall": br,
                }
            )
        seconds = time.perf_counter() - started
        report = {
            "split": split.isoformat(),
            "end": end.isoformat(),
            "test_days": test_days,
            "k": k,
            "train_build_seconds": round(build_seconds, 3),
            "train_persons": len(model.persons),
            "items": len(model.items),
            "results": results,
        }
        record_run(con, "evaluate", seconds, report)
    return {**report, "seconds": round(seconds, 3)}
