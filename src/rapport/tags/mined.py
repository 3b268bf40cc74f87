"""Mined tags: RFM scores and value tiers, behaviour clusters, churn risk, category preference.

Every model starts from one set-based Ibis query of per-person features as of an explicit
``as_of`` (events after it do not exist), so a churn model can be trained on the past (features
as of a cut-off, label from the 30 days after it) with the very code that scores the present.
The warehouse does the aggregation (DuckDB, or Spark with ``warehouse_backend = "spark"``:
the same expressions, values written to DuckDB as usual); scikit-learn sees one row per person.

Purchases are the ``order_paid`` events, one per ``order_id``: the demo (like many shops)
records an order twice, once from the order system and once from the app's tracking.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from ibis.backends.duckdb import Backend

    from rapport.workspace import Workspace

DAY = 86400.0
#: The feature columns of ``features`` that describe behaviour (clusters and churn use them).
BEHAVIOUR = (
    "orders",
    "spend",
    "views",
    "carts",
    "searches",
    "bookings",
    "active_days",
    "days_since_seen",
)
#: Counts and money are skewed: clusters see log1p of them.
LOGGED = {"orders", "spend", "views", "carts", "searches", "bookings", "active_days"}
#: How a cluster that stands out on a feature is called.
LABELS = {
    "orders": "frequent buyers",
    "spend": "big spenders",
    "views": "heavy browsers",
    "carts": "cart fillers",
    "searches": "searchers",
    "bookings": "hotel bookers",
    "active_days": "regulars",
    "days_since_seen": "drifting away",
    "tenure_days": "long-standing",
    "days_since_purchase": "lapsed buyers",
}
#: A cluster is described by the features at least this many standard deviations off the mean.
STANDS_OUT = 0.35
TIERS = ("champions", "loyal", "new", "promising", "at risk", "hibernating")


@dataclass(frozen=True)
class FeatureSpec:
    """Which events mean what; a mined tag's definition may override any of these."""

    purchase_event: str = "order_paid"
    amount: str = "amount"
    order_key: str = "order_id"
    view_event: str = "view_product"
    cart_event: str = "add_to_cart"
    search_event: str = "search"
    booking_event: str = "book_hotel"  # counts as a purchase signal of category "hotel"
    booking_category: str = "hotel"
    category: str = "category"
    purchase_days: int = 180  # frequency and monetary window
    behaviour_days: int = 90  # views, carts, searches, active days
    share_categories: tuple[str, ...] = ()  # e.g. ("hotel", "fridge"): share-of-interest features

    @classmethod
    def from_definition(cls, definition: dict[str, Any]) -> FeatureSpec:
        known = {f for f in cls.__dataclass_fields__ if f in definition}
        values = {f: definition[f] for f in known}
        if "share_categories" in values:
            values["share_categories"] = tuple(values["share_categories"])
        return cls(**values)

    def feature_names(self) -> list[str]:
        return [*BEHAVIOUR, *(share_name(c) for c in self.share_categories)]


def share_name(category: str) -> str:
    return f"share_{category}"


def label_of(feature: str) -> str:
    if feature.startswith("share_"):
        category = feature[len("share_") :]
        return "hotel travellers" if category == "hotel" else f"{category} browsers"
    return LABELS.get(feature, feature.replace("_", " "))


# -- features --------------------------------------------------------------------------------
def _prop(events: ir.Table, name: str, kind: str) -> ir.Value:
    """An event property: its typed ``prop_`` column when the plan declares it, else the JSON."""
    column = f"prop_{name}"
    if not events.properties.type().is_json():  # JSON kept as text: Spark
        return _prop_from_text(events, name, kind)
    raw = events.properties[name]
    from_json = (
        raw.unwrap_as("float64")
        if kind == "float64"
        else ibis.coalesce(raw.str, raw.cast("string"))
    )
    if column in events.columns:
        return ibis.coalesce(events[column].cast(kind), from_json)
    return from_json


