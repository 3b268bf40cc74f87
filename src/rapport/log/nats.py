"""NATS JetStream as the scale-out log of the stream path: the persons' messages, partitioned.

Stage 1 (the follower) publishes every event that has a person to the stream
``settings.nats_stream`` on subject ``<prefix>.<p>``, ``p = person_key mod
stream_partitions``, so that one partition holds all of a person's events in log order —
and, in order with them, the person's profile changes and the merges that concern it
(``rapport.stream.partitions``). Every message carries a ``Nats-Msg-Id`` derived from what it
says (``o<log offset>`` for an event: event ids are unique per source only; the identity
history's sequence for a merge): a re-publish after a crash (within the stream's duplicate
window) is dropped by JetStream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import nats
from nats.js import api
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from rapport.settings import Settings

#: how long JetStream remembers message ids (a crashed publisher re-publishes within it)
DUPLICATE_WINDOW = 600.0


def prefix(stream: str) -> str:
    """The subject prefix of a stream: ``RAPPORT_PERSONS`` -> ``rapport_persons``."""
    return stream.lower()


def subject(stream: str, partition: int) -> str:
    return f"{prefix(stream)}.{partition}"


def partition_of(person: int, partitions: int) -> int:
    return person % partitions


def durable(stream: str, partition: int) -> str:
    """The durable consumer of a partition (one owner at a time)."""
    return f"{stream}_rules_p{partition}"


async def connect(url: str, reconnect_forever: bool = False) -> tuple[Client, JetStreamContext]:
    """A client; the first connection fails fast (a few tries) when NATS is not there.

    ``reconnect_forever``, for long-running consumers (``rapport worker``): once connected,
    a lost connection is retried every 2 s for as long as it takes (a NATS restart), instead
    of giving up after three tries (~6 s) and ending the process.
    """
    try:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=3)
    except Exception as exc:  # noqa: BLE001 - the client raises several kinds
        raise ConnectionError(f"NATS at {url} is not reachable: {exc}") from exc
    if reconnect_forever:  # read by the client at each reconnection; -1: no limit
        nc.options["max_reconnect_attempts"] = -1
    return nc, nc.jetstream()


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the persons' stream when it does not exist (file storage, limits retention)."""
    name = settings.nats_stream
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        name=name,
        subjects=[f"{prefix(name)}.*"],
        storage=api.StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW,
    )


async def publish(js: JetStreamContext, messages: Iterable[tuple[str, str, bytes]]) -> int:
    """Publish ``(subject, message id, payload)`` in order and wait for every ack; how many
    were new (not deduplicated)."""
    futures = [
        await js.publish_async(subj, data, headers={"Nats-Msg-Id": mid})
        for subj, mid, data in messages
    ]
    new = 0
    for fut in futures:
        ack = await fut
        new += not ack.duplicate
    return new


async def open_partition(
    js: JetStreamContext, settings: Settings, partition: int, after: int
) -> JetStreamContext.PullSubscription:
    """A pull subscription to ``partition`` that delivers the messages after stream sequence
    ``after`` (the worker's checkpoint): the durable consumer is made anew each start, so the
    checkpoint, not the consumer's ack floor, decides where reading resumes."""
    stream = settings.nats_stream
    name = durable(stream, partition)
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(stream, name)
    config = api.ConsumerConfig(
        durable_name=name,
        name=name,
        filter_subject=subject(stream, partition),
        ack_policy=api.AckPolicy.ALL,
        ack_wait=300,
        max_ack_pending=-1,
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if after else api.DeliverPolicy.ALL,
        opt_start_seq=after + 1 if after else None,
    )
    await js.add_consumer(stream, config=config)
    return await js.pull_subscribe_bind(durable=name, stream=stream)


async def delete_stream(settings: Settings) -> None:
    """Drop the persons' stream and its consumers (tests, a re-partitioning)."""
    nc, js = await connect(settings.nats_url)
    try:
        await js.delete_stream(settings.nats_stream)
    except NotFoundError:
        pass
    finally:
        await nc.close()
