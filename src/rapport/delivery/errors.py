"""Errors of the delivery package, each naming what was wrong and where."""

from __future__ import annotations


class DeliveryError(Exception):
    """A delivery request that cannot be honoured (unknown channel, bad configuration ...).

    ``field`` names the offending input when there is one (the API answers it as ``field``);
    ``status`` is the HTTP status the API answers with.
    """

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class TargetRefused(DeliveryError):
    """A URL whose host resolves to an address the channel may not reach (SSRF guard)."""
