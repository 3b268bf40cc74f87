"""The dispatcher: claim due messages with a lease, send them concurrently, record every try.

At-least-once: a dispatcher killed mid-batch leaves its messages ``sending`` until the lease
expires, then any dispatcher sends them again; the receiver applies each ``Idempotency-Key``
once. Per channel, a token bucket holds the send rate and a circuit breaker stops hammering a
receiver that is down (its messages are postponed, not failed, while the breaker is open).
Messages to a person first pass the send-time guards (``rapport.delivery.guards``: consent,
frequency caps, quiet hours) and carry their unsubscribe link.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import aiohttp

from rapport import metrics
from rapport.delivery import guards, http
from rapport.delivery.adapters import Sent, adapter_for
from rapport.delivery.channels import Channel, load_channels
from rapport.delivery.limits import CircuitBreaker, TokenBucket
from rapport.delivery.outbox import Claimed, Result, claim, extend_lease, now, record
from rapport.delivery.retry import next_try, parse_schedule, retry_after
from rapport.settings import Settings

log = logging.getLogger(__name__)
#: a rate-limited message waits in memory at most this long; beyond, it is postponed
MAX_RATE_WAIT = 2.0
#: seconds the channel list is reused between batches
CHANNELS_TTL = 1.0


@dataclass
class Counters:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    postponed: int = 0
    suppressed: int = 0
    batches: int = 0
    last_error: str | None = None
    breakers: dict[str, str] = field(default_factory=dict)


class Dispatcher:
    """One dispatcher (there may be several, in several processes, on one outbox)."""

    def __init__(self, engine, settings: Settings, owner: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.schedule = parse_schedule(settings.delivery_retry_schedule)
        self.max_age = timedelta(hours=settings.delivery_max_age_hours)
        self.counters = Counters()
        self.buckets: dict[str, TokenBucket] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._channels: dict[str, Channel] = {}
        self._channels_at = 0.0
        self._sending = asyncio.Semaphore(settings.delivery_concurrency)
        self.guards = guards.Guards(
            settings.delivery_frequency_caps, settings.delivery_quiet_hours, settings.timezone
        )
        self._http: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:  # made on first use: it belongs to the running event loop
            self._http = http.session()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- one batch ------------------------------------------------------------------------
    async def run_once(self) -> int:
        """Claim one batch, send it, record it; the number of messages claimed."""
        batch = await asyncio.to_thread(
            claim,
            self.engine,
            self.owner,
            self.settings.delivery_batch,
            self.settings.delivery_lease_seconds,
        )
        if not batch:
            return 0
        channels = await self._channels_now()
        kinds = {name: c.kind for name, c in channels.items()}
        held = await asyncio.to_thread(self.guards.check, self.engine, batch, kinds)
        self.counters.suppressed += sum(r.status == "suppressed" for r in held.values())
        self.counters.postponed += sum(r.outcome == "postponed" for r in held.values())
        go = [self._addressed(m, kinds) for m in batch if m.id not in held]
        heartbeat = asyncio.create_task(self._keep_lease())
        try:
            sent = await asyncio.gather(*(self._deliver(m, channels) for m in go))
            results = [*held.values(), *sent]
        finally:
            heartbeat.cancel()
        await asyncio.to_thread(record, self.engine, self.owner, results)
        self.counters.claimed += len(batch)
        self.counters.batches += 1
        self.counters.breakers = {n: b.state for n, b in self.breakers.items()}
        _count(batch, results, self.counters.breakers)
        return len(batch)

    def _addressed(self, message: Claimed, kinds: dict[str, str]) -> Claimed:
        """A message to a person gets its unsubscribe link (``payload.unsubscribe_url``)."""
        base = self.settings.public_url
        if (
            not base
            or message.person_key is None
            or kinds.get(message.channel) not in (guards.PERSONAL_KINDS)
        ):
            return message
        token = guards.unsubscribe_token(
            self.settings.signing_key(), message.person_key, message.channel
        )
        url = f"{base.rstrip('/')}/u/{token}"
        return dataclasses.replace(message, payload={**message.payload, "unsubscribe_url": url})

    async def _keep_lease(self) -> None:
        lease = self.settings.delivery_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            await asyncio.to_thread(extend_lease, self.engine, self.owner, lease)

    async def drain(self) -> int:
        """Send everything due now (``rapport delivery dispatch --once``)."""
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def run(self, stopping: asyncio.Event, parent: int | None = None) -> None:
        """Batch after batch; wait ``delivery_poll_interval`` when nothing is due."""
        while not stopping.is_set() and (parent is None or os.getppid() == parent):
            try:
                claimed = await self.run_once()
                self.counters.last_error = None
            except Exception as exc:  # noqa: BLE001 - keep dispatching; the error is visible
                log.exception("delivery batch failed")
                self.counters.last_error = repr(exc)
                claimed = 0
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.settings.delivery_poll_interval)

    async def _channels_now(self) -> dict[str, Channel]:
        if time.monotonic() - self._channels_at > CHANNELS_TTL:
            self._channels = await asyncio.to_thread(load_channels, self.engine)
            self._channels_at = time.monotonic()
        return self._channels

    # -- one message ----------------------------------------------------------------------
    def _postpone(self, message: Claimed, seconds: float) -> Result:
        self.counters.postponed += 1
        return Result(
            message.id,
            message.attempt,
            "pending" if message.attempt == 1 else "failed",
            "postponed",
            next_attempt_at=now() + timedelta(seconds=seconds),
        )

    async def _deliver(self, message: Claimed, channels: dict[str, Channel]) -> Result:
        channel = channels.get(message.channel)
        if channel is None or not channel.enabled:
            return self._postpone(message, 60)
        breaker = self.breakers.setdefault(
            channel.name,
            CircuitBreaker(
                self.settings.delivery_breaker_failures, self.settings.delivery_breaker_cooldown
            ),
        )
        wait = breaker.allow()
        if wait:
            return self._postpone(message, wait)
        if channel.rate_per_second:
            bucket = self.buckets.get(channel.name)
            if bucket is None or bucket.rate != channel.rate_per_second:
                burst = channel.burst or max(1, int(channel.rate_per_second))
                bucket = self.buckets[channel.name] = TokenBucket(channel.rate_per_second, burst)
            wait = bucket.reserve()
            if wait > MAX_RATE_WAIT:
                bucket.give_back()
                if breaker.probing:
                    breaker.probing = False
                return self._postpone(message, wait)
            if wait:
                await asyncio.sleep(wait)
        async with self._sending:
            try:
                sent = await adapter_for(channel.kind).send(channel, message, self._client())
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the batch: retry
                log.exception("sending message %s failed", message.id)
                sent = Sent(False, error=f"{exc.__class__.__name__}: {exc}")
        return self._verdict(message, breaker, sent)

    def _verdict(self, message: Claimed, breaker: CircuitBreaker, sent: Sent) -> Result:
        result = Result(
            message.id,
            message.attempt,
            "delivered",
            "delivered",
            http_status=sent.http_status,
            ms=sent.ms,
            error=sent.error,
            response=sent.response,
        )
        if sent.ok:
            breaker.success()
            self.counters.delivered += 1
            return result
        if sent.permanent:  # the receiver answered: it is up, the message is the problem
            breaker.success()
            self.counters.dead += 1
            result.status = result.outcome = "dead"
            return result
        at = now()
        wait = None
        if sent.http_status in (429, 503):
            wait = retry_after(sent.retry_after, at)
        if sent.http_status != 429:
            breaker.failure()
        result.next_attempt_at = next_try(
            message.attempt,
            message.queued_at,
            at,
            self.schedule,
            self.settings.delivery_max_attempts,
            self.max_age,
            wait,
        )
        if result.next_attempt_at is None:
            self.counters.dead += 1
            result.status = result.outcome = "dead"
            result.error = f"{sent.error} (gave up after {message.attempt} tries)"
        else:
            self.counters.retried += 1
            result.status, result.outcome = "failed", "retry"
        return result


def _count(batch: list[Claimed], results: list[Result], breakers: dict[str, str]) -> None:
    """A recorded batch in the metrics: outcomes per channel, delivery latency, send time."""
    messages = {m.id: m for m in batch}
    outcomes: dict[tuple[str, str], int] = {}
    at = now()
    for r in results:
        m = messages.get(r.id)
        if m is None:
            continue
        slot = (m.channel, r.outcome)
        outcomes[slot] = outcomes.get(slot, 0) + 1
        if r.ms is not None:
            metrics.DELIVERY_SEND.labels(m.channel).observe(r.ms / 1000)
        if r.outcome == "delivered":
            waited = (at - m.queued_at).total_seconds()  # queued_at: UTC-aware (claim)
            metrics.DELIVERY_LATENCY.labels(m.channel).observe(max(0.0, waited))
    for (channel, outcome), n in outcomes.items():
        metrics.DELIVERY_MESSAGES.labels(channel, outcome).inc(n)
    for channel, state in breakers.items():
        metrics.DELIVERY_BREAKER_OPEN.labels(channel).set(state != "closed")


def dispatch(settings: Settings, once: bool = False, parent: int | None = None) -> int:
    """Run a dispatcher in this process (the CLI): until stopped, or until nothing is due."""
    import gc

    from rapport.db import make_engine

    # a process of its own: the start-up heap is never garbage, and every webhook allocates
    # a few hundred short-lived objects (fewer collections: ~10 % less CPU per webhook)
    gc.freeze()
    gc.set_threshold(50_000, 50, 50)

    async def main() -> int:
        dispatcher = Dispatcher(make_engine(settings.metadata_url), settings)
        try:
            if once:
                return await dispatcher.drain()
            await dispatcher.run(asyncio.Event(), parent=parent)
            return dispatcher.counters.claimed
        finally:
            await dispatcher.aclose()
            dispatcher.engine.dispose()

    return asyncio.run(main())
