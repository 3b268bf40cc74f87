"""Schedule texts -> the next run after a time, read in the workspace's time zone.

Accepted forms (case and extra spaces do not matter):

- ``hourly`` (at minute 0), ``daily`` (at 00:00), ``daily at 06:00``;
- ``every 15 minutes`` / ``every 2 hours`` / ``every minute`` / ``every hour`` (the minutes
  must divide an hour and the hours a day, so that the slots are the same every day);
- a 5-field cron text, ``minute hour day-of-month month day-of-week`` (``30 6 * * mon-fri``).

Every form becomes a cron text run by ``croniter`` in the time zone, so "daily at 06:00" in
Asia/Shanghai is 22:00 UTC the day before, and DST changes are croniter's to handle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

_EVERY = re.compile(r"^every\s+(?:(\d+)\s+)?(minute|minutes|hour|hours)$")
_DAILY_AT = re.compile(r"^daily\s+at\s+(\S+)$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")
_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
EXAMPLES = "hourly, daily, daily at 06:00, every 15 minutes, or a cron text like 30 6 * * mon-fri"


class ScheduleError(ValueError):
    """A schedule text that cannot be run; ``part`` is the piece at fault."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part!r}: {message}")
        self.part = part
        self.message = message


@dataclass(frozen=True)
class Schedule:
    text: str  # as written
    cron: str  # what it means

    def next_after(self, after: datetime, tz: ZoneInfo | str = "UTC") -> datetime:
        """The first run strictly after ``after`` (aware), as an aware UTC datetime."""
        if after.tzinfo is None:
            raise ValueError("next_after needs an aware datetime")
        zone = time_zone(tz) if isinstance(tz, str) else tz
        return _next(self.cron, after.astimezone(UTC), zone)


@lru_cache(maxsize=16384)
def _next(cron: str, after: datetime, zone: ZoneInfo) -> datetime:
    """Cached: a job's anchor (its last start) stays the same from one check to the next, and
    croniter takes a millisecond or two per call."""
    return croniter(cron, after.astimezone(zone)).get_next(datetime).astimezone(UTC)


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Asia/Shanghai``), or a ScheduleError naming it."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            name, "unknown time zone (use an IANA name like Asia/Shanghai)"
        ) from None


@lru_cache(maxsize=4096)
def parse(text: str) -> Schedule:
    """The schedule ``text`` means, or a ScheduleError naming the part that is wrong (cached:
    every check of the runner reads every job's schedule)."""
    words = " ".join(str(text or "").lower().split())
    if not words:
        raise ScheduleError(str(text), f"empty schedule; use {EXAMPLES}")
    if words == "hourly":
        return Schedule(text, "0 * * * *")
    if words == "daily":
        return Schedule(text, "0 0 * * *")
    if m := _DAILY_AT.match(words):
        hour, minute = _clock(m.group(1))
        return Schedule(text, f"{minute} {hour} * * *")
    if m := _EVERY.match(words):
        return Schedule(text, _every(int(m.group(1) or 1), m.group(2).rstrip("s"), words))
    if words.startswith(("every", "daily", "hourly")):
        raise ScheduleError(str(text), f"not a schedule this understands; use {EXAMPLES}")
    return Schedule(text, _cron(words))


def _clock(part: str) -> tuple[int, int]:
    m = _CLOCK.match(part)
    if m is None:
        raise ScheduleError(part, "the time must be HH:MM, e.g. 06:00")
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23:
        raise ScheduleError(part, "the hour must be 0-23")
    if minute > 59:
        raise ScheduleError(part, "the minutes must be 0-59")
    return hour, minute


def _every(n: int, unit: str, words: str) -> str:
    if unit == "minute":
        if n < 1 or 60 % n:
            raise ScheduleError(words, "the minutes must divide an hour (1, 5, 10, 15, 20, 30)")
        return "* * * * *" if n == 1 else f"*/{n} * * * *"
    if n < 1 or 24 % n:
        raise ScheduleError(words, "the hours must divide a day (1, 2, 3, 4, 6, 8, 12)")
    return "0 * * * *" if n == 1 else f"0 */{n} * * *"


def _cron(words: str) -> str:
    fields = words.split(" ")
    if len(fields) != 5:
        raise ScheduleError(
            words, f"a cron text has 5 fields ({' '.join(_FIELDS)}), this has {len(fields)}"
        )
    for i, (name, value) in enumerate(zip(_FIELDS, fields, strict=True)):
        alone = ["*"] * 5
        alone[i] = value
        if not croniter.is_valid(" ".join(alone)):
            raise ScheduleError(value, f"not a valid cron {name} field")
    try:
        croniter(words)
    except CroniterError as exc:  # e.g. "0 0 31 2 *": valid fields, no day ever matches
        raise ScheduleError(words, str(exc)) from None
    return words


def next_run(text: str, after: datetime, tz: ZoneInfo | str = "UTC") -> datetime:
    """``parse(text).next_after(after, tz)``."""
    return parse(text).next_after(after, tz)
