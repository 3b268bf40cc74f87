"""The metadata DB: SQLAlchemy tables, engine and Alembic migrations (SQLite or PostgreSQL)."""

from rapport.db.engine import connect, make_engine, upgrade
from rapport.db.tables import metadata

__all__ = ["connect", "make_engine", "metadata", "upgrade"]
