"""Probabilistic matching with Splink: persons the graph keeps apart who look like one.

The graph merges only on shared identifiers. Two records of one customer with no identifier
in common (a member card with a mobile, a hotel booking with an email) stay two persons; their
merged profiles (``rapport.identity.survivorship``) may still say the same name, birthday and
city. Splink (Fellegi-Sunter) scores such pairs:

- input: one row per person — name (lower-cased, blanks collapsed), birthday (ISO date,
  whatever format it was typed in), city, gender (``m``/``f``) and the local part of the
  person's first email; persons with neither name nor birthday cannot be blocked and are left
  out. Splink runs in its own in-memory DuckDB on an Arrow copy: the warehouse file is not
  held while it works (DuckDB allows one writing process).
- blocking: same birthday, or same name. Comparisons: name (exact, Jaro-Winkler >= 0.92,
  >= 0.8, other), birthday, city, gender and email local part (exact or not).
- parameters: u by random sampling (all pairs when there are few persons); m by expectation
  maximisation when at least ``EM_MIN_PAIRS`` pairs share name and birthday (kept within
  ``M_MIN`` of 0 and 1), otherwise — and whenever EM fails or ends implausible
  (``_implausible``) — the fixed m values of ``M_PRIORS``: with few matches EM converges on
  nonsense (tried on the demo: a birthday that agrees in 2 % of matches, a gender disagreement
  that rules a match out). The prior match probability is estimated from the pairs sharing
  name and birthday (at least one, with an assumed recall of ``RECALL``).
- pairs the graph separated on purpose are never proposed: a refused link or a split between
  them (``identity_history``), a candidate rejected by a person, or a union that would break
  an identifier limit (two different ID cards): ``link_persons`` would refuse it anyway.

Pairs at or above ``merge_threshold`` are linked (``link_persons(kind="match")``); pairs from
``review_threshold`` up wait in ``match_candidates`` for a person's decision, with the compared
values and their agreement levels as evidence. A rejected pair is never proposed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc
from ibis.backends.duckdb import Backend
from sqlalchemy import Engine, func, insert, select, update

from rapport.db.tables import match_candidates
from rapport.identity import config as cfg
from rapport.identity.survivorship import (
    annotated,
    cached,
    iso_date,
    rules_in_use,
    values,
    winners,
)

if TYPE_CHECKING:
    from rapport.workspace import Workspace

MERGE_THRESHOLD = 0.99
REVIEW_THRESHOLD = 0.8
#: profile properties compared (the survivorship winners), plus the email local part
FIELDS = ("name", "birthday", "city", "gender")
COMPARED = (*FIELDS, "email_local")
#: pairs sharing name and birthday needed before EM: it learns m from the matches it finds
EM_MIN_PAIRS = 100
M_MIN = 0.001  # no level is impossible among matches
RECALL = 0.6  # share of true matches that have the same name and birthday
U_MAX_PAIRS = 5_000_000
SEED = 42
#: m (and prior u) per comparison level, best level first; u is re-estimated from the data
M_PRIORS: dict[str, list[float]] = {
    "name": [0.75, 0.1, 0.07, 0.08],
    "birthday": [0.9, 0.1],
    "city": [0.7, 0.3],
    "gender": [0.97, 0.03],
    "email_local": [0.4, 0.6],
}
U_PRIORS: dict[str, list[float]] = {
    "name": [0.0005, 0.002, 0.02, 0.9775],
    "birthday": [0.0002, 0.9998],
    "city": [0.1, 0.9],
    "gender": [0.5, 0.5],
    "email_local": [0.0001, 0.9999],
}
#: gender spellings; codes as Chinese systems keep them (1 male; 2, or 0 in many, female)
GENDERS = {
    "m": ("m", "male", "man", "男", "先生", "1"),
    "f": ("f", "female", "woman", "女", "女士", "2", "0"),
}
STATUSES = ("pending", "accepted", "rejected")


class CandidateError(ValueError):
    """A decision that cannot be made (unknown candidate, already decided, link refused)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


