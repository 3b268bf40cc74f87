"""The workspace: one object holding the open stores, shared by the CLI and the server."""

from __future__ import annotations

import secrets
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from rapport import accounts
from rapport.db import make_engine, upgrade
from rapport.db.tables import users
from rapport.settings import Settings, get_settings

if TYPE_CHECKING:
    from rapport.log import EventLog
    from rapport.warehouse import Warehouse


class Workspace:
    """Opens stores lazily so that a CLI command touches only what it needs."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.settings.ensure_home()

    @cached_property
    def db(self) -> Engine:
        return make_engine(self.settings.metadata_url)

    @cached_property
    def log(self) -> EventLog:
        from rapport.log import EventLog

        return EventLog.open(self.settings)

    @cached_property
    def warehouse(self) -> Warehouse:
        from rapport.warehouse import Warehouse

        return Warehouse.open(self.settings)

    def init(self) -> str | None:
        """Migrate the metadata DB; create the admin user on first run.

        Returns the admin's generated password the first time, None afterwards (idempotent).
        """
        upgrade(self.settings.metadata_url)
        with self.db.connect() as conn:
            has_admin = conn.execute(select(func.count()).select_from(users)).scalar_one() > 0
        if has_admin:
            return None
        password = secrets.token_urlsafe(12)
        accounts.create_user(self.db, "admin", password, accounts.Role.admin)
        return password

    def close(self) -> None:
        for name in ("log", "warehouse"):
            store = self.__dict__.pop(name, None)
            if store is not None:
                store.close()
        engine = self.__dict__.pop("db", None)
        if engine is not None:
            engine.dispose()
