"""The ``profile`` setting: ``embedded`` needs nothing; ``cluster`` moves the stores out and
refuses to start without PostgreSQL (issue 7)."""

from __future__ import annotations

import pytest

from rapport.settings import load_settings


def test_embedded_is_the_default(tmp_path):
    s = load_settings(home=tmp_path)
    assert s.profile == "embedded"
    assert s.metadata_url.startswith("sqlite:///")
    stores = (s.log_backend, s.stream_backend, s.warehouse_backend)
    assert stores == ("sqlite", "embedded", "duckdb")


def test_cluster_sets_its_stores_under_what_is_set_explicitly(tmp_path, monkeypatch):
    (tmp_path / "rapport.toml").write_text(
        '[rapport]\nprofile = "cluster"\n'
        'database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"\n'
        'warehouse_backend = "duckdb"\n'
    )
    monkeypatch.setenv("RAPPORT_HOME", str(tmp_path))
    s = load_settings()
    assert (s.log_backend, s.stream_backend) == ("nats", "nats")
    assert s.warehouse_backend == "duckdb"  # explicit beats the profile
    assert not s.dispatcher_in_process and not s.loader_in_process


def test_cluster_without_postgresql_says_what_to_set(tmp_path):
    with pytest.raises(ValueError, match="database_url = 'postgresql"):
        load_settings(home=tmp_path, profile="cluster")
    with pytest.raises(ValueError, match="one of embedded, cluster"):
        load_settings(home=tmp_path, profile="big")