def _prop_from_text(events: ir.Table, name: str, kind: str) -> ir.Value:
    """``_prop`` where the JSON is text (the Parquet export read by Spark): the value as
    ``get_json_object`` gives it, read as a number like the condition compiler does (Ibis'
    JSON unwrapping would run a Python UDF that fails on text that is not JSON), and a
    casting that cannot fail (Spark's casts are strict)."""
    from rapport.conditions.to_ibis import as_json, as_number, json_text

    text = json_text(as_json(events.properties)[name], spark=True)
    from_json = as_number(text) if kind == "float64" else text
    column = f"prop_{name}"
    if column not in events.columns:
        return from_json
    typed = events[column]
    if kind == "float64" and not typed.type().is_numeric():
        return ibis.coalesce(as_number(typed.cast("string")), from_json)
    return ibis.coalesce(typed.cast(kind), from_json)


def _days_between(later: ir.TimestampValue | datetime, earlier: ir.TimestampValue) -> ir.Value:
    """Days as a double (Spark reads the literal ``86400.0`` as a decimal: its quotient would
    be rounded to a few places, and RFM's quintiles would see ties DuckDB does not)."""
    later_expr = ibis.literal(later) if isinstance(later, datetime) else later
    return (later_expr.epoch_seconds() - earlier.epoch_seconds()).cast("float64") / DAY


def features(con: Backend, as_of: datetime, spec: FeatureSpec | None = None) -> ir.Table:
    """One row per person with any event up to ``as_of``: purchase and behaviour features.

    Columns: person_key, first_purchase / last_purchase (timestamps, NULL for non-buyers),
    days_since_purchase, days_since_first_purchase, orders and spend (in ``purchase_days``),
    views, carts, searches, bookings, active_days, events (in ``behaviour_days``),
    days_since_seen, tenure_days and a
    ``share_<category>`` per ``share_categories``: the category's part of the person's
    interest signals (views, carts, orders, bookings) in the behaviour window.
    """
    spec = spec or FeatureSpec()
    ev = con.table("events")
    ev = ev.filter(ev.person_key >= 0, ev.ts <= as_of, ev.event.notnull())
    since_purchase = as_of - timedelta(days=spec.purchase_days)
    since_behaviour = as_of - timedelta(days=spec.behaviour_days)
    category = _prop(ev, spec.category, "string")

    paid = ev.filter(ev.event == spec.purchase_event)
    paid = paid.mutate(
        order=ibis.coalesce(_prop(paid, spec.order_key, "string"), paid.event_id),
        amount=_prop(paid, spec.amount, "float64"),
        category=_prop(paid, spec.category, "string"),
    )
    orders = paid.group_by(["person_key", "order"]).agg(
        ts=paid.ts.min(), amount=paid.amount.max(), category=paid.category.max()
    )
    in_window = orders.ts > since_purchase
    bought = orders.group_by("person_key").agg(
        first_purchase=orders.ts.min(),
        last_purchase=orders.ts.max(),
        orders=in_window.sum(),
        spend=orders.amount.sum(where=in_window),
        **{
            f"orders_{c}": (in_window & (orders.category == c)).sum() for c in spec.share_categories
        },
    )

    recent = ev.ts > since_behaviour
    is_view = recent & (ev.event == spec.view_event)
    is_cart = recent & (ev.event == spec.cart_event)
    is_booking = recent & (ev.event == spec.booking_event)
    browse_category = ibis.cases(
        (ev.event == spec.booking_event, spec.booking_category), else_=category
    )
    behaviour = ev.group_by("person_key").agg(
        first_seen=ev.ts.min(),
        last_seen=ev.ts.max(),
        events=recent.sum(),
        active_days=ev.day.nunique(where=recent),
        views=is_view.sum(),
        carts=is_cart.sum(),
        searches=(recent & (ev.event == spec.search_event)).sum(),
        bookings=is_booking.sum(),
        **{
            f"signals_{c}": ((is_view | is_cart | is_booking) & (browse_category == c)).sum()
            for c in spec.share_categories
        },
    )
    joined = behaviour.left_join(bought, behaviour.person_key == bought.person_key)
    orders_n = joined.orders.fill_null(0)
    signals = joined.views + joined.carts + joined.bookings + orders_n
    shares = {
        share_name(c): ibis.cases(
            (signals > 0, (joined[f"signals_{c}"] + joined[f"orders_{c}"].fill_null(0)) / signals),
            else_=0.0,
        )
        for c in spec.share_categories
    }
    return joined.select(
        person_key=behaviour.person_key,
        first_purchase=joined.first_purchase,
        last_purchase=joined.last_purchase,
        days_since_purchase=_days_between(as_of, joined.last_purchase),
        days_since_first_purchase=_days_between(as_of, joined.first_purchase),
        orders=orders_n,
        spend=joined.spend.fill_null(0.0),
        views=joined.views,
        carts=joined.carts,
        searches=joined.searches,
        bookings=joined.bookings,
        active_days=joined.active_days,
        events=joined.events,
        days_since_seen=_days_between(as_of, joined.last_seen),
        tenure_days=_days_between(as_of, joined.first_seen),
        **shares,
    ).order_by("person_key")


