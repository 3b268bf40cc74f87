"""The workspace, migrations on SQLite and PostgreSQL, accounts and the auth guard."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from rapport.db import metadata, upgrade
from rapport.workspace import Workspace


def _assert_in_sync(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], f"migrations do not match rapport.db.tables: {diff}"
        assert set(metadata.tables) <= set(inspect(conn).get_table_names())
    engine.dispose()


def test_migrations_match_tables_on_sqlite(tmp_path):
    _assert_in_sync(f"sqlite:///{tmp_path}/meta.db")


def test_migrations_match_tables_on_postgresql(pg_url):
    _assert_in_sync(pg_url)


def test_init_is_idempotent_and_creates_admin(settings):
    ws = Workspace(settings)
    password = ws.init()
    assert password and len(password) >= 12
    assert ws.init() is None
    from rapport import accounts

    assert accounts.authenticate(ws.db, "admin", password)["role"] == "admin"
    assert accounts.authenticate(ws.db, "admin", "wrong") is None
    ws.close()


def test_health_is_public(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_lists_api(client, admin_headers):
    assert client.get("/openapi.json").status_code == 401  # not public
    assert client.get("/openapi.json", headers=admin_headers).status_code == 200
