"""The condition language's text form, its validation against the tracking plan, and the API."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import ibis
import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy import insert

from condition_strategies import conditions
from rapport import catalog
from rapport.catalog import CompiledPlan, EventTypeBody, ItemPropertyBody, PropertyBody
from rapport.conditions.errors import ConditionError
from rapport.conditions.model import (
    And,
    Attr,
    Compare,
    Did,
    Duration,
    EventIs,
    HasTag,
    InSegment,
    Not,
    Op,
    Or,
    Sequence,
    Step,
    Window,
    from_json,
    to_json,
)
from rapport.conditions.text import parse, to_text
from rapport.conditions.validate import context, validate
from rapport.db.tables import segments, tags


# -- round trip --------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conditions(max_depth=3))
def test_text_round_trips_every_tree(cond):
    text = to_text(cond)
    assert parse(text) == cond, text
    assert from_json(to_json(cond)) == cond


def test_printer_keeps_a_where_clause_from_swallowing_the_next_condition():
    did = Did(event="pay", where=[Compare(field="amount", op=Op.gt, value=5)])
    age = Attr(field="age", op=Op.ge, value=30)
    tree = And(all=[did, age])
    assert to_text(tree) == "(did pay where amount > 5) and age >= 30"
    assert parse(to_text(tree)) == tree
    # written without parentheses, the where clause takes the comparison (documented)
    greedy = parse("did pay where amount > 5 and age >= 30")
    assert isinstance(greedy, Did) and [c.field for c in greedy.where] == ["amount", "age"]


def test_structure_survives_printing():
    a, b, c = (Attr(field=n, op=Op.is_set) for n in "abc")
    for tree in (
        And(all=[And(all=[a, b]), c]),
        And(all=[a]),
        Or(any=[And(all=[a, b]), c]),
        Not(cond=Or(any=[a, b])),
        Not(cond=Not(cond=a)),
    ):
        assert parse(to_text(tree)) == tree, to_text(tree)
    assert to_text(And(all=[a])) == "all(a is set)"
    assert to_text(Or(any=[And(all=[a, b]), c])) == "a is set and b is set or c is set"


def test_names_that_are_keywords_or_not_words_are_quoted():
    cond = Attr(field="count", op=Op.eq, value="x y")
    assert to_text(cond) == '"count" = "x y"'
    seg = InSegment(segment="30-60 days", bucket="高价值")
    assert to_text(seg) == 'in segment "30-60 days": 高价值'
    assert parse(to_text(seg)) == seg


# -- the examples of the language reference ----------------------------------------------------
def _d(amount: int, unit: str = "days") -> Duration:
    return Duration(amount=amount, unit=unit)  # type: ignore[arg-type]


EXAMPLES = [
    (
        'age >= 30 and city in ["上海", "北京"] and email is set',
        And(
            all=[
                Attr(field="age", op=Op.ge, value=30),
                Attr(field="city", op=Op.in_, value=["上海", "北京"]),
                Attr(field="email", op=Op.is_set),
            ]
        ),
    ),
    ("has tag high_net_worth", HasTag(tag="high_net_worth")),
    (
        'has tag value_tier in ["gold", "platinum"]',
        HasTag(tag="value_tier", values=["gold", "platinum"]),
    ),
    ("in segment vip", InSegment(segment="vip")),
    ("in segment lifecycle: retained", InSegment(segment="lifecycle", bucket="retained")),
    (
        "did book_hotel where price > 2000 count >= 30 in last 30 days",
        Did(
            event="book_hotel",
            where=[Compare(field="price", op=Op.gt, value=2000)],
            threshold=30,
            window=Window(last=_d(30)),
        ),
    ),
    (
        'did view_product where item.category = "fridge" and price >= 5000 '
        "at least 3 times in last 7 days",
        Did(
            event="view_product",
            where=[
                Compare(field="item.category", op=Op.eq, value="fridge"),
                Compare(field="price", op=Op.ge, value=5000),
            ],
            threshold=3,
            window=Window(last=_d(7)),
        ),
    ),
    (
        "did order_paid sum(amount) >= 10000 between 2026-01-01 and 2026-04-01",
        Did(
            event="order_paid",
            agg="sum",
            property="amount",
            threshold=10000,
            window=Window(
                start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 4, 1, tzinfo=UTC)
            ),
        ),
    ),
    ("not did pay since login", Not(cond=Did(event="pay", window=Window(since_event="login")))),
    (
        "sequence view_product then add_to_cart then order_paid within 1 hour",
        Sequence(
            steps=[Step(event="view_product"), Step(event="add_to_cart"), Step(event="order_paid")],
            within=_d(1, "hours"),
        ),
    ),
    (
        "sequence view_product then add_to_cart within 30 minutes without remove_from_cart",
        Sequence(
            steps=[Step(event="view_product"), Step(event="add_to_cart")],
            within=_d(30, "minutes"),
            excluding=Step(event="remove_from_cart"),
        ),
    ),
    (
        "sequence add_to_cart then not order_paid within 30 minutes",
        Sequence(
            steps=[Step(event="add_to_cart")],
            within=_d(30, "minutes"),
            then_not=Step(event="order_paid"),
        ),
    ),
    (
        "birthday anniversary in next 7 days",
        Attr(field="birthday", op=Op.anniversary_in_next, value=_d(7)),
    ),
    ("registered_at in last 90 days", Attr(field="registered_at", op=Op.in_last, value=_d(90))),
    (
        "event view_product where price >= 5000",
        EventIs(event="view_product", where=[Compare(field="price", op=Op.ge, value=5000)]),
    ),
    (
        "a = 1 or b = 2 and not c = 3",
        Or(
            any=[
                Attr(field="a", op=Op.eq, value=1),
                And(
                    all=[
                        Attr(field="b", op=Op.eq, value=2),
                        Not(cond=Attr(field="c", op=Op.eq, value=3)),
                    ]
                ),
            ]
        ),
    ),
    ('(a = 1 or b = 2) and c != "x"', None),
    ('score between 1.5 and 3 and vip = true and nick starts with "li"', None),
    ('tier not in ["a", null] and name contains "\\"q\\"\\n" and x is not set', None),
]


@pytest.mark.parametrize(("text", "expected"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_examples_parse_to_the_expected_tree(text, expected):
    cond = parse(text)
    if expected is not None:
        assert cond == expected
    assert parse(to_text(cond)) == cond


def test_friendly_spellings_mean_the_same():
    assert parse("did not pay since login") == parse("not did pay since login")
    assert parse("did pay at least 3 times in the last 7 d") == parse(
        "did pay count >= 3 in last 7 days"
    )
    assert parse("x is null") == parse("x is not set")
    assert parse("has tag tier = 3") == HasTag(tag="tier", values=["3"])
    assert parse("did pay, at least 2 times, in last 1 day") == parse(
        "did pay at least 2 times in last 1 day"
    )
    assert parse("AGE >= 3 AND in audience vip") == And(
        all=[Attr(field="AGE", op=Op.ge, value=3), InSegment(segment="vip")]
    )


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("age >= ", "line 1, column 8", "expected a value after `>=`"),
        ("age => 30", "line 1, column 5", "unknown operator `=>`; did you mean `>=`?"),
        ("age == 30", "line 1, column 5", "unknown operator `==`; did you mean `=`?"),
        ("city = 上海", "line 1, column 8", "expected a value after `=` (text is quoted"),
        ('age >= 30 and\n  (city = "x"', "line 2, column 14", "expected `)`"),
        ('name = "abc', "line 1, column 8", "unterminated string"),
        ("age betwen 1 and 2", "line 1, column 5", "did you mean `between`?"),
        ("did pay sum >= 3", "line 1, column 1", "`sum` needs the property"),
        ("did pay in last 1.5 days", "line 1, column 17", "a whole number"),
        ("sequence a then b", "line 1, column 18", "expected `within`"),
        ("sequence a within 1 hour", "line 1, column 1", "needs two steps"),
        ("age >= 30 age", "line 1, column 11", "expected `and`, `or` or the end"),
        ("did where x = 1", "line 1, column 5", "expected an event name after `did`"),
        ("x = 1 and", "line 1, column 10", "expected a condition"),
        ("x in next 3 weeks", "line 1, column 13", "expected a unit"),
    ],
)
def test_errors_name_the_position_and_the_reason(text, path, message):
    with pytest.raises(ConditionError) as caught:
        parse(text)
    assert caught.value.path == path
    assert message in caught.value.message


# -- validation against a small plan -----------------------------------------------------------
def _plan(workspace) -> CompiledPlan:
    db = workspace.db
    view = EventTypeBody(
        name="view_product",
        properties=[
            PropertyBody(name="price", type="number"),
            PropertyBody(name="item_id", type="string"),
        ],
    )
    catalog.create_event_type(db, view)
    paid = EventTypeBody(
        name="order_paid",
        properties=[
            PropertyBody(name="amount", type="number"),
            PropertyBody(name="channel", type="string"),
        ],
    )
    catalog.create_event_type(db, paid)
    catalog.create_event_type(db, EventTypeBody(name="login"))
    catalog.add_item_property(
        db, ItemPropertyBody(item_type="product", name="category", type="string")
    )
    catalog.add_user_property(db, PropertyBody(name="age", type="integer"))
    catalog.add_user_property(db, PropertyBody(name="birthday", type="datetime"))
    return catalog.current_plan(db)


def test_validate_reports_every_problem_with_its_path(workspace):
    plan = _plan(workspace)
    cond = parse(
        'did view_product where prise > 3 and item.colour = "red" '
        'and price = "cheap" in last 7 days '
        "and did order_paid sum(channel) > 3 "
        "and did view_prodcut "
        'and agee >= 30 and age = "thirty" and age in last 3 days '
        "and has tag high_net_wroth and in segment lifecycle: retaind "
        "and in segment vipp and did login since logn"
    )
    errors = validate(
        cond,
        plan,
        tags={"high_net_worth"},
        segments={"lifecycle": {"retained", "lost"}, "vip": set()},
        attrs={"age": "integer", "birthday": "datetime", "city": "string"},
    )
    found = {(e.path, e.message) for e in errors}
    assert found == {
        (
            "$.all[0].where[0].field",
            "unknown property `prise` on event view_product; did you mean `price`?",
        ),
        ("$.all[0].where[1].field", "unknown item property `colour`"),
        ("$.all[0].where[2].value", '`price` is a number, not the text "cheap"'),
        ("$.all[1].property", "`sum` needs a numeric property; `channel` is string"),
        ("$.all[2].event", "unknown event `view_prodcut`; did you mean `view_product`?"),
        ("$.all[3].field", "unknown attribute `agee`; did you mean `age`?"),
        ("$.all[4].value", '`age` is an integer, not the text "thirty"'),
        ("$.all[5].op", "`in last` needs a date/time; `age` is integer"),
        ("$.all[6].tag", "unknown tag `high_net_wroth`; did you mean `high_net_worth`?"),
        (
            "$.all[7].bucket",
            "unknown bucket `retaind` of segment `lifecycle`; did you mean `retained`?",
        ),
        ("$.all[8].segment", "unknown segment `vipp`; did you mean `vip`?"),
        ("$.all[9].window.since_event", "unknown event `logn`; did you mean `login`?"),
    }


def test_a_valid_condition_has_no_errors(workspace):
    plan = _plan(workspace)
    cond = parse(
        'did view_product where item.category = "fridge" and price >= 5000 at least 3 times '
        "in last 7 days and birthday anniversary in next 7 days and age between 18 and 30 "
        "and sequence view_product then order_paid where amount > 10 within 1 hour"
    )
    attrs = {"age": "integer", "birthday": "datetime"}
    assert validate(cond, plan, tags=set(), segments={}, attrs=attrs) == []


def test_validate_checks_step_references_against_the_plan(workspace):
    plan = _plan(workspace)
    cond = parse(
        "sequence view_product as a then order_paid where channel = a.item_id and "
        "amount >= a.price and amount = a.item_id and channel = a.colour within 30 minutes"
    )
    errors = validate(cond, plan, tags=set(), segments={}, attrs={})
    assert {(e.path, e.message) for e in errors} == {
        (
            "$.steps[1].where[2].value",
            "`amount` is number but `a.item_id` is string: a reference compares like with like",
        ),
        (
            "$.steps[1].where[3].value",
            "unknown property `colour` on event view_product",
        ),
    }


def test_context_reads_the_workspace(workspace):
    _plan(workspace)
    now = datetime.now(UTC)
    with workspace.db.begin() as conn:
        conn.execute(
            insert(tags).values(
                name="high_net_worth", kind="rule", definition={}, created_at=now, updated_at=now
            )
        )
        for name, kind, definition in [
            ("gender_age", "segmentation", {"buckets": [{"name": "f_18"}], "other": True}),
            ("lifecycle", "lifecycle", {"activation_events": ["order_paid"]}),
            ("vip", "audience", {"condition": {"kind": "tag", "tag": "high_net_worth"}}),
        ]:
            conn.execute(
                insert(segments).values(
                    name=name, kind=kind, definition=definition, created_at=now, updated_at=now
                )
            )
    with workspace.warehouse.connect() as con:
        schema = ibis.schema({"person_key": "int64", "city": "string", "updated_at": "timestamp"})
        con.create_table("profiles", schema=schema)
    ctx = context(workspace)
    assert ctx.tags == {"high_net_worth"}
    assert ctx.segments["gender_age"] == {"f_18", "other"}
    assert "retained" in ctx.segments["lifecycle"]
    assert ctx.segments["vip"] == set()
    assert ctx.attrs == {"age": "integer", "birthday": "datetime", "city": "string"}
    assert ctx.check(parse("in segment lifecycle: lost and has tag high_net_worth")) == []


# -- the API -----------------------------------------------------------------------------------
def test_api_parse_print_validate(client, admin_headers, workspace):
    _plan(workspace)
    text = "did order_paid sum(amount) >= 10000 in last 30 days and age >= 30"
    parsed = client.post("/api/conditions/parse", json={"text": text}, headers=admin_headers)
    assert parsed.status_code == 200, parsed.text
    body = parsed.json()
    assert body["text"] == text
    assert body["condition"]["kind"] == "and"
    assert body["condition"]["all"][0]["agg"] == "sum"

    printed = client.post(
        "/api/conditions/print", json={"condition": body["condition"]}, headers=admin_headers
    )
    assert printed.json() == {"text": text}

    valid = client.post("/api/conditions/validate", json={"text": text}, headers=admin_headers)
    assert valid.json() == {"valid": True, "errors": []}

    wrong = client.post(
        "/api/conditions/validate",
        json={"condition": to_json(parse("did view_product where prise > 3"))},
        headers=admin_headers,
    )
    assert wrong.json() == {
        "valid": False,
        "errors": [
            {
                "path": "$.where[0].field",
                "message": "unknown property `prise` on event view_product; did you mean `price`?",
            }
        ],
    }


def test_api_errors(client, admin_headers):
    bad = client.post("/api/conditions/parse", json={"text": "age => 3"}, headers=admin_headers)
    assert bad.status_code == 422
    assert bad.json() == {
        "detail": [
            {"path": "line 1, column 5", "message": "unknown operator `=>`; did you mean `>=`?"}
        ]
    }
    malformed = {"kind": "and", "all": [{"kind": "attr", "field": "age", "op": "=>"}]}
    printed = client.post(
        "/api/conditions/print", json={"condition": malformed}, headers=admin_headers
    )
    assert printed.status_code == 422
    assert printed.json()["detail"][0]["path"] == "$.all[0].op"
    syntax = client.post("/api/conditions/validate", json={"text": "did"}, headers=admin_headers)
    assert syntax.json()["valid"] is False
    assert syntax.json()["errors"][0]["path"] == "line 1, column 4"
    anonymous = client.post("/api/conditions/parse", json={"text": "a is set"})
    assert anonymous.status_code == 401


# -- the language reference stays true ---------------------------------------------------------
DOC = Path(__file__).parents[1] / "docs" / "conditions.md"


def test_the_reference_examples_and_errors_are_true():
    doc = DOC.read_text()
    quick = doc.split("## Quick examples")[1].split("```")[1]
    examples = [line for line in quick.splitlines() if line.strip()]
    assert len(examples) == 15
    for line in examples:
        cond = parse(line)
        assert to_text(cond) in (line, line.replace("count >= 30", "at least 30 times"))
    rows = re.findall(r"^\| `(.*?)` \| (line \d+, column \d+): (.*) \|$", doc, re.M)
    assert len(rows) == 7
    for text, path, message in rows:
        with pytest.raises(ConditionError) as caught:
            parse(text)
        assert (caught.value.path, caught.value.message) == (path, message.replace("``", "`"))
