"""Sources over the API and the CLI: keys, roles, validation errors that name the field."""

from __future__ import annotations

from rapport import accounts


def test_source_api_crud_and_roles(client, workspace, admin_headers):
    body = {"name": "payments", "kind": "server", "allowed_events": ["payment_failed"]}
    created = client.post("/api/sources", json=body, headers=admin_headers)
    assert created.status_code == 201
    source = created.json()
    assert source["write_key"].startswith("wk_") and source["secret_key"].startswith("sk_")
    assert source["allowed_events"] == ["payment_failed"]

    again = client.post("/api/sources", json=body, headers=admin_headers)
    assert again.status_code == 409 and again.json()["detail"].startswith("name:")
    bad = client.post("/api/sources", json={"name": "x", "kind": "fax"}, headers=admin_headers)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("kind:")

    viewer = {"Authorization": "Bearer " + accounts.create_token(workspace.db, "viewer")}
    assert client.get("/api/sources/payments", headers=viewer).json()["secret_key"] == "***"
    assert client.post("/api/sources", json={"name": "y"}, headers=viewer).status_code == 403
    assert client.get("/api/sources").status_code == 401

    patched = client.patch(
        "/api/sources/payments", json={"validation_mode": "strict"}, headers=admin_headers
    )
    assert patched.json()["validation_mode"] == "strict"
    assert client.delete("/api/sources/payments", headers=admin_headers).status_code == 204
    assert client.get("/api/sources/payments", headers=admin_headers).status_code == 404


def test_source_cli(server):
    created = server.cli_json(
        "source", "create", "shop", "--kind", "server", "--strict", "--allow", "a,b", "--allow", "c"
    )
    assert created["validation_mode"] == "strict"
    assert created["allowed_events"] == ["a", "b", "c"] and created["secret_key"]
    listed = server.cli("source", "list", "--json")
    assert "shop" in listed and created["write_key"] in listed
