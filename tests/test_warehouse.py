"""The warehouse: loading the event log (idempotent, resumable), typed columns, queries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson

from rapport.log import LogRecord
from rapport.warehouse import Warehouse


def _record(i: int, event: str = "view_product", source: str = "web") -> LogRecord:
    message = {
        "type": "track",
        "event": event,
        "messageId": f"m{i}",
        "properties": {"price": 5000 + i, "category": "fridge"},
        "context": {"ip": "10.0.0.1"},
    }
    return LogRecord(
        source=source,
        message_id=f"m{i}",
        type="track",
        event=event,
        user_id=f"u{i % 3}",
        anonymous_id=None,
        timestamp=f"2026-01-0{1 + i % 3}T10:00:00+00:00",
        received_at="2026-01-05T00:00:00+00:00",
        payload=orjson.dumps(message),
    )


class FakeLog:
    """Same read() contract as rapport.log.EventLog."""

    def __init__(self, records: list[LogRecord]) -> None:
        self.records = [(i + 1, r) for i, r in enumerate(records)]

    def read(self, after: int, limit: int) -> list[tuple[int, LogRecord]]:
        return [r for r in self.records if r[0] > after][:limit]


def test_a_pass_loads_up_to_its_limit_and_the_next_goes_on(tmp_path):
    """A backlog is loaded a bounded slice at a time (the follower's memory stays that of a
    normal pass), in order, nothing skipped."""
    wh = Warehouse(tmp_path / "wh.duckdb")
    log = FakeLog([_record(i) for i in range(25)])
    assert wh.load_from_log(log, batch=4, limit=10) == 12  # whole batches
    assert wh.log_offset() == 12
    assert wh.load_from_log(log, batch=4, limit=10) == 12
    assert wh.load_from_log(log, batch=4, limit=10) == 1
    assert wh.count_events() == 25


def test_load_from_log_is_idempotent_and_resumable(tmp_path):
    wh = Warehouse(tmp_path / "wh.duckdb")
    log = FakeLog([_record(i) for i in range(25)])
    assert wh.load_from_log(log, batch=10) == 25
    assert wh.load_from_log(log, batch=10) == 0  # nothing new: nothing twice
    log.records += [(26, _record(25, "add_to_cart"))]
    assert wh.load_from_log(log) == 1
    assert wh.log_offset() == 26
    assert wh.count_events() == 26
    assert wh.count_events(event="add_to_cart") == 1
    day2 = wh.count_events(
        since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 3, tzinfo=UTC)
    )
    assert day2 == 9
    newest = wh.events(event="view_product", limit=1)[0]
    assert newest["properties"]["category"] == "fridge"
    assert newest["context"] == {"ip": "10.0.0.1"}
    assert newest["log_offset"] > 0 and newest["day"].isoformat().startswith("2026-01-0")


def test_declared_properties_become_typed_columns(workspace):
    from rapport import catalog

    catalog.create_event_type(
        workspace.db,
        catalog.EventTypeBody(
            name="view_product",
            properties=[
                {"name": "price", "type": "number"},
                {"name": "category", "type": "string"},
            ],
        ),
    )
    workspace.log.append_many([_record(i) for i in range(3)])
    assert workspace.warehouse.load_from_log(workspace.log) == 3
    with workspace.warehouse.connect() as con:
        events = con.table("events")
        assert events.schema()["prop_price"].is_floating()
        prices = sorted(events.prop_price.to_pyarrow().to_pylist())
    assert prices == [5000.0, 5001.0, 5002.0]


def test_server_loads_collected_events_in_the_background(client, workspace, admin_headers):
    workspace.log.append_many([_record(i, source="app") for i in range(5)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if workspace.warehouse.count_events(source="app") == 5:
            break
        time.sleep(0.2)
    assert workspace.warehouse.count_events(source="app") == 5
    assert client.app.state.warehouse_loader.last_error is None
