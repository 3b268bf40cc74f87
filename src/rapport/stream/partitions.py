"""Stage 1's output on NATS JetStream: the events that have a person, by person partition.

``publish_ready(ws)`` (the follower, after each pass, when ``stream_backend = "nats"``)
publishes the events past the ``nats_offset`` checkpoint up to the last offset whose events
(and all before it) have a person, in log order, then moves the checkpoint. A crash between
publishing and the checkpoint re-publishes: JetStream drops the repeats by message id
(``rapport.log.nats``). The first publish starts at offset 0, so workers see each person's
whole history once.

A message (``PersonEvent``, msgpack) holds what the rule core needs: the log offset, the
person, event time, name, event id, the properties and the item the event's ``item_id``
names (as JSON text), and ``running``, the latest event time of the whole log up to it — so a
worker's watermark moves as the embedded engine's does, not only with its own partition. After
each publish every partition gets a *tick* (``person = -1``) carrying the latest event time
published: a quiet partition's timers still fire.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING

import ibis
import msgspec

from rapport.log import nats as natslog

if TYPE_CHECKING:
    from rapport.workspace import Workspace

log = logging.getLogger(__name__)

OFFSET_KEY = "nats_offset"
#: log offsets published per round (one warehouse query and one ack wait each)
CHUNK = 20_000


class PersonEvent(msgspec.Struct, array_like=True, frozen=True):
    """One message of a partition; ``person = -1``: a tick (only ``running`` counts)."""

    offset: int
    person: int
    ts: datetime
    event: str
    id: str | None
    props: str | None
    item: str | None
    running: datetime


_encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(PersonEvent).decode


def publish_ready(ws: Workspace) -> int:
    """Publish what stage 1 has finished since the checkpoint; how many events."""
    from rapport.stream.engine import event_columns, ready_until

    wh = ws.warehouse
    with wh.connect() as con:
        done = int(wh.get_state(con, OFFSET_KEY) or 0)
        hi = ready_until(ws, con, done)
    total = 0
    while done < hi:
        upto = min(hi, done + CHUNK)
        with wh.connect() as con:
            ev = con.table("events")
            rng = ev.filter(ev.log_offset > done, ev.log_offset <= upto)
            q = rng.mutate(
                running=rng.ts.max().over(ibis.cumulative_window(order_by=rng.log_offset))
            ).filter(lambda t: t.person_key >= 0)
            rows = (
                event_columns(con, q, True, extra=("running",))
                .order_by("log_offset")
                .to_pyarrow()
                .to_pylist()
            )
        messages = [
            PersonEvent(
                r["log_offset"],
                r["person_key"],
                r["ts"],
                r["event"],
                r["event_id"],
                r["props"],
                r["item"],
                r["running"],
            )
            for r in rows
        ]
        asyncio.run(_publish(ws, messages, upto))
        with wh.connect() as con, wh.transaction(con):
            wh.set_state(con, OFFSET_KEY, str(upto))
        total += len(messages)
        done = upto
    return total


async def _publish(ws: Workspace, messages: list[PersonEvent], upto: int) -> None:
    s = ws.settings
    n = s.stream_partitions
    nc, js = await natslog.connect(s.nats_url)
    try:
        await natslog.ensure_stream(js, s)
        out = [
            (
                natslog.subject(s.nats_stream, natslog.partition_of(m.person, n)),
                f"o{m.offset}",
                _encode(m),
            )
            for m in messages
        ]
        if messages:
            top = max(m.running for m in messages)
            for p in range(n):
                tick = PersonEvent(upto, -1, top, "", None, None, None, top)
                out.append((natslog.subject(s.nats_stream, p), f"t{upto}.{p}", _encode(tick)))
        await natslog.publish(js, out)
    finally:
        await nc.close()
