"""Probabilistic matching (Splink) and its review queue; the ``/api/identity`` rules API and
the Identity console page.

Persons come from a small generated population with near-duplicates: exact copies (birthday
typed another way, gender in Chinese) and one-letter name typos. Tests marked
``needs_resolver`` build the persons with the lead's ``rapport.identity.resolve``
(``resolve_pending`` and ``link_persons``); the others write ``person_key`` directly.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import ibis
import pyarrow as pa
import pytest
from sqlalchemy import select

from conftest import copy_home
from rapport import accounts
from rapport.accounts import Role
from rapport.db.tables import audit_log, match_candidates
from rapport.identity import matching
from rapport.settings import Settings
from rapport.warehouse import layout
from rapport.workspace import Workspace

needs_resolver = pytest.mark.skipif(
    find_spec("rapport.identity.resolve") is None,
    reason="needs the lead's rapport.identity.resolve (resolve_pending, link_persons)",
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
PASSWORD = "correct horse battery"
FIRST = ["wei", "na", "fang", "min", "jing", "lei", "yang", "jun", "tao", "ying", "hui", "qiang"]
LAST = ["wang", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou", "xu"]
CITIES = ["Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Hangzhou", "Wuhan"]


@pytest.fixture
def settings(tmp_path: Path, migrated_home: Path) -> Settings:
    return copy_home(migrated_home, tmp_path, loader_in_process=False)  # only these tests write


def population(n: int = 40, seed: int = 3) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """Profiles (name, birthday, city, gender) and the indexes of the duplicate pairs: every
    10th person has an exact copy, every 10th + 1 a copy with a one-letter name typo."""
    rng = random.Random(seed)
    people: list[dict[str, Any]] = []
    pairs: dict[str, list[int]] = {"exact": [], "typo": []}
    for i in range(n):
        born = datetime(rng.randint(1960, 1999), rng.randint(1, 12), rng.randint(1, 28))
        person = {
            "name": f"{rng.choice(LAST)} {rng.choice(FIRST)}{rng.choice(FIRST)}",
            "birthday": born.strftime("%Y-%m-%d"),
            "city": rng.choice(CITIES),
            "gender": rng.choice(["male", "female"]),
        }
        people.append(person)
        if i % 10 == 0:
            copy = person | {
                "birthday": f"{born.year}/{born.month}/{born.day}",
                "gender": "男" if person["gender"] == "male" else "女",
                "city": person["city"].upper() + " ",
            }
            pairs["exact"].append(len(people) - 1)
            people.append(copy)
        elif i % 10 == 1:
            pairs["typo"].append(len(people) - 1)
            people.append(person | {"name": person["name"][:-1] + "x"})
    return people, pairs


def _typed(table: pa.Table, schema: Any) -> ibis.Table:
    t = ibis.memtable(table)
    return t.select(**{name: t[name].cast(dtype) for name, dtype in schema.items()})


def write_people(ws: Workspace, people: list[dict[str, Any]], person_keys: bool) -> None:
    """One ``member_db`` slice per profile (member id ``M<i>``); with ``person_keys`` the
    slice's person is ``1000 + i``, else it waits for the resolver."""
    n = len(people)
    extra = [{"id_card": p["id_card"]} if "id_card" in p else {} for p in people]
    table = pa.table(
        {
            "slice_key": [f"member_db:M{i}" for i in range(n)],
            "source": ["member_db"] * n,
            "record_key": [f"M{i}" for i in range(n)],
            "identifiers": [json.dumps({"member_id": f"M{i}"} | extra[i]) for i in range(n)],
            "properties": [
                json.dumps({k: v for k, v in p.items() if k != "id_card"}, ensure_ascii=False)
                for p in people
            ],
            "fingerprint": [""] * n,
            "updated_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
            "import_run_id": pa.array([None] * n, pa.int64()),
            "person_key": pa.array(
                [1000 + i for i in range(n)] if person_keys else [None] * n, pa.int64()
            ),
        }
    )
    with ws.warehouse.connect() as con:
        con.insert("profile_slices", _typed(table, layout.PROFILE_SLICES))


