"""The one way delivery sends an HTTP request: an aiohttp session (keep-alive, C parser).

With httpx, the HTTP stack was 98 % of the dispatcher's CPU (~0.6 ms per webhook); with
aiohttp the whole dispatcher takes ~0.19 ms (docs/benchmarks.md, "Delivery"). The session
keeps no cookies (one receiver's cookie must not reach another channel), follows no redirect,
ignores proxy variables and shares one TLS context (loading the CA bundle costs ~0.1 s).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from functools import cache, lru_cache

import aiohttp

from rapport.delivery.targets import CACHE_SECONDS

#: errors that mean "no answer": worth a retry
NoAnswer = (aiohttp.ClientError, TimeoutError)
#: seconds an idle connection is kept: under the 5 s of common servers (uvicorn, Node), so that
#: we close it first, rather than racing their close with our next POST (a failed try)
KEEPALIVE = 4.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    retry_after: str | None  # the receiver's Retry-After header

    def excerpt(self, chars: int) -> str:
        """The first ``chars`` characters (a UTF-8 character is at most 4 bytes)."""
        return self.body[: chars * 4].decode("utf-8", "replace")[:chars]


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def session() -> aiohttp.ClientSession:
    """A session for one dispatcher (or one test send); call it inside the event loop.

    No connection limit here: the dispatcher bounds the sends in flight
    (``delivery_concurrency``), and each keeps its connection alive for the next. Names are
    cached as long as the SSRF check caches them, so the two lookups age together.
    """
    connector = aiohttp.TCPConnector(
        limit=0, ssl=_tls(), ttl_dns_cache=int(CACHE_SECONDS), keepalive_timeout=KEEPALIVE
    )
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def post(
    client: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> Answer:
    """POST ``body``; the whole answer. Raises one of ``NoAnswer`` when none came."""
    async with client.post(
        url, data=body, headers=headers, timeout=_timeout(timeout), allow_redirects=False
    ) as answer:
        return Answer(answer.status, await answer.read(), answer.headers.get("Retry-After"))


def describe(exc: BaseException, timeout: float) -> str:
    """What went wrong, for the delivery log."""
    if isinstance(exc, TimeoutError):
        return f"Timeout: no answer within {timeout:g} s"
    return f"{exc.__class__.__name__}: {exc}"
