"""Channels: where messages go, configured (not coded) per customer.

``config`` by kind (templates are Jinja2, sandboxed; see ``templating``):

- ``webhook``: ``url``, optional ``headers``, ``template`` (JSON body; default: the payload),
  ``timeout`` (s). Signed with ``secret``.
- ``sms`` | ``push`` | ``wechat_mp`` | ``wecom``: a provider's HTTP API: ``url`` (may use
  ``{{ secret }}``, e.g. an access token), ``headers`` (likewise), ``template`` (JSON body;
  WeChat and WeCom have their documented request as default), ``success_field`` (a JSON field
  that must be 0 in the answer, ``errcode`` by default for WeChat/WeCom).
- ``email``: ``host``, ``port``, ``username``, ``from``, ``to`` (default
  ``{{ payload.email }}``), ``subject``, ``body``, ``starttls`` / ``ssl``; ``secret`` is the
  SMTP password.
- ``call_list``: ``columns`` (payload fields exported, in order; default: every field seen).
"""

from __future__ import annotations

import secrets as secrets_mod
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, select

from rapport.db.tables import channels, outbox
from rapport.delivery import templating
from rapport.delivery.errors import DeliveryError
from rapport.delivery.outbox import now, utc
from rapport.delivery.targets import check_url

Kind = Literal["webhook", "email", "sms", "push", "wechat_mp", "wecom", "call_list"]
HTTP_KINDS = ("webhook", "sms", "push", "wechat_mp", "wecom")

#: the providers' documented request bodies, used when a channel gives no template
DEFAULT_TEMPLATES = {
    # WeChat official account template message (POST cgi-bin/message/template/send)
    "wechat_mp": (
        '{"touser": {{ payload.openid|tojson }}, "template_id": {{ config.template_id|tojson }},'
        ' "url": {{ payload.url|default("")|tojson }}, "data": {{ payload.data|tojson }}}'
    ),
    # WeCom application text message (POST cgi-bin/message/send)
    "wecom": (
        '{"touser": {{ payload.touser|tojson }}, "msgtype": "text",'
        ' "agentid": {{ config.agentid|tojson }},'
        ' "text": {"content": {{ payload.content|tojson }}}}'
    ),
}
DEFAULT_SUCCESS_FIELD = {"wechat_mp": "errcode", "wecom": "errcode"}


