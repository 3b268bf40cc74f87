"""Where a channel may send: no loopback, private, link-local, multicast or reserved address
unless an admin allowed it for the channel (SSRF: a webhook URL must not reach the metadata
service at 169.254.169.254 or the database next door).

Checked when the channel is saved and again at send time, because DNS may answer differently
later (rebinding). The remaining window between our lookup and the HTTP client's is seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from functools import lru_cache
from urllib.parse import urlsplit

from rapport.delivery.errors import TargetRefused

#: seconds a send-time verdict is reused (thousands of messages per second to one host)
CACHE_SECONDS = 5.0
#: host -> (expiry, the first refused address and why, or None)
_cache: dict[str, tuple[float, tuple[str, str] | None]] = {}


@lru_cache(maxsize=1024)  # parsed once per URL, not once per send
def _host(url: str, field: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"{field}: {url!r} must be an http:// or https:// URL", field)
    if not parts.hostname:
        raise TargetRefused(f"{field}: {url!r} has no host", field)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused(f"{field}: {url!r}: {exc}", field) from None
    return parts.hostname, port


def refused_reason(address: str) -> str | None:
    """Why ``address`` is off limits, or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for reason, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved or ip.is_unspecified),
        ("non-public", not ip.is_global),  # e.g. 100.64/10 (carrier-grade NAT)
    ):
        if flag:
            return reason
    return None


def _refusal(addresses: list[str]) -> tuple[str, str] | None:
    """The first address off limits, with the reason (judged once per lookup: ~20 µs)."""
    for address in addresses:
        reason = refused_reason(address)
        if reason:
            return address, reason
    return None


def _refuse(host: str, refusal: tuple[str, str] | None, field: str) -> None:
    if refusal:
        address, reason = refusal
        raise TargetRefused(
            f"{field}: {host} resolves to {address}, a {reason} address; an admin must set "
            "allow_private on the channel to send there",
            field,
        )


def check_url(url: str, allow_private: bool, field: str = "url") -> None:
    """Raise ``TargetRefused`` for a URL this channel may not reach (blocking DNS lookup)."""
    host, port = _host(url, field)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetRefused(f"{field}: cannot resolve {host}: {exc}", field) from None
    _refuse(host, _refusal([str(i[4][0]) for i in infos]), field)


async def check_url_async(url: str, allow_private: bool, field: str = "url") -> None:
    """The send-time check, on the event loop, with a short cache per host."""
    host, port = _host(url, field)
    if allow_private:
        return
    hit = _cache.get(host)
    if hit is None or hit[0] < time.monotonic():
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:  # DNS trouble is worth a retry, unlike a refusal
            raise ConnectionError(f"cannot resolve {host}: {exc}") from None
        hit = (time.monotonic() + CACHE_SECONDS, _refusal([str(i[4][0]) for i in infos]))
        _cache[host] = hit
    _refuse(host, hit[1], field)