# -- input ----------------------------------------------------------------------------------
def _gender(text: ir.StringValue) -> ir.StringValue:
    s = text.strip().lower()
    return ibis.cases(
        *[(s.isin(list(words)), code) for code, words in GENDERS.items()], else_=ibis.null("string")
    )


def _clean(text: ir.StringValue) -> ir.StringValue:
    return text.strip().re_replace(r"\s+", " ").lower().nullif("")


def match_input(con: Backend, engine: Engine) -> pa.Table:
    """One row per person with the compared fields, normalised (``unique_id`` = person id)."""
    with cached(annotated(values(con, engine, properties=FIELDS), engine)) as a:
        win = winners(a, rules_in_use(engine))
        wide = win.group_by("person").aggregate(
            **{f: win.value.max(where=win.property == f) for f in FIELDS}
        )
        nodes = con.table("identity_nodes")
        emails = nodes.filter((nodes.id_type == "email") & nodes.person_id.notnull())
        emails = emails.group_by("person_id").aggregate(email=emails.value.min())
        joined = wide.left_join(emails, wide.person == emails.person_id)
        rows = joined.select(
            unique_id=joined.person,
            name=_clean(joined.name),
            birthday=iso_date(joined.birthday),
            city=_clean(joined.city),
            gender=_gender(joined.gender),
            email_local=_clean(joined.email.re_extract(r"^([^@]+)@", 1)),
        )
        rows = rows.filter(rows.name.notnull() | rows.birthday.notnull())
        return rows.order_by("unique_id").to_pyarrow()


