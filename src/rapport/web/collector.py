"""The Segment-compatible collector: ``/v1/track`` ... ``/v1/batch``, authenticated by write key.

The answer comes only after the events are committed to the log (group commit), and lists what
happened to each message. Requests that cannot be read at all get a 4xx naming the problem.
"""

from __future__ import annotations

import base64
import binascii
import gc
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, FastAPI, Request, Response

from rapport.ingest.collector import Collector
from rapport.ingest.messages import BodyError, decode_body, parse_time
from rapport.ingest.sources import Source, source_by_key
from rapport.log import LogOverloaded

router = APIRouter(tags=["collector"])
_encode = msgspec.json.encode
SINGLE = ("track", "identify", "page", "screen", "group", "alias")


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(exc: Rejected) -> Response:
    body = {"success": False, "code": exc.code, "message": exc.message, **exc.extra}
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Basic realm="rapport collector"'}
    return Response(_encode(body), exc.status, headers, media_type="application/json")


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The body, gunzipped, refused (413) as soon as it is over ``limit`` bytes."""

    def too_large(size: int | str) -> Rejected:
        return Rejected(
            413,
            "payload_too_large",
            f"request body is {size} bytes, over the limit of {limit} bytes for {what} "
            "(32 KB per event, 500 KB per batch): send smaller batches",
            limit=limit,
        )

    declared = request.headers.get("content-length")
    gzipped = request.headers.get("content-encoding", "").lower() == "gzip"
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(declared)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not gzipped:
        return body
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Rejected(400, "invalid_gzip", f"Content-Encoding is gzip but {exc}") from None
    if len(data) > limit:
        raise too_large(f"more than {limit} (after gunzip)")
    if not inflater.eof:
        raise Rejected(400, "invalid_gzip", "the gzip body is truncated")
    return data


def _credentials(request: Request, body: Any) -> tuple[str | None, str]:
    """Write key and password from Basic auth, ``X-Write-Key`` or ``writeKey`` in the body."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Rejected(
                401, "invalid_auth", "the Authorization header is not valid HTTP Basic"
            ) from None
        if user:
            return user, password
    key = request.headers.get("x-write-key")
    if key:
        return key, ""
    if isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        return body["writeKey"], ""
    return None, ""


def _authenticate(request: Request, body: Any) -> Source:
    key, password = _credentials(request, body)
    if not key:
        raise Rejected(
            401,
            "missing_write_key",
            "no write key: send it as the HTTP Basic username, an X-Write-Key header "
            "or a writeKey field",
        )
    source = source_by_key(request.app.state.ws.db, key)
    if source is None:
        raise Rejected(401, "unknown_write_key", "unknown write key (see `rapport source list`)")
    if source.kind == "server" and source.secret_key not in (key, password):
        raise Rejected(
            401,
            "secret_key_required",
            f"source {source.name!r} is a server source: authenticate with its secret key "
            "(as the Basic username, or as the password after the write key)",
        )
    return source


async def _collect(request: Request, kind: str | None) -> Response:
    received = datetime.now(UTC)
    ws = request.app.state.ws
    limit = ws.settings.max_batch_bytes if kind is None else ws.settings.max_event_bytes
    what = "/v1/batch" if kind is None else f"/v1/{kind}"
    try:
        raw = await _read_body(request, limit, what)
        # a key in the headers is checked before parsing: strangers cost no JSON decoding
        source = _authenticate(request, None) if _credentials(request, None)[0] else None
        body = decode_body(raw)
        if source is None:
            source = _authenticate(request, body)
        if not isinstance(body, dict):
            raise Rejected(400, "invalid_body", "the body must be a JSON object")
        if kind is None:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise Rejected(
                    400, "invalid_body", "$.batch: expected an array of messages", path="$.batch"
                )
            path = "$.batch"
        else:
            messages, path = [body], "$"
        collector: Collector = request.app.state.collector
        checked = collector.check(
            source,
            messages,
            received=received,
            sent_at=parse_time(body.get("sentAt")) if kind is None else None,
            default_type=kind,
            path=path,
        )
        results = await collector.submit(checked)
    except BodyError as exc:
        return _error(Rejected(400, exc.code, exc.message, **exc.where))
    except Rejected as exc:
        return _error(exc)
    except LogOverloaded as exc:
        return _error(Rejected(503, "overloaded", f"busy, retry shortly: {exc}"))
    return Response(_encode({"success": True, "results": results}), media_type="application/json")


def _endpoint(kind: str | None) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await _collect(request, kind)

    endpoint.__name__ = f"collect_{kind or 'batch'}"
    endpoint.__doc__ = (
        f"Segment `{kind}` call." if kind else 'Segment batch: `{"batch": [messages...]}`.'
    )
    return endpoint


for _kind in SINGLE:
    router.add_api_route(f"/v1/{_kind}", _endpoint(_kind), methods=["POST"])
router.add_api_route("/v1/batch", _endpoint(None), methods=["POST"])
router.add_api_route("/v1/import", _endpoint(None), methods=["POST"], include_in_schema=False)


def setup(app: FastAPI) -> None:
    async def start(app: FastAPI) -> None:
        app.state.collector = Collector(app.state.ws)
        app.state.ws.log  # open the log now, not on the first request  # noqa: B018
        # A batch of 500 messages is ~3,500 dicts that stay alive across the commit's await,
        # so they outlive young collections and keep triggering full ones, each of which walked
        # the whole start-up heap (FastAPI, SQLAlchemy, the plan...): a quarter of the server's
        # CPU per event. Frozen, that heap is skipped; cycles made later are still collected.
        gc.collect()
        gc.freeze()

    async def stop(app: FastAPI) -> None:
        gc.unfreeze()  # what the app held becomes collectable again once it is gone

    app.state.startup.append(start)
    app.state.shutdown.append(stop)
