"""Imports over HTTP and from the command line beside a running server."""

from __future__ import annotations

import json

import httpx

from rapport import accounts

CSV = "member_id,mobile,birthday\nm1,138 0013 8000,1990-01-02\nm2,123,1991-01-01\nm3,13912345678,\n"
MAPPING = {
    "target": "profiles",
    "key": "member_id",
    "identifiers": {"member_id": "member_id", "mobile": "mobile"},
    "properties": ["birthday"],
}


def test_define_run_and_read_imports_over_the_api(client, admin_headers, workspace, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    body = {"name": "members", "source": "member_db", "uri": str(path), "mapping": MAPPING}
    viewer = {"Authorization": "Bearer " + accounts.create_token(workspace.db, "viewer")}
    assert client.post("/api/imports", json=body, headers=viewer).status_code == 403
    assert client.get("/api/imports/runs").status_code == 401

    created = client.post("/api/imports", json=body, headers=admin_headers)
    assert created.status_code == 201, created.text
    run = created.json()
    assert (run["rows_loaded"], run["rows_quarantined"], run["status"]) == (2, 1, "done")

    assert [i["name"] for i in client.get("/api/imports", headers=viewer).json()] == ["members"]
    runs = client.get("/api/imports/runs", params={"source": "member_db"}, headers=viewer).json()
    assert [r["id"] for r in runs] == [run["id"]]
    one = client.get(f"/api/imports/runs/{run['id']}", headers=viewer).json()
    assert one["quality"]["birthday"]["fill_rate"] == round(2 / 3, 4)
    assert client.get("/api/imports/runs/999", headers=viewer).status_code == 404

    rerun = client.post("/api/imports/members/run", headers=admin_headers).json()
    assert (rerun["rows_loaded"], rerun["rows_duplicate"]) == (0, 2)

    quality = client.get("/api/quality", params={"source": "member_db"}, headers=viewer).json()
    fields = {f["field"]: f for f in quality["sources"][0]["fields"]}
    assert fields["mobile"]["invalid"] == 1 and fields["birthday"]["filled"] == 1


def test_api_errors_name_the_field(client, admin_headers, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    bad = {
        "source": "s",
        "uri": str(path),
        "mapping": {**MAPPING, "identifiers": {"mobile": "phone"}},
    }
    response = client.post("/api/imports", json=bad, headers=admin_headers)
    assert response.status_code == 422
    assert "unknown identifier type 'phone'" in response.text
    missing = {"source": "s", "uri": str(path), "mapping": {**MAPPING, "properties": ["nme"]}}
    response = client.post("/api/imports", json=missing, headers=admin_headers)
    assert response.status_code == 422
    assert "properties.nme: column 'nme' not found" in response.json()["detail"]


def test_cli_import_beside_a_running_server(server, tmp_path):
    """The CLI and the server's background loader share the warehouse file without failing."""
    path = tmp_path / "members.csv"
    path.write_text(CSV)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(json.dumps(MAPPING))  # JSON is YAML
    run = server.cli_json(
        "import", "file", str(path), "--source", "member_db", "--mapping", str(mapping)
    )
    assert (run["rows_loaded"], run["rows_quarantined"]) == (2, 1)
    runs = json.loads(server.cli("import", "runs", "--json"))
    assert [r["id"] for r in runs] == [run["id"]]
    token = server.cli_json("token", "create", "--role", "admin")["token"]
    quality = httpx.get(
        server.url + "/api/quality", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert quality.status_code == 200
    assert quality.json()["sources"][0]["source"] == "member_db"


def test_an_offset_past_64_bits_is_a_422_naming_it(client, admin_headers):
    """PostgreSQL's bigint (and SQLite's INTEGER) stop at 2**63 - 1: a larger offset is the
    caller's error, said as one, not the store's overflow as a 500 (found by schemathesis)."""
    for path in ("/api/imports/runs", "/api/identity/candidates", "/api/audit", "/api/events/tail"):
        key = "after" if path == "/api/events/tail" else "offset"
        response = client.get(path, params={key: 2**63}, headers=admin_headers)
        assert response.status_code == 422, (path, response.text)
        assert key in response.text
        assert client.get(path, params={key: 2**63 - 1}, headers=admin_headers).status_code == 200