def _same_name_and_birthday(rows: pa.Table) -> int:
    """How many pairs of persons share name and birthday (the near-certain matches)."""
    both = rows.filter(pc.and_(pc.is_valid(rows["name"]), pc.is_valid(rows["birthday"])))
    counts = both.group_by(["name", "birthday"]).aggregate([("unique_id", "count")])
    return sum(k * (k - 1) // 2 for k in counts["unique_id_count"].to_pylist())


def _prior(rows: pa.Table) -> float:
    """Probability that two random persons are one: pairs sharing name and birthday (at least
    one) over ``RECALL``, divided by all pairs."""
    n = rows.num_rows
    total = n * (n - 1) / 2
    return min(0.5, max(1, _same_name_and_birthday(rows)) / RECALL / max(total, 1))


def _implausible(model: dict[str, Any]) -> str | None:
    """Why trained m values cannot be right, or None: agreeing on a field must be evidence for a
    match (m > u at the best level) and disagreeing evidence against it (m < u at "all
    other"). EM on too few matches settles on such absurdities (tried on the demo: a birthday
    that agrees in 2 % of the matches)."""
    for c in model["comparisons"]:
        levels = [lvl for lvl in c["comparison_levels"] if not lvl.get("is_null_level")]
        name = c["output_column_name"]
        best, other = levels[0], levels[-1]
        if (best.get("m_probability") or 0) <= (best.get("u_probability") or 0):
            return f"{name}: agreeing is no evidence of a match"
        if (other.get("m_probability") or 1) >= (other.get("u_probability") or 1):
            return f"{name}: disagreeing is no evidence against a match"
    return None


def _clamped(model: dict[str, Any]) -> dict[str, Any]:
    """m kept within [M_MIN, 1 - M_MIN]: a level EM never saw among matches (every duplicate
    had the same gender) must not make a match impossible (a weight of minus infinity)."""
    for c in model["comparisons"]:
        for lvl in c["comparison_levels"]:
            m = lvl.get("m_probability")
            if m is not None:
                lvl["m_probability"] = min(max(m, M_MIN), 1 - M_MIN)
    return model


# -- Splink ---------------------------------------------------------------------------------
def _comparisons() -> list[Any]:
    import splink.comparison_library as cl

    found = {
        "name": cl.JaroWinklerAtThresholds("name", [0.92, 0.8]),
        "birthday": cl.ExactMatch("birthday"),
        "city": cl.ExactMatch("city"),
        "gender": cl.ExactMatch("gender"),
        "email_local": cl.ExactMatch("email_local"),
    }
    return [
        c.configure(m_probabilities=M_PRIORS[name], u_probabilities=U_PRIORS[name])
        for name, c in found.items()
    ]


def _labels() -> dict[str, dict[int, str]]:
    """Comparison -> gamma value -> Splink's description of the level."""
    out = {}
    for field, c in zip(COMPARED, _comparisons(), strict=True):
        levels = c.get_comparison("duckdb").comparison_levels
        out[field] = {lvl.comparison_vector_value: lvl.label_for_charts for lvl in levels}
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Splink logs its training at INFO and WARNING; keep the server's log for errors."""
    logger = logging.getLogger("splink")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def score(rows: pa.Table, review_threshold: float) -> tuple[pa.Table, str]:
    """Scored pairs at or above ``review_threshold`` and how m was trained: ``em``, or
    ``fixed`` (with the reason when EM was tried)."""
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    n = rows.num_rows
    total = n * (n - 1) / 2
    sure = _same_name_and_birthday(rows)
    prior = _prior(rows)

    def linker_for(table: Any) -> Any:
        settings = SettingsCreator(
            link_type="dedupe_only",
            comparisons=_comparisons(),
            blocking_rules_to_generate_predictions=[block_on("birthday"), block_on("name")],
            probability_two_random_records_match=prior,
            retain_matching_columns=True,
            retain_intermediate_calculation_columns=False,
        )
        linker = Linker(table, settings, log_level=None)
        linker.training.estimate_u_using_random_sampling(
            max_pairs=min(max(total, 1.0), U_MAX_PAIRS),
            seed=SEED,
            num_chunks=1 if total < 100_000 else 10,
        )
        return linker

    db_api = DuckDBAPI()  # in memory: a copy, never the warehouse file
    try:
        with _quiet():
            table = db_api.register(rows, dataset_display_name="persons")
            linker = linker_for(table)
            training = "fixed"
            if sure >= EM_MIN_PAIRS:
                model: dict[str, Any] = {}
                try:
                    for rule in (block_on("birthday"), block_on("name")):
                        linker.training.estimate_parameters_using_expectation_maximisation(rule)
                    model = _clamped(linker.misc.save_model_to_json())
                    why = _implausible(model)
                except Exception as exc:  # noqa: BLE001 - EM is optional: fixed m values stay
                    why = f"EM failed: {exc}"
                if why is None:
                    linker = Linker(table, model, log_level=None)
                    training = "em"
                else:
                    linker = linker_for(table)  # back to the fixed m values
                    training = f"fixed ({why})"
            pairs = linker.inference.predict(
                threshold_match_probability=review_threshold, warning_mode="never"
            )
            return pairs.as_pyarrow_table(), training
    finally:
        db_api.duckdb_con.close()


def _evidence(pair: dict[str, Any], labels: dict[str, dict[int, str]]) -> dict[str, Any]:
    fields = {}
    for field in COMPARED:
        level = pair.get(f"gamma_{field}")
        top = max(labels[field])
        agree = (
            "missing"
            if level is None or level < 0
            else "exact"
            if level == top
            else "differ"
            if level == 0
            else "similar"
        )
        fields[field] = {
            "a": pair.get(f"{field}_l"),
            "b": pair.get(f"{field}_r"),
            "level": level,
            "label": labels[field].get(level, "") if level is not None else "",
            "agree": agree,
        }
    return {"fields": fields, "match_weight": round(float(pair["match_weight"]), 3)}


# -- what the graph already decided ------------------------------------------------------
def _current(con: Backend, ids: set[int]) -> dict[int, int | None]:
    """Person id -> the person it is now (a merged-away id -> its survivor; None: gone)."""
    if not ids:
        return {}
    nodes = con.table("identity_nodes")
    found = nodes.filter(nodes.node_id.isin(sorted(ids))).select("node_id", "person_id")
    return {r["node_id"]: r["person_id"] for r in found.to_pyarrow().to_pylist()}


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _kept_apart(con: Backend, engine: Engine) -> set[tuple[int, int]]:
    """Pairs (current ids) a refused link, a split or a reviewer's rejection separated."""
    history = con.table("identity_history")
    history = history.filter(
        history.action.isin(["reject", "split"])
        & history.person_id.notnull()
        & history.other_id.notnull()
    )
    pairs = [
        (r["person_id"], r["other_id"])
        for r in history.select("person_id", "other_id").distinct().to_pyarrow().to_pylist()
    ]
    with engine.connect() as conn:
        rejected = conn.execute(
            select(match_candidates.c.person_a, match_candidates.c.person_b).where(
                match_candidates.c.status == "rejected"
            )
        )
        pairs += [(r.person_a, r.person_b) for r in rejected]
    now = _current(con, {p for pair in pairs for p in pair})
    out = set()
    for a, b in pairs:
        ca, cb = now.get(a, a), now.get(b, b)
        if ca is not None and cb is not None and ca != cb:
            out.add(_pair(ca, cb))
    return out


def _over_limit(con: Backend, engine: Engine, persons: set[int]) -> dict[int, dict[str, int]]:
    """Person -> identifier type -> how many values it holds, for limited merging types."""
    limits = {t.name: t.max_per_person for t in cfg.load(engine).types if t.merge}
    limited = [name for name, limit in limits.items() if limit is not None]
    if not persons or not limited:
        return {}
    nodes = con.table("identity_nodes")
    mine = nodes.filter(nodes.person_id.isin(sorted(persons)) & nodes.id_type.isin(limited))
    counts = mine.group_by(["person_id", "id_type"]).aggregate(n=mine.count())
    out: dict[int, dict[str, int]] = {}
    for r in counts.to_pyarrow().to_pylist():
        out.setdefault(r["person_id"], {})[r["id_type"]] = r["n"]
    return out


def _breaks_limit(
    a: int, b: int, held: dict[int, dict[str, int]], limits: dict[str, int | None]
) -> str | None:
    for id_type, count in held.get(a, {}).items():
        limit = limits.get(id_type)
        if limit is not None and count + held.get(b, {}).get(id_type, 0) > limit:
            return id_type
    return None


# -- the run ------------------------------------------------------------------------------
def run_matching(
    ws: Workspace,
    *,
    merge_threshold: float = MERGE_THRESHOLD,
    review_threshold: float = REVIEW_THRESHOLD,
) -> dict[str, Any]:
    """Score look-alike persons; link the sure ones, queue the likely ones. A summary."""
    if not 0 < review_threshold <= merge_threshold <= 1:
        raise ValueError(
            "thresholds: need 0 < review_threshold <= merge_threshold <= 1, got "
            f"{review_threshold} and {merge_threshold}"
        )
    from rapport.identity.resolve import link_persons

    started = time.perf_counter()
    engine = ws.db
    with ws.warehouse.connect() as con:
        rows = match_input(con, engine)
        apart = _kept_apart(con, engine)
    summary: dict[str, Any] = {
        "persons": rows.num_rows,
        "pairs": 0,
        "merged": 0,
        "refused": 0,
        "queued": 0,
        "updated": 0,
        "skipped": 0,
        "training": None,
        "refusals": [],
    }
    if rows.num_rows < 2:
        summary["seconds"] = round(time.perf_counter() - started, 2)
        return summary
    scored, summary["training"] = score(rows, review_threshold)
    pairs = sorted(scored.to_pylist(), key=lambda p: (-p["match_probability"], p["unique_id_l"]))
    summary["pairs"] = len(pairs)
    persons = {p[k] for p in pairs for k in ("unique_id_l", "unique_id_r")}
    limits = {t.name: t.max_per_person for t in cfg.load(engine).types if t.merge}
    with ws.warehouse.connect() as con:
        held = _over_limit(con, engine, persons)
    labels = _labels()
    existing = _existing(engine)
    for p in pairs:
        a, b = _pair(p["unique_id_l"], p["unique_id_r"])
        probability = float(p["match_probability"])
        if (
            (a, b) in apart
            or _breaks_limit(a, b, held, limits)
            or _breaks_limit(b, a, held, limits)
        ):
            summary["skipped"] += 1
            continue
        known = existing.get((a, b))
        if known is not None and known["status"] != "pending":
            summary["skipped"] += 1
            continue
        evidence = _evidence(p, labels) | {"training": summary["training"]}
        if probability >= merge_threshold:
            survivor, why = link_persons(
                ws, a, b, kind="match", actor="matching", reason=f"probability {probability:.4f}"
            )
            if survivor is None:
                summary["refused"] += 1
                if len(summary["refusals"]) < 20:
                    summary["refusals"].append({"persons": [a, b], "reason": why})
                continue
            summary["merged"] += 1
            if known is not None:
                _set_status(engine, known["id"], "accepted", "matching")
            continue
        if known is not None:
            with engine.begin() as conn:
                conn.execute(
                    update(match_candidates)
                    .where(match_candidates.c.id == known["id"])
                    .values(probability=probability, evidence=evidence)
                )
            summary["updated"] += 1
            continue
        with engine.begin() as conn:
            conn.execute(
                insert(match_candidates).values(
                    person_a=a,
                    person_b=b,
                    probability=probability,
                    evidence=evidence,
                    status="pending",
                    created_at=datetime.now(UTC),
                )
            )
        summary["queued"] += 1
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _existing(engine: Engine) -> dict[tuple[int, int], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                match_candidates.c.id,
                match_candidates.c.person_a,
                match_candidates.c.person_b,
                match_candidates.c.status,
            )
        )
        return {(r.person_a, r.person_b): {"id": r.id, "status": r.status} for r in rows}


