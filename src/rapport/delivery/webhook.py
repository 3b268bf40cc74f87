"""Webhook signatures: what Rapport sends and what a receiver checks.

``Rapport-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`` with the
``Rapport-Timestamp`` it covers, so a captured request cannot be replayed later than the
receiver's tolerance; ``Idempotency-Key`` lets the receiver apply a message once however often
it arrives (delivery is at-least-once).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signed_headers(
    secret: str | None, key: str, body: bytes, at: float | None = None
) -> dict[str, str]:
    """The headers of one webhook request (unsigned when the channel has no secret)."""
    timestamp = str(int(at if at is not None else time.time()))
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": key,
        "Rapport-Timestamp": timestamp,
    }
    if secret:
        headers["Rapport-Signature"] = signature(secret, timestamp, body)
    return headers


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: int = 300,
    now: float | None = None,
) -> bool:
    """True when ``body`` was signed with ``secret`` less than ``tolerance`` seconds ago.

    ``headers`` may be any mapping (names are matched case-insensitively). Several ``v1=``
    values separated by commas are accepted (a sender rotating its secret).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get("rapport-timestamp", "")
    sent = lower.get("rapport-signature", "")
    if not timestamp.isdigit() or not sent:
        return False
    if abs((now if now is not None else time.time()) - int(timestamp)) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in sent.split(","))
