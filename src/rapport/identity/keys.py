"""Keyed hashes of identifier values: the lookup key of the identity graph.

Matching never needs the raw value: ``(type, normalised value)`` is hashed with a key derived
from the workspace secret, so a leaked graph cannot be joined to outside data by hashing known
phone numbers. Rotating the secret changes every key: run ``rapport identity rebuild``.
"""

from __future__ import annotations

import hashlib

from rapport.settings import Settings


def identity_secret(settings: Settings) -> bytes:
    return hashlib.blake2b(
        settings.signing_key().encode(), person=b"rapport-id", digest_size=32
    ).digest()


class Keyer:
    """``key(type, value)`` -> signed 64-bit int (DuckDB BIGINT), cached per process."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[tuple[str, str], int] = {}

    def key(self, id_type: str, value: str) -> int:
        k = (id_type, value)
        found = self._cache.get(k)
        if found is None:
            digest = hashlib.blake2b(
                f"{id_type}\x1f{value}".encode(), key=self._secret, digest_size=8
            ).digest()
            found = int.from_bytes(digest, "little", signed=True)
            if len(self._cache) < 2_000_000:
                self._cache[k] = found
        return found
