"""A token bucket per key (the collector's write keys): ``rate`` events a second on average,
up to ``burst`` at once. One process's buckets: with several collector processes each allows
the rate (set it per process).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    """``take(key, n)`` spends ``n`` tokens of ``key``'s bucket: 0.0 when they were there, else
    the seconds to wait until they will be (nothing is spent then)."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("collector_rate_limit and collector_rate_burst must be >= 0")
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, n: int = 1) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        cost = min(float(n), self.burst)  # a batch bigger than the bucket waits for a full one
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """Whole seconds for the Retry-After header (at least 1)."""
        return str(max(1, math.ceil(wait)))