@dataclass
class Frame:
    """Feature columns as numpy arrays (float64, NULL -> NaN), one row per person."""

    person_key: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Frame:
        keys = table.column("person_key").to_numpy()
        cols = {}
        for name in table.column_names:
            if name == "person_key" or pa.types.is_timestamp(table.schema.field(name).type):
                continue
            cols[name] = table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        return cls(keys, cols)

    def __len__(self) -> int:
        return len(self.person_key)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, mask: np.ndarray) -> Frame:
        return Frame(self.person_key[mask], {k: v[mask] for k, v in self.columns.items()})

    def matrix(self, names: list[str]) -> np.ndarray:
        """The model's view: log1p of counts and money, NaN -> 0."""
        cols = [np.log1p(self[n]) if n in LOGGED else self[n] for n in names]
        return np.nan_to_num(np.column_stack(cols).astype(np.float64))


def load_features(ws: Workspace, as_of: datetime, spec: FeatureSpec | None = None) -> Frame:
    """``features`` computed where ``warehouse_backend`` reads (DuckDB or Spark)."""
    from rapport.warehouse.spark import reader

    with reader(ws).connect() as con:
        return Frame.from_arrow(features(con, as_of, spec).to_pyarrow())


# -- RFM ---------------------------------------------------------------------------------------
def quintile(values: np.ndarray) -> np.ndarray:
    """Scores 1-5 by mid-rank: ties share a score, the top fifth gets 5."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # average rank over ties
    sorted_values = values[order]
    _, starts, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        if count > 1:
            ranks[order[start : start + count]] = start + (count - 1) / 2
    return np.minimum(5, np.floor(5 * (ranks + 0.5) / n).astype(np.int64) + 1)


def value_tier(r: int, f: int, days_since_first: float, new_days: int = 30) -> str:
    """RFM tier from the recency and frequency scores (monetary refines the score only)."""
    if r >= 4 and f >= 4:
        return "champions"
    if days_since_first <= new_days:
        return "new"
    if r <= 2 and f >= 3:
        return "at risk"
    if r >= 3 and f >= 3:
        return "loyal"
    if r <= 2:
        return "hibernating"
    return "promising"


@dataclass
class Rfm:
    person_key: np.ndarray
    r: np.ndarray
    f: np.ndarray
    m: np.ndarray
    tier: list[str]

    def scores(self) -> list[str]:
        return [f"{r}{f}{m}" for r, f, m in zip(self.r, self.f, self.m, strict=True)]


def rfm(frame: Frame, new_days: int = 30) -> Rfm:
    """Scores for the persons who ever bought (up to as_of)."""
    buyers = frame.take(~np.isnan(frame["days_since_purchase"]))
    r = quintile(-buyers["days_since_purchase"])
    f = quintile(buyers["orders"])
    m = quintile(np.nan_to_num(buyers["spend"]))
    tiers = [
        value_tier(int(a), int(b), float(d), new_days)
        for a, b, d in zip(r, f, buyers["days_since_first_purchase"], strict=True)
    ]
    return Rfm(buyers.person_key, r, f, m, tiers)


def run_rfm(ws: Workspace, definition: dict[str, Any], as_of: datetime) -> Result:
    part = definition.get("part", "score")
    if part not in ("score", "tier"):
        raise ValueError(f"rfm: part must be 'score' or 'tier', not {part!r}")
    spec = FeatureSpec.from_definition(definition)
    scored = rfm(load_features(ws, as_of, spec), int(definition.get("new_days", 30)))
    values = scored.scores() if part == "score" else scored.tier
    tier_counts = Counter(scored.tier)
    detail = {
        "as_of": as_of.isoformat(),
        "buyers": len(scored.person_key),
        "tiers": {t: tier_counts.get(t, 0) for t in TIERS},
        "window_days": spec.purchase_days,
    }
    return Result(_table(scored.person_key, values), detail)


# -- clusters ----------------------------------------------------------------------------------
def _active(frame: Frame) -> Frame:
    return frame.take((frame["events"] > 0) | (frame["orders"] > 0))


def name_clusters(z: np.ndarray, names: list[str]) -> list[str]:
    """Readable, distinct names: each cluster after the feature(s) it stands out on."""
    k = len(z)
    result: list[str | None] = [None] * k
    used: set[str] = set()
    # clusters with the strongest profile choose first
    for c in sorted(range(k), key=lambda c: -float(np.max(z[c]))):
        ranked = [i for i in np.argsort(-z[c]) if z[c][i] >= STANDS_OUT]
        candidates = [label_of(names[i]) for i in ranked]
        if not candidates:
            candidates = ["casual visitors", "quiet users", "occasional visitors"]
        if len(candidates) > 1:
            candidates.insert(1, f"{candidates[0]} & {candidates[1]}")
        name = next((n for n in candidates if n not in used), None)
        if name is None:
            base, n = candidates[0], 2
            while f"{base} {n}" in used:
                n += 1
            name = f"{base} {n}"
        used.add(name)
        result[c] = name
    return [n or "" for n in result]


def choose_k(x: np.ndarray, ks: range, seed: int = 0, sample: int = 2000) -> dict[int, float]:
    """Silhouette score of k-means for each k, on a sample."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    xs = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    scores = {}
    for k in ks:
        if k >= len(xs):
            break
        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(xs)
        if len(set(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(xs, labels))
    return scores


@dataclass
class Clusters:
    person_key: np.ndarray
    labels: np.ndarray
    names: list[str]
    detail: dict[str, Any]

    def values(self) -> list[str]:
        return [self.names[i] for i in self.labels]


def cluster(
    frame: Frame, feature_names: list[str], k: int | None = None, seed: int = 0
) -> Clusters:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    active = _active(frame)
    if len(active) < 10:
        raise ValueError(f"only {len(active)} active persons: too few to cluster")
    raw = active.matrix(feature_names)
    scaler = StandardScaler().fit(raw)
    x = scaler.transform(raw)
    rng = np.random.default_rng(seed)
    fit_rows = x if len(x) <= 200_000 else x[rng.choice(len(x), 200_000, replace=False)]
    with _threads(len(fit_rows)):
        silhouettes = choose_k(x, range(3, 9), seed) if k is None else {}
        k = k or max(silhouettes, key=lambda key: silhouettes[key])
        model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit_rows)
        labels = model.predict(x)
    sizes = np.bincount(labels, minlength=k)
    z = np.vstack([x[labels == c].mean(axis=0) for c in range(k)])
    names = name_clusters(z, feature_names)
    plain = {n: active[n] for n in feature_names}
    overall = {n: _r(np.nanmean(v)) for n, v in plain.items()}
    profiles: list[dict[str, Any]] = []
    for c in range(k):
        members = labels == c
        means = {n: _r(np.nanmean(v[members])) for n, v in plain.items()}
        stands = [
            {"feature": feature_names[i], "z": _r(z[c][i]), "mean": means[feature_names[i]]}
            for i in np.argsort(-np.abs(z[c]))
            if abs(z[c][i]) >= STANDS_OUT
        ]
        profiles.append(
            {
                "name": names[c],
                "size": int(sizes[c]),
                "share": _r(sizes[c] / len(x)),
                "means": means,
                "z": {n: _r(z[c][i]) for i, n in enumerate(feature_names)},
                "stands_out": stands,
            }
        )
    profiles.sort(key=lambda p: -p["size"])
    detail = {
        "k": k,
        "silhouette": {str(key): _r(s) for key, s in silhouettes.items()},
        "features": feature_names,
        "overall": overall,
        "clusters": profiles,
        "persons": len(x),
    }
    return Clusters(active.person_key, labels, names, detail)


