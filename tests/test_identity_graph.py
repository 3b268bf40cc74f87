"""The identity graph core: the greedy rule by hand, and incremental == rebuild by property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rapport.identity.graph import Resolver, TypeRule, rebuild

RULES = [
    TypeRule(0, "member_id", 100, 1),
    TypeRule(1, "id_card", 90, 1),
    TypeRule(2, "mobile", 80, 2),
    TypeRule(3, "email", 70, 3),
    TypeRule(4, "device", 50, None),
    TypeRule(5, "cookie", 10, None, merge=False),
]
MEMBER, CARD, MOBILE, EMAIL, DEVICE, COOKIE = range(6)


def resolver(*types: int) -> Resolver:
    r = Resolver(RULES)
    for t in types:
        r.add_node(t)
    return r


def replay(types: list[int], records: list[list[int]], blocked: frozenset[int] = frozenset()):
    """Incremental: each record in order. Returns the resolver, outcomes, record persons."""
    r = Resolver(RULES)
    r.ensure_nodes(types)
    outcomes = [r.resolve(rec, blocked) for rec in records]
    final = [-1 if o.person is None else r.person(o.person) for o in outcomes]
    return r, outcomes, final


def rebuild_of(
    types: list[int], records: list[list[int]], blocked: frozenset[int] = frozenset(), rules=RULES
):
    seq = np.array([i for i, rec in enumerate(records) for _ in rec], dtype=np.int64)
    node = np.array([n for rec in records for n in rec], dtype=np.int64)
    mask = np.zeros(len(types), dtype=bool)
    mask[list(blocked)] = True
    return rebuild(rules, np.array(types), seq, node, mask)


def test_merge_and_the_older_id_survives() -> None:
    r = resolver(MOBILE, EMAIL, MOBILE, DEVICE)
    assert r.resolve([1]).person == 1
    assert r.resolve([3, 2]).person == 2
    out = r.resolve([1, 2])  # joins person 1 (email) and person 2 (mobile, device)
    assert out.person == 1
    assert out.merges == [(1, 2, 1)]  # survivor 1 (smaller id), absorbed 2, via the email
    out = r.resolve([3, 0])  # a new-ish mobile 0 is older than everything: it survives
    assert out.merges == [(0, 1, 3)] and out.person == 0
    assert r.persons().tolist() == [0, 0, 0, 0]
    assert r.resolve([2]).merges == []


def test_limit_refuses_the_lower_priority_link() -> None:
    r = resolver(CARD, MOBILE, CARD, MOBILE)
    r.resolve([0, 1])
    r.resolve([2, 3])
    out = r.resolve([1, 2])  # card 2 first (priority 90): mobile 1 would bring a second card
    assert out.person == 2
    assert out.merges == []
    assert out.rejected == [(1, 0, "limit:id_card")]
    assert r.persons().tolist() == [0, 0, 2, 2]
    # a new mobile joins the first person; two more mobiles would be three (limit 2)
    r.add_node(MOBILE)
    r.add_node(MOBILE)
    assert r.resolve([0, 4]).merges == [(0, 4, 4)]
    assert r.resolve([0, 5]).rejected == [(5, 5, "limit:mobile")]
    assert r.person(5) == 5  # the refused new value still is a person of its own


def test_reason_names_the_highest_priority_type_over_its_limit() -> None:
    r = resolver(MEMBER, CARD, MEMBER, CARD, EMAIL)
    r.resolve([0, 1])
    r.resolve([2, 3, 4])
    assert r.resolve([4, 1]).rejected == [(4, 2, "limit:member_id")]


def test_blocked_nodes_are_skipped() -> None:
    r = resolver(MOBILE, MOBILE, EMAIL)
    out = r.resolve([0, 1, 2], blocked={1})
    assert out.blocked == [1] and out.person == 0
    assert r.person(1) is None
    out = r.resolve([1], blocked={1})
    assert out.person is None and out.blocked == [1]
    assert r.persons().tolist() == [0, -1, 0]
    res = rebuild_of([MOBILE, MOBILE, EMAIL], [[0, 1, 2], [1]], frozenset({1}))
    assert res.node_person.tolist() == [0, -1, 0]
    assert res.record_person[1].tolist() == [0, -1]


def test_non_merging_types_never_merge_two_persons() -> None:
    types = [COOKIE, MOBILE, MOBILE, COOKIE, COOKIE]
    records = [[0], [0, 1], [0, 2], [2, 3], [3, 4], [4, 0]]
    r, outcomes, final = replay(types, records)
    # cookie 0 starts its own person; known afterwards, it is only looked up
    assert [o.person for o in outcomes] == [0, 1, 2, 2, 2, 0]  # the last: cookie 0 first
    assert all(not o.merges and not o.rejected for o in outcomes)
    assert r.persons().tolist() == [0, 1, 2, 2, 2]  # cookie 3 attached to mobile 2's person
    res = rebuild_of(types, records)
    assert res.node_person.tolist() == r.persons().tolist()
    assert res.record_person[1].tolist() == final


def test_non_merging_values_do_not_count_toward_limits() -> None:
    rules = [TypeRule(0, "mobile", 80, 1), TypeRule(1, "cookie", 10, 1, merge=False)]
    r = Resolver(rules)
    r.ensure_nodes([0, 1, 1, 0])
    r.resolve([0, 1])
    r.resolve([0, 2])  # a second cookie: over its "limit", but non-merging values do not count
    assert r.persons().tolist() == [0, 0, 0, -1]
    assert r.resolve([3, 1]).person == 3  # a known cookie does not pull mobile 3 in


def test_duplicate_nodes_in_a_record_count_once() -> None:
    r = resolver(MOBILE, EMAIL)
    out = r.resolve([1, 0, 1, 0, 0])
    assert out.merges == [(0, 1, 1)] and out.person == 0 and out.rejected == []
    res = rebuild_of([MOBILE, EMAIL], [[1, 0, 1, 0, 0]])
    assert res.node_person.tolist() == [0, 0]


def test_load_and_persons_round_trip() -> None:
    types = [CARD, MOBILE, CARD, MOBILE, COOKIE, EMAIL]
    records = [[0, 1], [2, 3], [1, 2, 4], [5]]
    r, _, _ = replay(types, records)
    fresh = Resolver(RULES)
    fresh.ensure_nodes(types)
    fresh.load(r.persons())
    assert fresh.persons().tolist() == r.persons().tolist()
    # the loaded counts still refuse the second card, exactly like the original resolver
    assert fresh.resolve([3, 1]).rejected == r.resolve([3, 1]).rejected != []
    assert fresh.resolve([5, 3]).merges == r.resolve([5, 3]).merges != []
    assert fresh.person(5) == r.person(5) == 2
    with pytest.raises(ValueError):
        fresh.load(np.array([1, 1, -1, -1, -1, -1, -1]))  # longer than node_count
    with pytest.raises(ValueError):
        fresh.load(np.array([1, 0, -1, -1, -1, -1]))  # person 1 is not its own person


def test_rebuild_hard_component_matches_greedy_and_reports_rejections() -> None:
    types = [CARD, MOBILE, CARD, MOBILE, EMAIL]
    records = [[0, 1], [2, 3], [1, 2, 4], [4, 3]]
    r, outcomes, final = replay(types, records)
    res = rebuild_of(types, records)
    assert res.hard_components == 1
    assert res.node_person.tolist() == r.persons().tolist()
    assert res.record_person[1].tolist() == final
    assert (
        res.rejected
        == [(i, n, why) for i, o in enumerate(outcomes) for n, _, why in o.rejected]
        == [(2, 1, "limit:id_card")]
    )


def test_rebuild_takes_links_in_any_order_and_sparse_seqs() -> None:
    types = [MOBILE, EMAIL, MOBILE, COOKIE]
    seq = np.array([70, 10, 70, 10, 40, 40])
    node = np.array([3, 0, 2, 1, 1, 2])
    res = rebuild(RULES, np.array(types), seq, node)
    assert res.node_person.tolist() == [0, 0, 0, 0]
    assert res.record_person[0].tolist() == [10, 40, 70]
    assert res.record_person[1].tolist() == [0, 0, 0]
    empty = rebuild(RULES, np.array(types), np.array([], dtype=np.int64), np.array([]))
    assert empty.node_person.tolist() == [-1] * 4 and empty.hard_components == 0
    nothing = rebuild(RULES, np.array([], dtype=np.int64), np.array([]), np.array([]))
    assert len(nothing.node_person) == 0 and len(nothing.record_person[0]) == 0


def test_load_clamps_persons_already_over_a_limit() -> None:
    """A state stored under older, looser limits: such a person refuses every further union."""
    rules = [TypeRule(0, "card", 90, 1), TypeRule(1, "mobile", 80, 2), TypeRule(2, "email", 1, 0)]
    r = Resolver(rules)
    r.ensure_nodes([0] * 300 + [1, 1, 2])
    r.load(np.array([0] * 300 + [-1, -1, -1]))
    assert r.resolve([0, 300]).rejected == [(300, 300, "limit:card")]
    assert r.resolve([300, 301]).merges == [(300, 301, 301)]  # the mobile field is unharmed
    assert r.resolve([300, 302]).rejected == [(302, 302, "limit:email")]  # limit 0


def test_many_limited_types_beyond_one_machine_word() -> None:
    rules = [TypeRule(i, f"t{i}", 10 - i, 1000) for i in range(8)] + [TypeRule(8, "t8", 0, 1)]
    types = [i % 8 for i in range(32)] + [8, 8]
    records = [[i, i + 8, i + 16, i + 24] for i in range(8)] + [list(range(8)), [32, 0]]
    inc = Resolver(rules)
    inc.ensure_nodes(types)
    for rec in records:
        inc.resolve(rec)
    loaded = Resolver(rules)
    loaded.ensure_nodes(types)
    loaded.load(inc.persons())
    assert loaded.persons().tolist() == [0] * 33 + [-1]
    assert (
        loaded.resolve([33, 1]).rejected == inc.resolve([33, 1]).rejected == [(33, 33, "limit:t8")]
    )


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError):
        Resolver([TypeRule(1, "mobile", 1, 1)])
    with pytest.raises(ValueError):
        resolver().add_node(9)


# -- property: the incremental resolver and the rebuild agree ----------------------------------
@st.composite
def universes(draw: st.DrawFn):
    n_types = draw(st.integers(3, 4))
    non_merging = draw(st.sets(st.integers(0, n_types - 1), min_size=1, max_size=2))
    rules = [
        TypeRule(
            i,
            f"t{i}",
            draw(st.integers(0, 3)),  # ties between types are common
            draw(st.sampled_from([None, 0, 1, 1, 1, 2, 3])),
            i not in non_merging,
        )
        for i in range(n_types)
    ]
    n_nodes = draw(st.integers(1, 30))
    types = draw(st.lists(st.integers(0, n_types - 1), min_size=n_nodes, max_size=n_nodes))
    records = draw(
        st.lists(
            st.lists(st.integers(0, n_nodes - 1), min_size=1, max_size=4), min_size=1, max_size=40
        )
    )
    blocked = draw(st.frozensets(st.integers(0, n_nodes - 1), max_size=4))
    gaps = draw(st.lists(st.integers(1, 3), min_size=len(records), max_size=len(records)))
    shuffle = draw(st.randoms(use_true_random=False))
    return rules, types, records, blocked, np.cumsum(gaps), shuffle


@settings(max_examples=300, deadline=None)
@given(universes())
def test_incremental_equals_rebuild(universe) -> None:
    rules, types, records, blocked, seqs, shuffle = universe
    inc = Resolver(rules)
    inc.ensure_nodes(types)
    outcomes = [inc.resolve(rec, blocked) for rec in records]
    inc_persons = inc.persons()
    inc_records = [-1 if o.person is None else inc.person(o.person) for o in outcomes]
    inc_rejected = [
        (int(s), n, why) for s, o in zip(seqs, outcomes, strict=True) for n, _, why in o.rejected
    ]

    links = [(int(s), n) for s, rec in zip(seqs, records, strict=True) for n in rec]
    shuffle.shuffle(links)
    mask = np.zeros(len(types), dtype=bool)
    mask[list(blocked)] = True
    seq = np.array([s for s, _ in links], dtype=np.int64)
    node = np.array([n for _, n in links], dtype=np.int64)
    res = rebuild(rules, np.array(types), seq, node, mask)

    assert res.node_person.tolist() == inc_persons.tolist()
    assert res.record_person[0].tolist() == seqs.tolist()
    assert res.record_person[1].tolist() == inc_records
    assert res.rejected == inc_rejected

    # a rebuild of the first half loaded into a fresh resolver continues like the original
    half = len(records) // 2
    sel = seq <= (seqs[half - 1] if half else -1)
    first = rebuild(rules, np.array(types), seq[sel], node[sel], mask)
    cont = Resolver(rules)
    cont.ensure_nodes(types)
    cont.load(first.node_person)
    again = Resolver(rules)
    again.ensure_nodes(types)
    for rec in records[:half]:
        again.resolve(rec, blocked)
    for rec in records[half:]:
        a, b = cont.resolve(rec, blocked), again.resolve(rec, blocked)
        assert (a.person, a.merges, a.rejected, a.blocked) == (
            b.person,
            b.merges,
            b.rejected,
            b.blocked,
        )
    assert cont.persons().tolist() == inc_persons.tolist()
