"""A declared event property lives in its typed ``prop_<name>`` column, for every event.

The compilers read that column alone (no JSON parsed per event), so a property declared after
its events were loaded must be backfilled into its new column, read as the conditions read
the JSON (``conditions.reference``: a number may arrive as text, text as a number).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from rapport import catalog
from rapport.conditions import reference, to_ibis
from rapport.conditions.model import Compare, Did, Op
from rapport.log import LogRecord
from rapport.stream.state import EventRec, PersonState

AS_OF = datetime(2026, 1, 10, tzinfo=UTC)
#: person -> the properties of their one view_product event (as sent: mixed types)
SENT: dict[int, dict[str, Any]] = {
    1: {"price": 5000, "size": "L"},
    2: {"price": "7500.5", "size": 42},  # a number as text, a text property sent as a number
    3: {"price": "cheap", "size": True},  # not a number
    4: {"size": None},  # no price, a JSON null
}


def _record(person: int, props: dict[str, Any]) -> LogRecord:
    message = {"type": "track", "event": "view_product", "properties": props}
    return LogRecord(
        source="web",
        message_id=f"m{person}",
        type="track",
        event="view_product",
        user_id=f"u{person}",
        anonymous_id=None,
        timestamp="2026-01-05T10:00:00+00:00",
        received_at="2026-01-05T10:00:01+00:00",
        payload=orjson.dumps(message),
    )


def _declare(workspace: Any) -> None:
    catalog.create_event_type(
        workspace.db,
        catalog.EventTypeBody(
            name="view_product",
            properties=[{"name": "price", "type": "number"}, {"name": "size", "type": "string"}],
        ),
    )


@pytest.fixture
def loaded_then_declared(workspace: Any) -> Any:
    """Events loaded while the plan knew nothing of ``price`` / ``size``; then declared and
    one more event loaded (the loader adds the columns: that backfills the old events)."""
    workspace.log.append_many([_record(p, props) for p, props in SENT.items() if p != 4])
    assert workspace.warehouse.load_from_log(workspace.log) == 3
    with workspace.warehouse.connect() as con:
        assert "prop_price" not in con.table("events").columns
    _declare(workspace)
    workspace.log.append_many([_record(4, SENT[4])])
    assert workspace.warehouse.load_from_log(workspace.log) == 1
    with workspace.warehouse.connect() as con:  # identity resolution's part, done by hand
        con.raw_sql("UPDATE events SET person_key = CAST(substr(user_id, 2) AS BIGINT)")
    return workspace


def _columns(workspace: Any) -> dict[int, tuple[Any, Any]]:
    with workspace.warehouse.connect() as con:
        rows = con.table("events").select("person_key", "prop_price", "prop_size")
        return {
            r["person_key"]: (r["prop_price"], r["prop_size"])
            for r in rows.to_pyarrow().to_pylist()
        }


def test_a_property_declared_later_is_backfilled_as_the_conditions_read_it(
    loaded_then_declared: Any,
) -> None:
    assert _columns(loaded_then_declared) == {
        1: (5000.0, "L"),
        2: (7500.5, "42"),
        3: (None, "true"),
        4: (None, None),
    }


@pytest.mark.parametrize(
    "where,expected",
    [
        (Compare(field="price", op=Op.gt, value=6000), {2}),
        (Compare(field="price", op=Op.ge, value=5000), {1, 2}),
        (Compare(field="size", op=Op.eq, value="42"), {2}),
        (Compare(field="size", op=Op.in_, value=["L", "true"]), {1, 3}),
        (Compare(field="price", op=Op.is_set), {1, 2, 3}),
        (Compare(field="size", op=Op.not_set), {4}),
    ],
)
def test_conditions_on_the_backfilled_column_still_match(
    loaded_then_declared: Any, where: Compare, expected: set[int]
) -> None:
    cond = Did(event="view_product", where=[where])
    states = [
        PersonState(
            p, {}, {}, {}, [EventRec(datetime(2026, 1, 5, 10, tzinfo=UTC), "view_product", props)]
        )
        for p, props in SENT.items()
    ]
    assert reference.matching(cond, states, AS_OF, attr_types={}) == expected
    with loaded_then_declared.warehouse.connect() as con:
        for complete in (True, False):  # the column alone, and the column-or-JSON fallback
            ctx = to_ibis.BatchContext(con, AS_OF, props_in_columns=complete)
            assert set(to_ibis.persons(cond, ctx)) == expected, complete


def test_the_loader_types_new_events_the_same_way(workspace: Any) -> None:
    _declare(workspace)
    workspace.log.append_many([_record(p, props) for p, props in SENT.items()])
    assert workspace.warehouse.load_from_log(workspace.log) == 4
    with workspace.warehouse.connect() as con:
        con.raw_sql("UPDATE events SET person_key = CAST(substr(user_id, 2) AS BIGINT)")
    assert _columns(workspace) == {
        1: (5000.0, "L"),
        2: (7500.5, "42"),
        3: (None, "true"),
        4: (None, None),
    }


def test_a_writer_waits_for_another_adding_the_same_column(workspace: Any) -> None:
    """The follower and an importer both add a newly declared column: the one that comes
    second conflicts until the first commits, then finds the column (no failed pass)."""
    workspace.log.append_many([_record(1, SENT[1])])
    assert workspace.warehouse.load_from_log(workspace.log) == 1
    _declare(workspace)
    with workspace.warehouse.connect() as first, workspace.warehouse.connect() as second:
        first.raw_sql("BEGIN TRANSACTION")
        first.raw_sql('ALTER TABLE events ADD COLUMN "prop_price" DOUBLE')
        commit = threading.Timer(0.5, first.raw_sql, ["COMMIT"])
        commit.start()
        columns = workspace.warehouse.add_prop_columns(second)
        commit.join()
    assert {"price", "size"} <= set(columns)