def run_kmeans(ws: Workspace, definition: dict[str, Any], as_of: datetime) -> Result:
    spec = FeatureSpec.from_definition(definition)
    frame = load_features(ws, as_of, spec)
    k = definition.get("k")
    found = cluster(frame, spec.feature_names(), int(k) if k else None)
    found.detail["as_of"] = as_of.isoformat()
    return Result(_table(found.person_key, found.values()), found.detail)


# -- churn -------------------------------------------------------------------------------------
#: Features the churn model learns from (before the category shares of the spec).
CHURN_FEATURES = [*BEHAVIOUR, "events", "tenure_days", "days_since_purchase"]


def _churn_matrix(frame: Frame, names: list[str]) -> np.ndarray:
    x = frame.matrix([n for n in names if n != "days_since_purchase"])
    never = np.isnan(frame["days_since_purchase"])
    since = np.where(never, 10_000.0, frame["days_since_purchase"])
    return np.column_stack([x, np.log1p(since)])


@dataclass
class ChurnModel:
    auc: float
    probabilities: np.ndarray
    person_key: np.ndarray
    detail: dict[str, Any]


def churn(
    ws: Workspace,
    as_of: datetime,
    spec: FeatureSpec,
    horizon_days: int = 30,
    seed: int = 0,
) -> ChurnModel:
    """Train on (features at as_of - horizon, no activity in the horizon after it); score now.

    Only persons active in the behaviour window are at risk of churning (the others already
    have); the AUC is measured on a held-out 30 % of the training persons.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    cut = as_of - timedelta(days=horizon_days)
    names = [*CHURN_FEATURES, *(share_name(c) for c in spec.share_categories)]
    past = load_features(ws, cut, spec)
    past = past.take(past["events"] > 0)
    now = load_features(ws, as_of, spec)
    now = now.take(now["events"] > 0)
    # active after the cut = seen at as_of less than horizon days ago
    stayed = now.person_key[now["days_since_seen"] < horizon_days]
    y = (~np.isin(past.person_key, stayed)).astype(np.int64)
    if len(past) < 50 or len(set(y.tolist())) < 2:
        raise ValueError(
            f"not enough history to train a churn model before {cut:%Y-%m-%d} "
            f"({len(past)} active persons, {int(y.sum())} churned)"
        )
    x = _churn_matrix(past, names)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=seed, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    with _threads(len(x_train)):
        model = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train), y_train)
    auc = float(roc_auc_score(y_test, model.predict_proba(scaler.transform(x_test))[:, 1]))
    probabilities = model.predict_proba(scaler.transform(_churn_matrix(now, names)))[:, 1]
    detail = {
        "auc": _r(auc),
        "cut_off": cut.isoformat(),
        "horizon_days": horizon_days,
        "train": len(y_train),
        "test": len(y_test),
        "churn_rate": _r(float(y.mean())),
        "model": "logistic regression on standardised features",
        # > 0: more of it, more risk (per standard deviation)
        "coefficients": {
            n: _r(v)
            for n, v in sorted(zip(names, model.coef_[0], strict=True), key=lambda p: -abs(p[1]))
        },
    }
    return ChurnModel(auc, probabilities, now.person_key, detail)


def band(probability: float, bands: tuple[float, float]) -> str:
    low, high = bands
    return "low" if probability < low else ("medium" if probability < high else "high")


def run_churn(ws: Workspace, definition: dict[str, Any], as_of: datetime) -> Result:
    spec = FeatureSpec.from_definition(definition)
    low, high = definition.get("bands", (0.3, 0.6))
    found = churn(ws, as_of, spec, int(definition.get("horizon_days", 30)))
    values = [band(float(p), (low, high)) for p in found.probabilities]
    riskiest = np.argsort(-found.probabilities)[:20]
    found.detail |= {
        "as_of": as_of.isoformat(),
        "bands": {"medium": low, "high": high},
        "sample": [
            {"person_key": int(found.person_key[i]), "probability": _r(found.probabilities[i])}
            for i in riskiest
        ],
        "mean_probability": _r(float(found.probabilities.mean())) if len(values) else None,
    }
    return Result(_table(found.person_key, values), found.detail)


# -- category preference -----------------------------------------------------------------------
def category_preference(
    con: Backend,
    as_of: datetime,
    spec: FeatureSpec,
    lift: float = 2.0,
    min_signals: float = 3.0,
    min_share: float = 0.2,
    prior: float = 10.0,
) -> ir.Table:
    """(person_key, value = category) where the person's share of interest in the category is
    at least ``lift`` times everyone's share, on at least ``min_signals`` weighted signals.

    Signals in the behaviour window: a view counts 1, a cart 2, an order or a booking 3. The
    person's share is shrunk towards everyone's by ``prior`` pseudo-signals, so three views
    of TVs out of three do not make a TV lover; thirty out of forty do.
    """
    ev = con.table("events")
    since = as_of - timedelta(days=spec.behaviour_days)
    ev = ev.filter(ev.person_key >= 0, ev.ts <= as_of, ev.ts > since)
    ev = ev.filter(
        ev.event.isin([spec.view_event, spec.cart_event, spec.purchase_event, spec.booking_event])
    )
    paid = ev.event == spec.purchase_event
    ev = ev.mutate(
        category=ibis.cases(
            (ev.event == spec.booking_event, spec.booking_category),
            else_=_prop(ev, spec.category, "string"),
        ),
        order=ibis.cases(
            (paid, ibis.coalesce(_prop(ev, spec.order_key, "string"), ev.event_id)),
            else_=ev.event_id,
        ),
        weight=ibis.cases(
            (ev.event == spec.view_event, 1.0), (ev.event == spec.cart_event, 2.0), else_=3.0
        ),
    )
    # an order recorded twice (order system + tracking) counts once, with its known category
    one = ev.group_by(["person_key", "order"]).agg(
        category=ev.category.max(), weight=ev.weight.max()
    )
    one = one.filter(one.category.notnull() & (one.category != ""))
    per = one.group_by(["person_key", "category"]).agg(w=one.weight.sum())
    person_total = per.w.sum().over(group_by=per.person_key)
    category_total = per.w.sum().over(group_by=per.category)
    everyone = per.w.sum().over()
    base = category_total / everyone
    per = per.mutate(share=(per.w + prior * base) / (person_total + prior), base=base)
    chosen = per.filter(per.w >= min_signals, per.share >= min_share, per.share >= lift * per.base)
    return chosen.select(person_key=chosen.person_key, value=chosen.category).order_by(
        ["person_key", "value"]
    )


def run_category_preference(ws: Workspace, definition: dict[str, Any], as_of: datetime) -> Result:
    from rapport.warehouse.spark import reader

    spec = FeatureSpec.from_definition(definition)
    with reader(ws).connect() as con:
        table = category_preference(
            con,
            as_of,
            spec,
            lift=float(definition.get("lift", 2.0)),
            min_signals=float(definition.get("min_signals", 3.0)),
            min_share=float(definition.get("min_share", 0.2)),
            prior=float(definition.get("prior", 10.0)),
        ).to_pyarrow()
    values = pa.table(
        {
            "person_key": table.column("person_key").cast(pa.int64()),
            "value": table.column("value").cast(pa.string()),
        }
    )
    detail = {"as_of": as_of.isoformat(), "window_days": spec.behaviour_days}
    return Result(values, detail)


# -- running a mined tag -----------------------------------------------------------------------
@dataclass
class Result:
    values: pa.Table  # person_key int64, value string
    detail: dict[str, Any]


@dataclass
class MinedRun:
    run_id: int
    persons: int
    distribution: dict[str, int]
    detail: dict[str, Any]


MODELS: dict[str, Callable[[Workspace, dict[str, Any], datetime], Result]] = {
    "rfm": run_rfm,
    "kmeans": run_kmeans,
    "churn": run_churn,
    "category_preference": run_category_preference,
}


def _table(person_key: np.ndarray, values: list[str]) -> pa.Table:
    return pa.table(
        {"person_key": pa.array(person_key, pa.int64()), "value": pa.array(values, pa.string())}
    )


def _threads(rows: int) -> Any:
    """One BLAS/OpenMP thread for small fits: spinning up a team costs more than the work
    (seconds instead of milliseconds on a busy machine)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1 if rows < 50_000 else None)


