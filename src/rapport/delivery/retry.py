"""When to try again: exponential backoff with full jitter, then dead.

The n-th retry waits ``uniform(0, SCHEDULE[n-1])`` seconds (the last step repeats), so a
receiver coming back is not hit by every message at the same second. A message is dead when
its retry budget (``max_attempts`` tries) or its age (``max_age`` since queued) is spent, or
at once when the receiver refused it for good (a 4xx other than 408 and 429).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

#: seconds: 10 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h (then 6 h again)
SCHEDULE = (10.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 10800.0, 21600.0)


def parse_schedule(text: str) -> tuple[float, ...]:
    try:
        steps = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"delivery_retry_schedule: {text!r} is not a list of seconds") from None
    if not steps or min(steps) < 0:
        raise ValueError(f"delivery_retry_schedule: {text!r} needs one or more seconds ≥ 0")
    return steps


def backoff(attempt: int, schedule: tuple[float, ...] = SCHEDULE) -> float:
    """Seconds to wait after the ``attempt``-th failed try."""
    cap = schedule[min(attempt, len(schedule)) - 1]
    return random.uniform(0, cap)


def transient(http_status: int) -> bool:
    """Worth trying again: timeouts, throttling and server errors; other 4xx are final."""
    return http_status in (408, 429) or http_status >= 500


def retry_after(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def next_try(
    attempt: int,
    queued_at: datetime,
    now: datetime,
    schedule: tuple[float, ...],
    max_attempts: int,
    max_age: timedelta,
    wait: float | None = None,
) -> datetime | None:
    """When to try again, or None when the message is dead."""
    if attempt >= max_attempts:
        return None
    at = now + timedelta(seconds=backoff(attempt, schedule) if wait is None else wait)
    return None if at - queued_at > max_age else at