def resolved(ws: Workspace, people: list[dict[str, Any]]) -> dict[int, int]:
    """Profiles resolved by the lead's resolver: profile index -> person id."""
    from rapport.identity.resolve import resolve_pending

    write_people(ws, people, person_keys=False)
    resolve_pending(ws)
    with ws.warehouse.connect() as con:
        slices = con.table("profile_slices").select("record_key", "person_key")
        rows = slices.to_pyarrow().to_pylist()
    return {int(r["record_key"][1:]): r["person_key"] for r in rows}


def pending(ws: Workspace) -> list[dict[str, Any]]:
    return matching.list_candidates(ws.db, "pending", 500, 0)[0]


# -- matching without the resolver (person_key written directly) ---------------------------
def test_match_input_normalises_the_merged_profiles(workspace):
    people, pairs = population()
    write_people(workspace, people, person_keys=True)
    with workspace.warehouse.connect() as con:
        rows = matching.match_input(con, workspace.db).to_pylist()
    assert len(rows) == len(people)
    i = pairs["exact"][0]
    a, b = rows[i], rows[i + 1]
    assert a["unique_id"] == 1000 + i and b["unique_id"] == 1000 + i + 1
    assert {k: a[k] for k in ("name", "birthday", "city", "gender")} == {
        k: b[k] for k in ("name", "birthday", "city", "gender")
    }
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", b["birthday"]) and b["gender"] in ("m", "f")
    assert b["city"] == people[i]["city"].lower() and b["email_local"] is None
    with pytest.raises(ValueError, match="thresholds"):
        matching.run_matching(workspace, merge_threshold=0.7, review_threshold=0.9)


def test_likely_pairs_are_queued_with_evidence_and_rejected_or_split_ones_never_again(workspace):
    people, pairs = population()
    write_people(workspace, people, person_keys=True)
    # merge_threshold 1: nothing is linked (no link_persons needed), everything likely queued
    summary = matching.run_matching(workspace, merge_threshold=1.0, review_threshold=0.8)
    assert summary["training"] == "fixed" and summary["merged"] == 0
    queued = {(c["person_a"], c["person_b"]): c for c in pending(workspace)}
    expected = {(1000 + i, 1001 + i) for kind in ("exact", "typo") for i in pairs[kind]}
    assert set(queued) == expected  # every duplicate, and no false pair
    assert summary["queued"] == len(expected) == summary["pairs"]
    exact = queued[(1000 + pairs["exact"][0], 1001 + pairs["exact"][0])]
    typo = queued[(1000 + pairs["typo"][0], 1001 + pairs["typo"][0])]
    assert exact["probability"] >= 0.99 > typo["probability"] >= 0.8
    fields = typo["evidence"]["fields"]
    assert fields["name"]["agree"] == "similar" and fields["name"]["b"].endswith("x")
    assert fields["name"]["label"].startswith("Jaro-Winkler")
    assert fields["birthday"]["agree"] == "exact" and fields["email_local"]["agree"] == "missing"

    rejected = matching.reject_candidate(workspace, typo["id"], "ana")
    assert rejected == {"id": typo["id"], "status": "rejected"}
    with pytest.raises(matching.CandidateError, match="already rejected by ana"):
        matching.reject_candidate(workspace, typo["id"], "ana")
    again = matching.run_matching(workspace, merge_threshold=1.0)
    assert again["queued"] == 0 and again["updated"] == len(expected) - 1
    assert again["skipped"] == 1  # the rejected pair
    assert typo["id"] not in {c["id"] for c in pending(workspace)}

    # a split by the graph (or a person) keeps a pair apart too
    a, b = 1000 + pairs["exact"][1], 1001 + pairs["exact"][1]
    history = pa.table(
        {
            "at": pa.array([T0], pa.timestamp("us", "UTC")),
            "action": ["split"],
            "person_id": pa.array([a], pa.int64()),
            "other_id": pa.array([b], pa.int64()),
            "node_id": pa.array([None], pa.int64()),
            "seq": pa.array([None], pa.int64()),
            "source": ["member_db"],
            "record_key": ["M0"],
            "reason": ["removed by a person"],
        }
    )
    with workspace.warehouse.connect() as con:
        con.insert("identity_history", _typed(history, layout.IDENTITY_HISTORY))
    third = matching.run_matching(workspace, merge_threshold=1.0)
    assert third["skipped"] == 2 and third["updated"] == len(expected) - 2