def _r(value: float, digits: int = 4) -> float:
    value = float(value)
    return round(value, digits) if math.isfinite(value) else 0.0


def _definition(ws: Workspace, name: str) -> dict[str, Any]:
    from rapport.tags import store
    from rapport.tags.definitions import get_tag

    tag = get_tag(ws.db, name)
    if tag is None:
        raise store.TagNotFound(name)
    if tag["kind"] != "mined":
        raise ValueError(f"tag {name!r} is a {tag['kind']} tag, not a mined one")
    definition = dict(tag["definition"] or {})
    if definition.get("model") not in MODELS:
        raise ValueError(
            f"tag {name!r}: unknown model {definition.get('model')!r} (one of {', '.join(MODELS)})"
        )
    return definition


def compute_mined(ws: Workspace, name: str, as_of: datetime | None = None) -> MinedRun:
    """Compute a mined tag as of ``as_of`` (now by default) as a new run of the tag."""
    from rapport.tags import store

    definition = _definition(ws, name)
    as_of = as_of or datetime.now(UTC)
    run_id = store.start_run(ws.db, name)
    try:
        result = MODELS[definition["model"]](ws, definition, as_of)
        store.write_values(ws, name, run_id, result.values)
        persons, distribution = store.summary(ws, name)
        store.finish_run(
            ws.db, run_id, persons=persons, distribution=distribution, detail=result.detail
        )
    except Exception as exc:
        store.fail_run(ws.db, run_id, f"{exc.__class__.__name__}: {exc}")
        raise
    return MinedRun(run_id, persons, distribution, result.detail)