class ChannelSpec(BaseModel):
    """A channel as the API and console save it (``secret`` is write-only)."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Kind
    description: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    secret: str | None = None
    rate_per_second: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)
    allow_private: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class Channel:
    """A channel as the dispatcher uses it (secret in clear)."""

    name: str
    kind: str
    config: dict[str, Any]
    secret: str | None
    rate_per_second: float | None
    burst: int | None
    allow_private: bool
    enabled: bool

    def context(self) -> dict[str, Any]:
        """What URL and header templates see (bodies do not see the secret)."""
        return {"config": self.config, "secret": self.secret or ""}

    def url(self) -> str:
        return templating.render_text(str(self.config["url"]), self.context(), "config.url")


def mask(secret: str | None) -> str | None:
    if not secret:
        return None
    return "••••" + secret[-4:] if len(secret) >= 12 else "••••"


def validate(spec: ChannelSpec) -> None:
    """Check a channel before it is saved: its templates, its URL and SMTP settings."""
    cfg = spec.config
    for name in ("template", "subject", "body", "to", "url"):
        if name in cfg:
            if not isinstance(cfg[name], str):
                raise DeliveryError(f"config.{name}: must be text", f"config.{name}")
            templating.check(cfg[name], f"config.{name}")
    headers = cfg.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise DeliveryError("config.headers: must map header names to text", "config.headers")
    for value in headers.values():
        templating.check(value, "config.headers")
    if spec.kind in HTTP_KINDS:
        if not cfg.get("url"):
            raise DeliveryError(f"config.url: a {spec.kind} channel needs a URL", "config.url")
        channel = _runtime(spec.model_dump())
        check_url(channel.url(), spec.allow_private, "config.url")
    elif spec.kind == "email":
        for name in ("host", "from", "subject", "body"):
            if not cfg.get(name):
                raise DeliveryError(f"config.{name}: an email channel needs it", f"config.{name}")
        if not isinstance(cfg.get("port", 25), int):
            raise DeliveryError("config.port: must be a number", "config.port")
        if not spec.allow_private:
            check_url(f"http://{cfg['host']}:{cfg.get('port', 25)}", False, "config.host")
    elif spec.kind == "call_list":
        columns = cfg.get("columns", [])
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise DeliveryError(
                "config.columns: must be a list of payload fields", "config.columns"
            )


def _runtime(row: dict[str, Any]) -> Channel:
    return Channel(
        name=row["name"],
        kind=row["kind"],
        config=dict(row["config"] or {}),
        secret=row.get("secret"),
        rate_per_second=row.get("rate_per_second"),
        burst=row.get("burst"),
        allow_private=bool(row.get("allow_private")),
        enabled=bool(row.get("enabled", True)),
    )


def _public(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["secret"] = mask(out["secret"])
    out["created_at"], out["updated_at"] = utc(out["created_at"]), utc(out["updated_at"])
    return out


def create_channel(engine: Engine, spec: ChannelSpec) -> dict[str, Any]:
    """Save a new channel. A webhook without a secret gets a generated one, returned once
    in ``secret_once`` (the receiver needs it to verify signatures)."""
    validate(spec)
    generated = None
    if spec.kind == "webhook" and not spec.secret:
        generated = "whsec_" + secrets_mod.token_urlsafe(32)
    at = now()
    with engine.begin() as conn:
        if conn.execute(select(channels.c.id).where(channels.c.name == spec.name)).first():
            raise DeliveryError(f"name: a channel named {spec.name!r} exists already", "name", 409)
        conn.execute(
            sa.insert(channels).values(
                **spec.model_dump(exclude={"secret"}),
                secret=spec.secret or generated,
                created_at=at,
                updated_at=at,
            )
        )
    found = get_channel(engine, spec.name)
    assert found is not None
    if generated:
        found["secret_once"] = generated
    return found


def update_channel(engine: Engine, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Change some fields; a secret left out (or null) stays as it was."""
    with engine.connect() as conn:
        row = conn.execute(select(channels).where(channels.c.name == name)).first()
    if row is None:
        raise DeliveryError(f"no channel named {name!r}", "name", 404)
    unknown = sorted(set(changes) - set(ChannelSpec.model_fields))
    if unknown:
        raise DeliveryError(f"{unknown[0]}: not a channel field", unknown[0])
    merged = {k: v for k, v in row._mapping.items() if k in ChannelSpec.model_fields}
    merged.update({k: v for k, v in changes.items() if not (k == "secret" and v is None)})
    if merged["name"] != name:
        raise DeliveryError("name: a channel cannot be renamed (messages refer to it)", "name")
    try:
        spec = ChannelSpec.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DeliveryError(f"{where}: {first['msg']}", where) from None
    validate(spec)
    with engine.begin() as conn:
        conn.execute(
            sa.update(channels)
            .where(channels.c.name == name)
            .values(**spec.model_dump(exclude={"name"}), updated_at=now())
        )
    found = get_channel(engine, name)
    assert found is not None
    return found


def delete_channel(engine: Engine, name: str) -> None:
    """Delete a channel that has no message waiting (they would never be sent)."""
    with engine.begin() as conn:
        waiting = conn.execute(
            select(sa.func.count()).where(
                outbox.c.channel == name,
                outbox.c.status.in_(("pending", "sending", "failed", "listed")),
            )
        ).scalar_one()
        if waiting:
            raise DeliveryError(
                f"channel {name!r} has {waiting} message(s) waiting; disable it instead",
                "name",
                409,
            )
        if not conn.execute(sa.delete(channels).where(channels.c.name == name)).rowcount:
            raise DeliveryError(f"no channel named {name!r}", "name", 404)


def get_channel(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(channels).where(channels.c.name == name)).first()
    return None if row is None else _public(row)


def list_channels(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_public(r) for r in conn.execute(select(channels).order_by(channels.c.name))]


def load_channel(engine: Engine, name: str) -> Channel:
    with engine.connect() as conn:
        row = conn.execute(select(channels).where(channels.c.name == name)).first()
    if row is None:
        raise DeliveryError(f"no channel named {name!r}", "name", 404)
    return _runtime(dict(row._mapping))


def load_channels(engine: Engine) -> dict[str, Channel]:
    with engine.connect() as conn:
        return {r.name: _runtime(dict(r._mapping)) for r in conn.execute(select(channels))}