def test_em_results_are_clamped_and_checked():
    def model(best: tuple[float, float], other: tuple[float, float]) -> dict[str, Any]:
        levels = [{"is_null_level": True}]
        for (m, u), label in ((best, "exact"), (other, "else")):
            levels.append({"m_probability": m, "u_probability": u, "label_for_charts": label})
        return {"comparisons": [{"output_column_name": "gender", "comparison_levels": levels}]}

    sane = matching._clamped(model((1.0, 0.5), (0.0, 0.5)))
    assert [lvl.get("m_probability") for lvl in sane["comparisons"][0]["comparison_levels"]] == [
        None,
        0.999,
        0.001,
    ]
    assert matching._implausible(sane) is None
    # the demo's EM: a birthday that agrees in 2 % of matches, less often than by chance
    assert "no evidence of a match" in matching._implausible(model((0.0001, 0.002), (0.9, 0.99)))
    assert "no evidence against" in matching._implausible(model((0.9, 0.01), (0.999, 0.99)))


# -- the API --------------------------------------------------------------------------------
@pytest.fixture
def viewer_headers(workspace: Workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {accounts.create_token(workspace.db, Role.viewer, 'v')}"}


@pytest.fixture
def marketer_headers(workspace: Workspace) -> dict[str, str]:
    token = accounts.create_token(workspace.db, Role.marketer, "m")
    return {"Authorization": f"Bearer {token}"}


@needs_resolver
def test_sure_pairs_are_linked_and_the_review_queue_works_through_the_api(
    client, workspace, admin_headers, viewer_headers, marketer_headers
):
    people, pairs = population()
    first, second = pairs["exact"][0], pairs["exact"][1]
    people[first]["id_card"] = "110101199003070011"  # two different ID cards: two persons
    people[first + 1]["id_card"] = "11010119900307002X"
    ids = resolved(workspace, people)
    ran = client.post("/api/identity/match", headers=viewer_headers)
    assert ran.status_code == 403
    ran = client.post("/api/identity/match", headers=admin_headers)
    assert ran.status_code == 200, ran.text
    summary = ran.json()
    assert summary["merged"] == len(pairs["exact"]) - 1 and summary["refused"] == 0
    assert summary["skipped"] == 1 and summary["queued"] == len(pairs["typo"])
    with workspace.warehouse.connect() as con:
        slices = con.table("profile_slices").select("record_key", "person_key").to_pyarrow()
        now = {int(r["record_key"][1:]): r["person_key"] for r in slices.to_pylist()}
        links = con.table("identity_links")
        matched = links.filter(links.kind == "match").count().to_pyarrow().as_py()
    assert now[second] == now[second + 1] == min(ids[second], ids[second + 1])
    assert now[first] != now[first + 1]  # the ID cards keep them apart
    assert matched > 0  # sure matches are records of their own in the link log
    queued = {(c["person_a"], c["person_b"]) for c in pending(workspace)}
    assert queued == {tuple(sorted((ids[i], ids[i + 1]))) for i in pairs["typo"]}

    listed = client.get("/api/identity/candidates?limit=2", headers=admin_headers).json()
    assert listed["total"] == len(pairs["typo"]) and len(listed["candidates"]) == 2
    first = listed["candidates"][0]
    assert not first["evidence"]["fields"]["name"]["a"].startswith("*")
    masked = client.get("/api/identity/candidates", headers=viewer_headers).json()
    name = masked["candidates"][0]["evidence"]["fields"]["name"]
    assert "***" in name["a"] and "***" in name["b"] and name["agree"] == "similar"
    assert masked["candidates"][0]["evidence"]["fields"]["city"]["a"] is not None

    assert client.post(f"/api/identity/candidates/{first['id']}/accept",
                       headers=viewer_headers).status_code == 403  # fmt: skip
    accepted = client.post(
        f"/api/identity/candidates/{first['id']}/accept", headers=marketer_headers
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["survivor"] == min(first["person_a"], first["person_b"])
    second = listed["candidates"][1]
    rejected = client.post(
        f"/api/identity/candidates/{second['id']}/reject", headers=marketer_headers
    )
    assert rejected.json() == {"id": second["id"], "status": "rejected"}
    twice = client.post(f"/api/identity/candidates/{second['id']}/accept", headers=admin_headers)
    assert twice.status_code == 409 and "already rejected" in twice.json()["detail"]
    missing = client.post("/api/identity/candidates/999/reject", headers=admin_headers)
    assert missing.status_code == 404 and "no match candidate 999" in missing.json()["detail"]

    again = client.post("/api/identity/match", headers=admin_headers).json()
    assert again["queued"] == 0  # the rejected pair is not proposed again
    left = client.get("/api/identity/candidates", headers=admin_headers).json()["candidates"]
    assert second["id"] not in {c["id"] for c in left}
    done = client.get("/api/identity/candidates?status=all", headers=admin_headers).json()
    assert {c["status"] for c in done["candidates"]} == {"pending", "accepted", "rejected"}
    with workspace.db.connect() as conn:
        actions = {r.action for r in conn.execute(select(audit_log.c.action))}
    assert {"identity.match", "identity.candidate.accepted"} <= actions

    # blocking a known value detaches it from its person at once (the lead's ``recompute``)
    body = {"id_type": "member_id", "value": "M5", "reason": "a shared test card"}
    blocked = client.post("/api/identity/blocklist", json=body, headers=admin_headers).json()
    assert blocked["detached"] == 1
    with workspace.warehouse.connect() as con:
        nodes = con.table("identity_nodes")
        held = nodes.filter(nodes.value == "M5").select("person_id").to_pyarrow().to_pylist()
    assert held == [{"person_id": None}]


def test_identifier_types_api(client, admin_headers, viewer_headers):
    types = client.get("/api/identity/types", headers=viewer_headers).json()
    assert types[0]["name"] == "id_card" and {"mobile", "email"} <= {t["name"] for t in types}
    body = {"priority": 65, "max_per_person": 2, "paths": ["traits.loyalty_card"]}
    assert client.put("/api/identity/types/loyalty_card", json=body,
                      headers=viewer_headers).status_code == 403  # fmt: skip
    saved = client.put("/api/identity/types/loyalty_card", json=body, headers=admin_headers)
    assert saved.status_code == 200, saved.text
    assert saved.json()["paths"] == ["traits.loyalty_card"] and not saved.json()["builtin"]
    bad = client.put(
        "/api/identity/types/loyalty_card",
        json=body | {"normaliser": "upper"},
        headers=admin_headers,
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("normaliser:")
    bad = client.put("/api/identity/types/Bad-Name", json=body, headers=admin_headers)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("name:")
    bad = client.put(
        "/api/identity/types/x", json=body | {"paths": ["traits..x"]}, headers=admin_headers
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("paths:")


def test_blocklist_api(client, admin_headers, viewer_headers):
    body = {"id_type": "mobile", "value": "139 1234 5678", "reason": "a clerk's number"}
    created = client.post("/api/identity/blocklist", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry["value"] == "+8613912345678" and entry["detached"] == 0  # normalised
    listed = client.get("/api/identity/blocklist", headers=admin_headers).json()
    assert entry["id"] in {b["id"] for b in listed}
    shown = client.get("/api/identity/blocklist", headers=viewer_headers).json()
    assert next(b for b in shown if b["id"] == entry["id"])["value"] == "+861****5678"
    for wrong, field in (
        ({"value": "x", "pattern": "y", "reason": "r"}, "give exactly one"),
        ({"id_type": "nope", "value": "x", "reason": "r"}, "id_type:"),
        ({"id_type": "mobile", "value": "12", "reason": "r"}, "value:"),
        ({"pattern": "(", "reason": "r"}, "pattern:"),
    ):
        bad = client.post("/api/identity/blocklist", json=wrong, headers=admin_headers)
        assert bad.status_code == 422 and field in bad.json()["detail"], bad.text
    gone = client.delete(f"/api/identity/blocklist/{entry['id']}", headers=admin_headers)
    assert gone.status_code == 204
    again = client.delete(f"/api/identity/blocklist/{entry['id']}", headers=admin_headers)
    assert again.status_code == 404


def test_survivorship_api(client, workspace, admin_headers, viewer_headers):
    write_people(workspace, population(3)[0], person_keys=True)
    view = client.get("/api/identity/survivorship", headers=viewer_headers).json()
    assert view["default"] == "most_recent" and "city" in view["properties"]
    body = {"rules": [{"property": "city", "rule": "source_priority", "sources": ["member_db"]}]}
    assert client.put("/api/identity/survivorship", json=body,
                      headers=viewer_headers).status_code == 403  # fmt: skip
    saved = client.put("/api/identity/survivorship", json=body, headers=admin_headers).json()
    assert saved["rules"] == body["rules"]
    bad = client.put(
        "/api/identity/survivorship",
        json={"rules": [{"property": "city", "rule": "loudest"}]},
        headers=admin_headers,
    )
    assert bad.status_code == 422 and bad.json()["detail"].startswith("city.rule:")
    built = client.post("/api/identity/profiles", headers=admin_headers)
    assert built.json() == {"profiles": 5}
    assert client.get("/api/identity/conflicts", headers=viewer_headers).json() == []


# -- the console ----------------------------------------------------------------------------
def _csrf(html: str) -> str:
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def _sign_in(client: httpx.Client, workspace: Workspace, role: Role) -> dict[str, str]:
    name = f"{role.value}_user"
    accounts.create_user(workspace.db, name, PASSWORD, role)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post(
        "/login",
        data={"username": name, "password": PASSWORD, "csrf_token": token.group(1), "next": "/"},
    )
    return {"X-CSRF-Token": _csrf(client.get("/identity").text), "HX-Request": "true"}


def test_identity_page_tabs_and_review_as_marketer(client, workspace):
    people, _ = population()
    write_people(workspace, people, person_keys=True)
    matching.run_matching(workspace, merge_threshold=1.0)
    headers = _sign_in(client, workspace, Role.marketer)
    for tab, text in (
        ("types", "wechat_unionid"),
        ("blocklist", "13800138000"[:3]),
        ("survivorship", "Survivorship rules"),
    ):
        page = client.get(f"/identity?tab={tab}")
        assert page.status_code == 200 and text in page.text
        assert "+ New identifier type" not in page.text  # admins only
    conflicts = client.get("/identity/conflicts")  # loaded by the survivorship tab
    assert conflicts.status_code == 200 and "No disagreements" in conflicts.text
    review = client.get("/identity?tab=review")
    assert 'class="prob"' in review.text and "agree-similar" in review.text
    assert "Run matching now" not in review.text and "Accept" in review.text
    candidate = pending(workspace)[-1]
    assert "***" in review.text  # compared names masked for a marketer
    no_csrf = client.post(f"/identity/candidates/{candidate['id']}/reject")
    assert no_csrf.status_code == 403
    done = client.post(f"/identity/candidates/{candidate['id']}/reject", headers=headers)
    assert done.status_code == 200 and "status-rejected" in done.text
    assert "not be proposed again" in done.headers["HX-Trigger"]
    denied = client.post("/identity/blocklist", data={"entry": "x", "reason": "r"}, headers=headers)
    assert denied.status_code == 403


def test_identity_page_admin_edits(client, workspace):
    headers = _sign_in(client, workspace, Role.admin)
    page = client.get("/identity?tab=types")
    assert "+ New identifier type" in page.text
    saved = client.post(
        "/identity/types/_new",
        data={"name": "loyalty_card", "priority": "65", "merge": "true", "normaliser": "trim",
              "paths": "traits.loyalty_card", "max_per_person": "2"},
        headers=headers,
    )  # fmt: skip
    assert saved.status_code == 200 and "loyalty_card" in saved.text
    bad = client.post(
        "/identity/types/loyalty_card",
        data={"priority": "x", "normaliser": "trim"},
        headers=headers,
    )
    assert bad.status_code == 422 and "priority" in bad.json()["detail"]
    blocked = client.post(
        "/identity/blocklist",
        data={"id_type": "", "kind": "pattern", "entry": "^999", "reason": "test ids"},
        headers=headers,
    )
    assert blocked.status_code == 200 and "^999" in blocked.text
    block_id = re.findall(r"/identity/blocklist/(\d+)/delete", blocked.text)[-1]
    removed = client.post(f"/identity/blocklist/{block_id}/delete", headers=headers)
    assert removed.status_code == 200 and "^999" not in removed.text
    rule = client.post(
        "/identity/survivorship",
        data={"property": "city", "rule": "most_frequent", "sources": ""},
        headers=headers,
    )
    assert rule.status_code == 200 and "Rebuild the profiles" in rule.headers["HX-Trigger"]
    with workspace.db.connect() as conn:
        stored = conn.execute(select(match_candidates)).all()
    assert stored == []
    review = client.get("/identity?tab=review")
    assert "Run matching now" in review.text and "Nothing to review" in review.text
