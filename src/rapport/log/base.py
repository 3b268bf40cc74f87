"""The interface every event-log implementation offers (embedded SQLite, NATS JetStream)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rapport.log.records import LogRecord

if TYPE_CHECKING:
    from rapport.settings import Settings


class LogOverloaded(Exception):
    """The writer has more waiting than it can commit soon: callers answer 503, never lose."""


class LogWriteFailed(RuntimeError):
    """The log could not commit a batch (nothing of it is acknowledged): ``disk_full`` when
    the disk holding the log has no space left (the collector answers 507, otherwise 503)."""

    def __init__(self, message: str, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class EventLog(ABC):
    """An append-only, ordered, deduplicated (per source and messageId) log of events.

    Offsets are positive, increase with every appended event and never change, so a consumer
    (the warehouse loader, the stream workers) keeps its position as one integer.
    """

    @classmethod
    def open(cls, settings: Settings) -> EventLog:
        """The log ``settings.log_backend`` names: "sqlite" (embedded) or "nats" (JetStream)."""
        if settings.log_backend == "nats":
            from rapport.log.jetstream import JetStreamEventLog

            return JetStreamEventLog(settings)
        if settings.log_backend != "sqlite":
            raise ValueError(
                f"log_backend must be 'sqlite' or 'nats', not {settings.log_backend!r}"
                " (rapport.toml or RAPPORT_LOG_BACKEND)"
            )
        from rapport.log.sqlite import SQLiteEventLog

        return SQLiteEventLog(settings)

    @abstractmethod
    def append_many(self, records: Sequence[LogRecord]) -> list[int | None]:
        """Append durably; the offset of each record, None where it was a duplicate."""

    @abstractmethod
    async def append(self, records: Sequence[LogRecord]) -> list[int | None]:
        """Like ``append_many`` but group-committed with other callers; raises LogOverloaded."""

    @abstractmethod
    def read(self, after: int, limit: int) -> list[tuple[int, LogRecord]]:
        """Up to ``limit`` records with offsets greater than ``after``, in order."""

    @abstractmethod
    def tail(self, n: int) -> list[tuple[int, LogRecord]]:
        """The last ``n`` records, oldest first."""

    @abstractmethod
    def count(self, event: str | None = None, source: str | None = None) -> int: ...

    @abstractmethod
    def last_offset(self) -> int:
        """The offset of the newest record, 0 when empty."""

    @abstractmethod
    def erase(self, offsets: Sequence[int]) -> int:
        """Delete these records for good (right to erasure); returns how many were deleted."""

    @abstractmethod
    def close(self) -> None:
        """Commit what is queued, then release the files."""
