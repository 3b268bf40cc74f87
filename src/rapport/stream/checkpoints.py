"""Where a rule worker's partition checkpoints live (setting ``checkpoint_store``).

- ``file`` (the default): ``<home>/stream/<stream>/p<N>.ckpt``, written to a temporary file,
  fsynced and renamed over the old one. Only a worker on this machine can resume from it.
- ``nats`` (the ``cluster`` profile): the JetStream object store bucket
  ``<nats_stream>_CHECKPOINTS``, key ``p<N>``, with ``nats_log_replicas`` replicas: a worker on
  any machine that takes a partition over resumes from where its last owner checkpointed.

The worker serialises a checkpoint once (``rapport.stream.worker``); a store only puts and
gets its bytes. ``put`` is blocking because it runs in the worker's forked child, which has no
usable event loop: the parent's asyncio NATS connection cannot be shared across ``fork``, so
the child opens its own connection in a fresh event loop (``asyncio.run``). That keeps the
upload off the parent's loop and interpreter (feeding never waits for it, and no copy of the
checkpoint passes through the parent), and the parent's protocol stays the same for both
stores: the child's clean exit means stored, and only then does the parent ack. ``get`` runs
once per partition at start, in the parent's loop.

Neither store can leave a half-written checkpoint behind a crash: a file is renamed over the
old one once whole and fsynced; an object's chunks go to a new subject and its metadata (size,
SHA-256 digest, that subject) is published last, so until then readers get the previous
object. A read verifies the object's digest; a checkpoint that fails it raises ``Corrupt``,
and the worker then replays the partition from the start of the log (as for a missing one).
A child killed while uploading leaves its chunks in the bucket, referenced by no object.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import nats.errors
from nats.js import api
from nats.js.errors import (
    BadObjectMetaError,
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)

from rapport.log import nats as natslog

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.object_store import ObjectStore

    from rapport.settings import Settings

log = logging.getLogger(__name__)

#: how long a child keeps trying to store a checkpoint while NATS is away (a restart, a
#: leader election) before it gives up, which stops the worker (nothing acked is lost)
PUT_PATIENCE = 120.0
#: how long one read of a checkpoint may take before it is tried again (an object replaced
#: while it was read: its old chunks are gone and the read would wait for them forever), and
#: how many reads are tried
GET_TIMEOUT = 60.0
GET_TRIES = 3

_TRANSIENT = (OSError, TimeoutError, nats.errors.Error)


class Corrupt(Exception):
    """A stored checkpoint whose bytes are not those that were stored (digest mismatch)."""


class CheckpointStore(Protocol):
    """Puts and gets a partition's checkpoint bytes."""

    #: where the checkpoints are, for the log
    where: str

    def put(self, partition: int, data: bytes) -> None:
        """Store durably (blocking; called outside any event loop)."""

    async def get(self, partition: int) -> bytes | None:
        """The last checkpoint stored, or None; ``Corrupt`` when it fails its digest."""


def key(partition: int) -> str:
    return f"p{partition}"


def bucket(settings: Settings) -> str:
    """The object store bucket of a partition stream's checkpoints."""
    return f"{settings.nats_stream}_CHECKPOINTS"


def open_store(settings: Settings) -> CheckpointStore:
    match settings.checkpoint_store:
        case "file":
            return FileStore(settings.home / "stream" / settings.nats_stream)
        case "nats":
            return NatsStore(settings)
    raise ValueError(f"checkpoint_store = {settings.checkpoint_store!r}: one of file, nats")


class FileStore:
    """Checkpoint files in a directory of this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def path(self, partition: int) -> Path:
        return self.root / f"{key(partition)}.ckpt"

    def put(self, partition: int, data: bytes) -> None:
        path = self.path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    async def get(self, partition: int) -> bytes | None:
        try:
            return self.path(partition).read_bytes()
        except FileNotFoundError:
            return None


class NatsStore:
    """Checkpoints in a JetStream object store bucket (file storage, replicated like the log).

    Stored means the object's metadata message was acknowledged by JetStream after all its
    chunks (by a quorum of ``nats_log_replicas`` servers); until then the previous checkpoint
    is the object's content.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.nats_url
        self.bucket = bucket(settings)
        self.replicas = settings.nats_log_replicas
        self.where = f"NATS object store {self.bucket}"

    def put(self, partition: int, data: bytes) -> None:
        asyncio.run(self._put(key(partition), data))

    async def _put(self, name: str, data: bytes) -> None:
        deadline = time.monotonic() + PUT_PATIENCE
        while True:
            try:
                nc, js = await natslog.connect(self.url)
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
                continue
            try:
                await (await self._bucket(js)).put(name, data)
                return
            except _TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("storing checkpoint %s/%s failed, retrying: %r", self.bucket, name, exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()

    async def _bucket(self, js: JetStreamContext) -> ObjectStore:
        try:
            return await js.object_store(self.bucket)
        except BucketNotFoundError:
            config = api.ObjectStoreConfig(
                bucket=self.bucket,
                description="rapport worker rules: partition checkpoints",
                storage=api.StorageType.FILE,
                replicas=self.replicas,
            )
            return await js.create_object_store(self.bucket, config=config)

    async def get(self, partition: int) -> bytes | None:
        name = key(partition)
        nc, js = await natslog.connect(self.url)
        try:
            try:
                store = await js.object_store(self.bucket)
            except BucketNotFoundError:
                return None
            tries = 0
            while True:
                try:
                    return await asyncio.wait_for(_read(store, name), GET_TIMEOUT)
                except ObjectNotFoundError:
                    return None
                except (DigestMismatchError, BadObjectMetaError) as exc:
                    raise Corrupt(f"{self.where}, object {name}: {exc!r}") from exc
                except TimeoutError:
                    tries += 1
                    if tries == GET_TRIES:
                        raise
        finally:
            await nc.close()


async def _read(store: ObjectStore, name: str) -> bytes:
    """An object's bytes, digest verified (by nats-py); into a buffer, since nats-py's own
    result concatenates the chunks one by one (quadratic in the chunks of a large object)."""
    buf = io.BytesIO()
    await store.get(name, writeinto=buf)
    return buf.getvalue()


async def delete_bucket(settings: Settings) -> None:
    """Drop the checkpoints' bucket (tests, a re-partitioning: with the stream's consumers)."""
    nc, js = await natslog.connect(settings.nats_url)
    try:
        with contextlib.suppress(NotFoundError):
            await js.delete_object_store(bucket(settings))
    finally:
        await nc.close()
