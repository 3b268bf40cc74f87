"""The durable event log: every accepted event, in order, before any processing.

``EventLog.open(settings)`` gives the embedded implementation (a SQLite WAL file, ``sqlite``)
or, with ``log_backend = "nats"``, a NATS JetStream stream shared by collector processes
(``jetstream``); both behind ``base.EventLog``.
"""

from rapport.log.base import EventLog, LogOverloaded, LogWriteFailed
from rapport.log.records import FLAG_BAD_TIMESTAMP, FLAG_CLOCK_SKEW, FLAG_REPLAYED, LogRecord

__all__ = [
    "FLAG_BAD_TIMESTAMP",
    "FLAG_CLOCK_SKEW",
    "FLAG_REPLAYED",
    "EventLog",
    "LogOverloaded",
    "LogWriteFailed",
    "LogRecord",
]
