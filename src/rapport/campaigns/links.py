"""Trackable links and QR codes of campaign content.

``{{ link(url) }}`` stores the target once per campaign (``links``) and returns
``<public_url>/r/<token>``; the token is the link id and the person, signed (HMAC, 10 bytes),
so ``/r`` redirects only to a target that a campaign stored and no one can forge a click for
another person. ``{{ qr(url) }}`` returns ``/q/<token>.png``, the QR of the same link with
``?via=qr``: opening it records a ``scan`` instead of a ``click``. The redirect adds the token
to the target's query (``rt=``); the landing page posts it to ``POST /api/track/register``
when the visitor registers, which records a ``register``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rapport.accounts import now
from rapport.campaigns.model import CampaignError
from rapport.db.tables import link_clicks, links

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from rapport.workspace import Workspace

Kind = Literal["click", "scan", "register"]
_MAC = 10


class BadToken(LookupError):
    """A link token that was not signed by this workspace (or names no link)."""


def _mac(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), b"link:" + body, hashlib.sha256).digest()[:_MAC]


def make_token(secret: str, link_id: int, person_key: int) -> str:
    body = f"{link_id}.{person_key}".encode()
    return base64.urlsafe_b64encode(body + _mac(secret, body)).decode().rstrip("=")


def read_token(secret: str, token: str) -> tuple[int, int]:
    """(link id, person) of a token this workspace signed; ``BadToken`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise BadToken(token) from None
    body, mac = raw[:-_MAC], raw[-_MAC:]
    link, _, person = body.partition(b".")
    if hmac.compare_digest(mac, _mac(secret, body)) and link.isdigit() and person.isdigit():
        return int(link), int(person)
    raise BadToken(token)


def check_target(target: str) -> str:
    if not target.startswith(("https://", "http://")):
        raise CampaignError(f"link: {target!r} is not an http(s) URL", "content")
    return target


def link_id(engine: Engine, campaign_id: int, target: str) -> int:
    """The id of the campaign's link to ``target`` (stored on first use)."""
    check_target(target)
    where = (links.c.campaign_id == campaign_id, links.c.target == target)
    with engine.begin() as conn:
        found = conn.execute(select(links.c.id).where(*where)).scalar()
        if found is not None:
            return int(found)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(links).values(campaign_id=campaign_id, target=target))
    except IntegrityError:  # another send stored it meanwhile
        pass
    with engine.connect() as conn:
        return int(conn.execute(select(links.c.id).where(*where)).scalar_one())


def follow(engine: Engine, secret: str, token: str, kind: Kind, user_agent: str | None) -> str:
    """Record the click (scan, registration) of a token; the link's target. A registration
    counts once per token (a landing page may post it again on reload)."""
    link, person = read_token(secret, token)
    c = link_clicks.c
    with engine.begin() as conn:
        row = conn.execute(select(links).where(links.c.id == link)).mappings().first()
        if row is None:
            raise BadToken(token)
        mine = (c.link_id == link, c.person_key == person, c.kind == kind)
        if kind == "register" and conn.execute(select(c.id).where(*mine)).first():
            return str(row["target"])
        conn.execute(
            sa.insert(link_clicks).values(
                campaign_id=row["campaign_id"],
                person_key=person,
                link_id=link,
                kind=kind,
                at=now(),
                user_agent=(user_agent or "")[:300] or None,
            )
        )
    return str(row["target"])


def landing_url(target: str, token: str) -> str:
    """The target with ``rt=<token>`` added to its query: the landing page posts it back when
    the visitor registers."""
    parts = urlsplit(target)
    query = f"{parts.query}&rt={token}" if parts.query else f"rt={token}"
    return urlunsplit(parts._replace(query=query))


def qr_png(url: str) -> bytes:
    """The QR code of ``url`` as a PNG (segno: pure Python, no image library)."""
    import segno

    out = io.BytesIO()
    segno.make(url, error="m", micro=False).save(out, kind="png", scale=6, border=2)
    return out.getvalue()


class Links:
    """The link and QR helpers of one campaign's send: link ids cached per target."""

    def __init__(self, ws: Workspace, campaign_id: int) -> None:
        self.ws = ws
        self.campaign_id = campaign_id
        self.base = ws.settings.public_url.rstrip("/")
        self.secret = ws.settings.signing_key()
        self._ids: dict[str, int] = {}

    def token(self, target: str, person_key: int) -> str:
        if target not in self._ids:
            self._ids[target] = link_id(self.ws.db, self.campaign_id, target)
        return make_token(self.secret, self._ids[target], person_key)

    def link(self, target: str, person_key: int) -> str:
        return f"{self.base}/r/{self.token(target, person_key)}"

    def qr(self, target: str, person_key: int) -> str:
        return f"{self.base}/q/{self.token(target, person_key)}.png"
