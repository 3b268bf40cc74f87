"""Channel adapters: one small class per kind behind one ``Adapter`` protocol.

An adapter sends one message and says how it went (``Sent``); what happens next (retry,
dead, delivered) is the dispatcher's business. Call lists are not sent: they are exported
(``calllist``).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import aiohttp
import orjson

from rapport.delivery import http, templating
from rapport.delivery.channels import DEFAULT_SUCCESS_FIELD, DEFAULT_TEMPLATES, Channel
from rapport.delivery.errors import DeliveryError
from rapport.delivery.outbox import Claimed
from rapport.delivery.retry import transient
from rapport.delivery.targets import check_url_async
from rapport.delivery.webhook import signed_headers

EXCERPT = 500


@dataclass
class Sent:
    ok: bool
    permanent: bool = False  # a failure that no retry will fix
    http_status: int | None = None
    error: str | None = None
    response: str | None = None
    retry_after: str | None = None  # the receiver's Retry-After header
    ms: float = 0.0


class Adapter(Protocol):
    async def send(self, channel: Channel, message: Claimed, client: aiohttp.ClientSession) -> Sent:
        """Send ``message`` once over ``channel``."""
        ...


def body_context(channel: Channel, message: Claimed) -> dict[str, Any]:
    """What body templates see: the payload, the message's envelope and the channel config."""
    return {
        "payload": message.payload,
        "config": channel.config,
        "message": {
            "key": message.key,
            "channel": message.channel,
            "person_key": message.person_key,
            "origin": message.origin,
            "created_at": message.created_at.isoformat(),
            "attempt": message.attempt,
        },
    }


class HttpAdapter:
    """Webhooks and providers' HTTP APIs (SMS, app push, WeChat official account, WeCom)."""

    async def send(self, channel: Channel, message: Claimed, client: aiohttp.ClientSession) -> Sent:
        started = time.perf_counter()
        try:
            url = channel.url()
            await check_url_async(url, channel.allow_private, "config.url")
            template = channel.config.get("template") or DEFAULT_TEMPLATES.get(channel.kind)
            if template:
                body = templating.render_json(template, body_context(channel, message))
            else:
                body = orjson.dumps(message.payload)
            secret = channel.secret if channel.kind == "webhook" else None
            headers = signed_headers(secret, message.key, body)
            for name, value in channel.config.get("headers", {}).items():
                headers[name] = templating.render_text(value, channel.context(), "config.headers")
        except DeliveryError as exc:  # a template or a refused target: retrying cannot help
            return Sent(False, permanent=True, error=str(exc), ms=_ms(started))
        except ConnectionError as exc:
            return Sent(False, error=str(exc), ms=_ms(started))
        timeout = float(channel.config.get("timeout", 10))
        try:
            answer = await http.post(client, url, body, headers, timeout)
        except http.NoAnswer as exc:
            return Sent(False, error=http.describe(exc, timeout), ms=_ms(started))
        sent = Sent(
            200 <= answer.status < 300,
            http_status=answer.status,
            response=answer.excerpt(EXCERPT),
            retry_after=answer.retry_after,
            ms=_ms(started),
        )
        if not sent.ok:
            sent.permanent = not transient(answer.status)
            sent.error = f"HTTP {answer.status}"
            return sent
        field = channel.config.get("success_field", DEFAULT_SUCCESS_FIELD.get(channel.kind))
        if field:
            _provider_verdict(sent, answer, field)
        return sent


def _provider_verdict(sent: Sent, answer: http.Answer, field: str) -> None:
    """Providers answer 200 with an error code: 0 is success, -1 "busy" is worth a retry."""
    try:
        code = orjson.loads(answer.body).get(field)
    except (orjson.JSONDecodeError, AttributeError):
        sent.ok, sent.error = False, f"the answer is not JSON with a {field!r} field"
        return
    if code not in (0, "0"):
        sent.ok = False
        sent.permanent = code not in (-1, "-1")
        sent.error = f"{field} {code}"


class EmailAdapter:
    """Mail over SMTP (stdlib ``smtplib`` in a worker thread)."""

    async def send(self, channel: Channel, message: Claimed, client: aiohttp.ClientSession) -> Sent:
        started = time.perf_counter()
        cfg = channel.config
        context = body_context(channel, message)
        try:
            mail = EmailMessage()
            mail["From"] = cfg["from"]
            mail["To"] = templating.render_text(
                cfg.get("to", "{{ payload.email }}"), context, "config.to"
            )
            mail["Subject"] = templating.render_text(cfg["subject"], context, "config.subject")
            mail["X-Rapport-Key"] = message.key
            unsubscribe = message.payload.get("unsubscribe_url")
            if unsubscribe:  # RFC 8058: mail clients offer a one-click unsubscribe
                mail["List-Unsubscribe"] = f"<{unsubscribe}>"
                mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            mail.set_content(templating.render_text(cfg["body"], context, "config.body"))
        except (DeliveryError, ValueError) as exc:
            return Sent(False, permanent=True, error=str(exc), ms=_ms(started))
        try:
            port = cfg.get("port", 465 if cfg.get("ssl") else 25)
            await check_url_async(
                f"http://{cfg['host']}:{port}", channel.allow_private, "config.host"
            )
        except DeliveryError as exc:
            return Sent(False, permanent=True, error=str(exc), ms=_ms(started))
        except ConnectionError as exc:
            return Sent(False, error=str(exc), ms=_ms(started))
        try:
            reply = await asyncio.to_thread(_smtp_send, channel, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return Sent(
                False,
                permanent=all(c >= 500 for c in codes),
                http_status=codes[0],
                error=f"recipients refused: {exc.recipients}",
                ms=_ms(started),
            )
        except smtplib.SMTPResponseException as exc:
            return Sent(
                False,
                permanent=exc.smtp_code >= 500,
                http_status=exc.smtp_code,
                error=f"SMTP {exc.smtp_code}: {exc.smtp_error!r}",
                ms=_ms(started),
            )
        except (OSError, smtplib.SMTPException) as exc:
            return Sent(False, error=f"{exc.__class__.__name__}: {exc}", ms=_ms(started))
        return Sent(True, http_status=250, response=reply, ms=_ms(started))


def _smtp_send(channel: Channel, mail: EmailMessage) -> str:
    cfg = channel.config
    port = int(cfg.get("port", 465 if cfg.get("ssl") else 25))
    timeout = float(cfg.get("timeout", 30))
    if cfg.get("ssl"):
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            cfg["host"], port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(cfg["host"], port, timeout=timeout)
    with smtp:
        if cfg.get("starttls"):
            smtp.starttls(context=ssl.create_default_context())
        if cfg.get("username"):
            smtp.login(cfg["username"], channel.secret or "")
        refused = smtp.send_message(mail)
    return f"accepted; refused: {refused}" if refused else "accepted"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


_http = HttpAdapter()
ADAPTERS: dict[str, Adapter] = {
    "webhook": _http,
    "sms": _http,
    "push": _http,
    "wechat_mp": _http,
    "wecom": _http,
    "email": EmailAdapter(),
}


def adapter_for(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise DeliveryError(
            f"channels of kind {kind!r} are not sent (export a call list)", "kind"
        ) from None
