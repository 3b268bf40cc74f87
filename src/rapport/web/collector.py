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

from rapport import accounts, metrics
from rapport.ingest.collector import Collector
from rapport.ingest.messages import BodyError, decode_body, parse_time
from rapport.ingest.sources import Source, source_by_key, source_by_name
from rapport.log import LogOverloaded, LogWriteFailed
from rapport.web.ratelimit import TokenBuckets

router = APIRouter(tags=["collector"])
_encode = msgspec.json.encode
SINGLE = ("track", "identify", "page", "screen", "group", "alias")


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def _error(exc: Rejected) -> Response:
    body = {"success": False, "code": exc.code, "message": exc.message, **exc.extra}
    headers = None
    if exc.status in (429, 503, 507):
        headers = {"Retry-After": str(exc.extra.get("retry_after", 1))}
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


def _bearer_source(request: Request, token: str) -> Source:
    """The alternative to a write key: an API token with the ``ingest`` scope, and the source
    named in an ``X-Source`` header (its validation mode and allowed events apply)."""
    db = request.app.state.ws.db
    try:
        found = accounts.token_principal(db, token)
    except accounts.TokenRejected as exc:
        raise Rejected(401, "invalid_token", str(exc)) from None
    if found is None:
        raise Rejected(401, "invalid_token", "invalid or revoked bearer token")
    if accounts.Scope.ingest not in found["scopes"]:
        held = accounts.format_scopes(found["scopes"])
        raise Rejected(
            403,
            "missing_scope",
            f"this token lacks the 'ingest' scope (it has: {held}); "
            "create one with: rapport token create --scopes ingest",
        )
    name = request.headers.get("x-source", "").strip()
    if not name:
        raise Rejected(
            400, "missing_source", "a bearer token must name its source in an X-Source header"
        )
    source = source_by_name(db, name)
    if source is None:
        raise Rejected(400, "unknown_source", f"X-Source: no source named {name!r}")
    return source


def _authenticate(request: Request, body: Any) -> Source:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return _bearer_source(request, header[7:].strip())
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


def _within_rate(request: Request, source: Source, events: int) -> None:
    """429 when the write key is over ``collector_rate_limit``: the client is told to send the
    whole request again after Retry-After seconds (Segment's libraries do); nothing was kept."""
    wait = request.app.state.collector_rate.take(source.write_key, events)
    if wait:
        after = TokenBuckets.retry_after(wait)
        raise Rejected(
            429,
            "rate_limited",
            f"source {source.name!r} is over its rate limit of "
            f"{request.app.state.collector_rate.rate:g} events/s: nothing in this request was "
            f"stored; send it again after {after} s",
            retry_after=int(after),
        )


async def _collect(request: Request, kind: str | None) -> Response:
    received = datetime.now(UTC)
    ws = request.app.state.ws
    limit = ws.settings.max_batch_bytes if kind is None else ws.settings.max_event_bytes
    what = "/v1/batch" if kind is None else f"/v1/{kind}"
    source: Source | None = None
    try:
        raw = await _read_body(request, limit, what)
        # a key in the headers is checked before parsing: strangers cost no JSON decoding
        bearer = request.headers.get("authorization", "")[:7].lower() == "bearer "
        source = _authenticate(request, None) if bearer or _credentials(request, None)[0] else None
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
        _within_rate(request, source, len(messages))
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
        return _refused(source, Rejected(400, exc.code, exc.message, **exc.where))
    except Rejected as exc:
        return _refused(source, exc)
    except LogOverloaded as exc:
        return _refused(source, Rejected(503, "overloaded", f"busy, retry shortly: {exc}"))
    except LogWriteFailed as exc:  # nothing of this request is acknowledged: safe to resend
        status, code = (507, "insufficient_storage") if exc.disk_full else (503, "log_failed")
        message = f"{exc}; nothing in this request was stored, send it again later"
        return _refused(source, Rejected(status, code, message, retry_after=10))
    return Response(_encode({"success": True, "results": results}), media_type="application/json")


def _refused(source: Source | None, exc: Rejected) -> Response:
    metrics.COLLECTOR_REJECTED.labels(source.name if source else "", exc.code).inc()
    return _error(exc)


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
        settings = app.state.ws.settings
        app.state.collector_rate = TokenBuckets(
            settings.collector_rate_limit, settings.collector_rate_burst
        )
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
