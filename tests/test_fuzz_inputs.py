"""Hypothesis fuzzing of what users type or upload (issue 7): the condition text parser,
templates, and the file importers. Arbitrary input gets a result or the module's own clear
error, never another exception; templates never reach Python internals and are bounded.

(The parser's round trip of generated trees is in test_conditions_text.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import copy_home
from rapport.conditions.errors import ConditionError
from rapport.conditions.text import KEYWORDS, parse
from rapport.delivery.errors import DeliveryError
from rapport.delivery.templating import MAX_OUTPUT, MAX_SECONDS, render_json, render_text
from rapport.ingest import quarantine
from rapport.ingest.importer import ImportFailed, ImportSpec, run_import
from rapport.workspace import Workspace

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))


# -- the condition text parser ------------------------------------------------------------------
_PIECES = sorted(KEYWORDS) + [
    "=", "!=", "<", "<=", ">", ">=", "=>", "==", "(", ")", "[", "]", ",", ":", '"', "'",
    "\\", "\\u12", "-", ".", "1", "-3.5e9", "1e999", "2026-01-02", "2026-13-45T25:61",
    "x", "item.category", "a.item_id", "上海", "\n", " ", "\x00", "𝄞",
]  # fmt: skip
condition_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_PIECES), max_size=40).map(" ".join),
    st.lists(st.sampled_from(_PIECES), max_size=40).map("".join),
)


def _check_parse(text: str) -> None:
    try:
        parsed = parse(text)
    except ConditionError as exc:
        assert exc.path.startswith("line "), exc.path  # where, as line and column
        assert exc.message
        return
    assert isinstance(parsed, BaseModel)  # a node of the tree (Condition is a union)


@QUICK
@given(condition_texts)
@example("(" * 5000 + "x = 1" + ")" * 5000)
@example("not " * 5000 + "x = 1")
@example('x = "\\ud800"')
def test_condition_text_gives_a_condition_or_a_positioned_error(text: str) -> None:
    _check_parse(text)


@pytest.mark.long
@LONG
@given(condition_texts)
def test_condition_text_thorough(text: str) -> None:
    _check_parse(text)


# -- templates ------------------------------------------------------------------------------------
_TEMPLATE_PIECES = [
    "{{", "}}", "{%", "%}", "{#", "#}", " ", "x", "name", "person.city", "for", "in", "endfor",
    "if", "endif", "set", "=", "range(", "range(10**9)", ")", "9", "**", "*", "/", "0", "%",
    "'s'", '"', "|", "upper", "center(", "format", "replace(", ",", "join", "list", "lipsum(",
    "__class__", "__init__", "__globals__", "__mro__", "__subclasses__()", ".", "[", "]",
    "cycler", "joiner", "namespace", "macro", "endmacro", "call", "loop", "self", "dict",
    "attr(", "'__class__'", "mro", "-", "~", "(", "1e308", "True", "none", "\n", "中文",
]  # fmt: skip
templates = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(_TEMPLATE_PIECES), max_size=30).map("".join),
    st.lists(st.sampled_from(_TEMPLATE_PIECES), max_size=30).map(" ".join),
)
CONTEXT = {"name": "张三", "x": 3, "person": {"city": "上海"}, "items": [1, 2, 3]}


def _check_render(source: str) -> None:
    started = time.monotonic()
    try:
        out = render_text(source, dict(CONTEXT))
    except DeliveryError as exc:
        assert str(exc).startswith("template:"), exc  # the field, then what was wrong
    else:
        assert isinstance(out, str) and len(out) <= MAX_OUTPUT
        for leak in ("<class ", "<built-in", "<module ", "<function ", "__builtins__"):
            assert leak not in out, f"{source!r} rendered {out[:200]!r}"
    assert time.monotonic() - started < MAX_SECONDS + 1


@QUICK
@given(templates)
def test_any_template_renders_or_is_a_template_error(source: str) -> None:
    _check_render(source)


@pytest.mark.long
@LONG
@given(templates)
def test_templates_thorough(source: str) -> None:
    _check_render(source)


ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ ''|attr('__class__') }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ dict.__base__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ range.__self__ }}",
    "{{ lipsum.__globals__ }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_templates_reach_no_python_internals(source: str) -> None:
    with pytest.raises(DeliveryError) as refused:
        render_text(source, dict(CONTEXT), "content.body")
    assert str(refused.value).startswith("content.body:")


HUGE = [
    ("{% for i in range(10**9) %}x{% endfor %}", "loop iterations"),
    ("{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}", "loop"),
    ("{{ 'x' * 10**9 }}", "over the limit"),
    ("{{ (99999 ** 99999) ** 99999 }}", "too large"),
    ("{{ 'x'|center(10**9) }}", "over the limit"),
    ("{{ '%999999999d'|format(1) }}", "width"),
    ("{{ '{:>999999999}'.format(1) }}", "width"),
    ("{{ 'a'.ljust(10**9) }}", "over the limit"),
    ("{% set s = 'x' * 900000 %}{{ s ~ s ~ s }}", "over the limit"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "over the limit"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "calls itself"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "says"), HUGE)
def test_huge_or_endless_templates_are_refused_quickly(source: str, says: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=says):
        render_text(source, {})
    assert time.monotonic() - started < MAX_SECONDS + 0.5


def test_ordinary_templates_still_render() -> None:
    context = {"name": "张三", "items": [1, 2, 3], "order": {"id": 123456, "total": 6999.5}}
    text = (
        "{{ name }}: {% for i in items %}{{ i }}{{ ',' if not loop.last }}{% endfor %} "
        "#{{ order.id }} ¥{{ '%.2f'|format(order.total) }} {{ 'x' * 3 }} {{ 2 ** 10 }}"
        " {{ '{:>8}'.format(order.id) }} {{ range(3)|list|length }}"
    )
    assert render_text(text, context) == "张三: 1,2,3 #123456 ¥6999.50 xxx 1024   123456 3"
    assert render_json('{"n": {{ order.id }}}', context) == b'{"n":123456}'


# -- importers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def import_ws(migrated_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = Workspace(copy_home(migrated_home, tmp_path_factory.mktemp("fuzz-import")))
    yield ws
    ws.close()


MAPPING = {
    "target": "profiles",
    "key": "member_id",
    "identifiers": {"member_id": "member_id", "mobile": "mobile"},
    "properties": ["name"],
}
_CELLS = ["M1", "M2", "", '"', '""', "a,b", "张三", "\x00", "\r", "13800138000", "1e9", "null"]
csv_bodies = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.lists(st.sampled_from(_CELLS) | st.text(max_size=8), min_size=0, max_size=5),
        max_size=8,
    ).map(lambda rows: "\n".join(",".join(r) for r in rows).encode()),
).map(lambda body: b"member_id,mobile,name\n" + body)
jsonl_bodies = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.one_of(
            st.just('{"member_id": "M1", "mobile": "13800138000", "name": "张三"}'),
            st.just('{"member_id": 5, "name": null}'),
            st.just("[1, 2]"),
            st.just("{"),
            st.text(max_size=30),
        ),
        max_size=6,
    ).map(lambda lines: "\n".join(lines).encode()),
).map(lambda body: b'{"member_id": "M0", "mobile": "", "name": "x"}\n' + body)


def _check_import(ws: Workspace, tmp: Path, body: bytes, suffix: str) -> None:
    path = tmp / f"fuzz{suffix.replace('.jl', '.jsonl')}"
    path.write_bytes(body)
    before = len(quarantine.list_entries(ws.db, limit=100_000))
    try:
        run = run_import(ws, ImportSpec(source="fuzz", uri=str(path), mapping=MAPPING))
    except ImportFailed as exc:
        assert "fuzz" in str(exc)  # names the import (and the file)
        return
    counted = run["rows_loaded"] + run["rows_quarantined"] + run["rows_duplicate"]
    assert run["status"] == "done" and counted == run["rows_read"]
    added = len(quarantine.list_entries(ws.db, limit=100_000)) - before
    assert added <= run["rows_quarantined"]  # the rest were open already (no second copies)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=csv_bodies)
def test_arbitrary_csv_is_loaded_or_quarantined_or_a_clear_error(import_ws, tmp_path, body):
    _check_import(import_ws, tmp_path, body, ".csv")


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=jsonl_bodies)
def test_arbitrary_json_lines_are_loaded_or_a_clear_error(import_ws, tmp_path, body):
    _check_import(import_ws, tmp_path, body, ".jsonl")


@pytest.mark.long
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(csv_bodies.map(lambda b: (b, ".csv")), jsonl_bodies.map(lambda b: (b, ".jsonl")))
)
def test_arbitrary_files_thorough(import_ws, tmp_path, body):
    _check_import(import_ws, tmp_path, *body)
