"""The durable event log: every accepted event, in order, before any processing.

``EventLog.open(settings)`` gives the embedded implementation (a SQLite WAL file); a NATS
JetStream implementation can later sit behind the same interface (see ``base.EventLog``).
"""

from rapport.log.base import EventLog, LogOverloaded
from rapport.log.records import FLAG_BAD_TIMESTAMP, FLAG_CLOCK_SKEW, FLAG_REPLAYED, LogRecord

__all__ = [
    "FLAG_BAD_TIMESTAMP",
    "FLAG_CLOCK_SKEW",
    "FLAG_REPLAYED",
    "EventLog",
    "LogOverloaded",
    "LogRecord",
]