def _set_status(engine: Engine, candidate_id: int, status: str, actor: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(match_candidates)
            .where(match_candidates.c.id == candidate_id)
            .values(status=status, decided_by=actor, decided_at=datetime.now(UTC))
        )


# -- the review queue -----------------------------------------------------------------------
def _row(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "person_a": r.person_a,
        "person_b": r.person_b,
        "probability": r.probability,
        "evidence": r.evidence,
        "status": r.status,
        "created_at": r.created_at,
        "decided_by": r.decided_by,
        "decided_at": r.decided_at,
    }


def list_candidates(
    engine: Engine, status: str | None = "pending", limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Candidates (most probable first) and how many there are with that status."""
    stmt = select(match_candidates)
    count = select(func.count()).select_from(match_candidates)
    if status is not None:
        stmt = stmt.where(match_candidates.c.status == status)
        count = count.where(match_candidates.c.status == status)
    stmt = stmt.order_by(match_candidates.c.probability.desc(), match_candidates.c.id)
    with engine.connect() as conn:
        rows = [_row(r) for r in conn.execute(stmt.limit(limit).offset(offset))]
        return rows, int(conn.execute(count).scalar_one())


def get_candidate(engine: Engine, candidate_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(match_candidates).where(match_candidates.c.id == candidate_id)
        ).first()
    return None if row is None else _row(row)


def _pending(engine: Engine, candidate_id: int) -> dict[str, Any]:
    found = get_candidate(engine, candidate_id)
    if found is None:
        raise CandidateError(f"no match candidate {candidate_id}", 404)
    if found["status"] != "pending":
        raise CandidateError(
            f"match candidate {candidate_id} was already {found['status']} by {found['decided_by']}"
        )
    return found


def accept_candidate(ws: Workspace, candidate_id: int, actor: str) -> dict[str, Any]:
    """Link the two persons as a person's decision (``kind="manual"``); the candidate stays
    pending when the graph refuses the link (e.g. a limit), with the reason raised."""
    from rapport.identity.resolve import link_persons

    found = _pending(ws.db, candidate_id)
    survivor, why = link_persons(
        ws,
        found["person_a"],
        found["person_b"],
        kind="manual",
        actor=actor,
        reason=f"match candidate {candidate_id} accepted by {actor}",
    )
    if survivor is None:
        raise CandidateError(f"the graph refused to link persons: {why}")
    _set_status(ws.db, candidate_id, "accepted", actor)
    return {"id": candidate_id, "status": "accepted", "survivor": survivor}


def reject_candidate(ws: Workspace, candidate_id: int, actor: str) -> dict[str, Any]:
    """Different persons: the pair is never proposed again."""
    _pending(ws.db, candidate_id)
    _set_status(ws.db, candidate_id, "rejected", actor)
    return {"id": candidate_id, "status": "rejected"}
