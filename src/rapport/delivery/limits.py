"""Per-channel protection of the receiver: a token bucket and a circuit breaker.

Both live in the dispatcher's memory (one per channel): several dispatchers each apply the
channel's rate, so run one dispatcher per channel with a strict provider limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def reserve(self, now: float | None = None) -> float:
        """Take a token; the seconds to wait before using it (0 when one was ready)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def give_back(self) -> None:
        self.tokens += 1


@dataclass
class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures; after ``cooldown`` seconds one
    probe goes through (half-open): success closes it, failure opens it again."""

    threshold: int
    cooldown: float
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.probing else "open"

    def allow(self, now: float | None = None) -> float:
        """0 when a send may go now; else the seconds until the breaker lets a probe through."""
        if self.opened_at is None:
            return 0.0
        now = time.monotonic() if now is None else now
        wait = self.opened_at + self.cooldown - now
        if wait > 0 or self.probing:
            return max(wait, 1.0)
        self.probing = True
        return 0.0

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self, now: float | None = None) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = time.monotonic() if now is None else now
            self.probing = False