#: The mined tags a workspace starts with (the demo's categories as share features).
DEFAULT_TAGS: dict[str, dict[str, Any]] = {
    "rfm_score": {
        "description": "RFM scores 1-5 (recency, frequency, monetary over 180 days), e.g. 545",
        "definition": {"model": "rfm", "part": "score"},
    },
    "value_tier": {
        "description": "Customer value tier from RFM: champions, loyal, new, promising, "
        "at risk, hibernating",
        "definition": {"model": "rfm", "part": "tier"},
    },
    "cluster": {
        "description": "Behaviour cluster (k-means on standardised features, k by silhouette)",
        "definition": {"model": "kmeans", "share_categories": ["hotel", "fridge"]},
    },
    "churn_risk": {
        "description": "Risk of no activity in the next 30 days (logistic regression; AUC in "
        "the run detail): low / medium / high",
        "definition": {
            "model": "churn",
            "horizon_days": 30,
            "bands": [0.3, 0.6],
            "behaviour_days": 60,
            "share_categories": ["hotel", "fridge"],
        },
    },
    "prefers_category": {
        "description": "Categories viewed or bought clearly more than average (2x everyone's "
        "share)",
        "definition": {"model": "category_preference", "lift": 2.0},
        "multi": True,
    },
}


def define_mined_tags(ws: Workspace, owner: str = "system") -> list[str]:
    """Create the default mined tags that do not exist yet (edited ones are left alone);
    returns the names created."""
    from rapport.tags.definitions import TagIn, create_tag, get_tag

    created = []
    for name, spec in DEFAULT_TAGS.items():
        if get_tag(ws.db, name) is not None:
            continue
        body = TagIn(
            name=name,
            kind="mined",
            description=spec["description"],
            owner=owner,
            multi=spec.get("multi", False),
            schedule="daily",
            definition=spec["definition"],
        )
        create_tag(ws.db, body)
        created.append(name)
    return created
