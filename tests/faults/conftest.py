"""Fixtures of the fault tests (``helpers`` has the rest); every module here is ``long``."""

from faults.helpers import fault_server, pg_db  # noqa: F401 - fixtures
