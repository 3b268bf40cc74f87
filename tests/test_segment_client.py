"""The official Segment Python client, unchanged, pointed at a real ``rapport serve``."""

from __future__ import annotations

import httpx
import segment.analytics as analytics


def test_segment_python_client_against_real_server(server):
    source = server.cli_json("source", "create", "web")
    client = analytics.Client(
        write_key=source["write_key"], host=server.url, sync_mode=False, max_retries=1
    )
    errors = []
    client.on_error = lambda error, _batch: errors.append(error)
    client.track("user-1", "view_product", {"category": "fridge", "price": 6999})
    client.track("user-1", "add_to_cart", {"item_id": "F-1"})
    client.identify("user-1", {"email": "a@example.com", "city": "Shanghai"})
    client.alias("anon-42", "user-1")
    client.flush()
    client.shutdown()
    assert errors == []

    assert server.cli("events", "count").strip() == "4"
    assert server.cli("events", "count", "--event", "view_product").strip() == "1"
    assert server.cli("events", "count", "--source", "web").strip() == "4"

    token = server.cli_json("token", "create", "--role", "viewer")["token"]
    tail = httpx.get(
        server.url + "/api/events/tail", headers={"Authorization": f"Bearer {token}"}
    ).json()
    by_type = {e["type"]: e for e in tail["events"]}
    assert set(by_type) == {"track", "identify", "alias"}
    assert by_type["identify"]["payload"]["traits"]["city"] == "Shanghai"
    assert by_type["alias"]["payload"]["previousId"] == "anon-42"
    track = next(e for e in tail["events"] if e["event"] == "view_product")
    assert track["payload"]["properties"] == {"category": "fridge", "price": 6999}
    assert track["payload"]["context"]["library"]["name"] == "analytics-python"
