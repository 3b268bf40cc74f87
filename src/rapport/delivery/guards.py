"""Send-time guards for messages to a person: consent, frequency caps, quiet hours.

Checked by the dispatcher for each claimed message whose channel reaches the person
(``PERSONAL_KINDS``) and that names one (``person_key``), just before it is sent — after a
campaign's plan, since a person may unsubscribe or receive other messages meanwhile:

- **consent**: a person who unsubscribed from the channel (or from everything, ``*``) gets
  nothing more on it: the message is ``suppressed`` (a final status, not a failure);
- **frequency caps** (``delivery_frequency_caps``, e.g. ``"sms:1/day, sms:3/week, *:5/day"``):
  messages delivered to the person on the channel in the last hour/day/week, plus those
  passed earlier in the same batch, must stay under each cap, else ``suppressed``;
- **quiet hours** (``delivery_quiet_hours``, e.g. ``"21:00-08:00"``), in the person's time
  zone (the payload's ``timezone``, else the workspace's): the message waits until they end.

Unsubscribing: ``unsubscribe_token`` signs (person, channel) with the workspace secret; the
public page ``/u/{token}`` (``rapport.web.api_delivery``) records it in ``consents``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy import Engine, select

from rapport.db.tables import consents, outbox
from rapport.delivery.errors import DeliveryError
from rapport.delivery.outbox import Claimed, Result, now

#: channel kinds whose messages reach the person themselves (others go to systems or staff)
PERSONAL_KINDS = frozenset({"sms", "push", "email", "wechat_mp"})
WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
_CAP = re.compile(r"^\s*([\w*]+)\s*:\s*(\d+)\s*/\s*(hour|day|week)\s*$")
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class Cap:
    kind: str  # a channel kind, or "*": every personal channel together
    limit: int
    window: timedelta


def parse_caps(text: str) -> list[Cap]:
    """``"sms:1/day, *:5/week"`` → caps; a clear error naming the bad part."""
    caps = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _CAP.match(part)
        if m is None or (m[1] != "*" and m[1] not in PERSONAL_KINDS):
            raise DeliveryError(
                f"delivery_frequency_caps: {part.strip()!r} is not '<kind>:<n>/<hour|day|week>' "
                f"with kind one of {', '.join(sorted(PERSONAL_KINDS))} or *",
                "delivery_frequency_caps",
            )
        caps.append(Cap(m[1], int(m[2]), WINDOWS[m[3]]))
    return caps


def parse_quiet_hours(text: str) -> tuple[time, time] | None:
    """``"21:00-08:00"`` → (start, end); ``""`` → None."""
    if not text.strip():
        return None
    m = _HOURS.match(text)
    if m is None or int(m[1]) > 23 or int(m[3]) > 23 or int(m[2]) > 59 or int(m[4]) > 59:
        raise DeliveryError(
            f"delivery_quiet_hours: {text!r} is not 'HH:MM-HH:MM'", "delivery_quiet_hours"
        )
    return time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))


def quiet_until(at: datetime, hours: tuple[time, time], zone: ZoneInfo) -> datetime | None:
    """When the quiet hours around ``at`` end in ``zone`` (None: ``at`` is not in them).
    A window may span midnight ("21:00-08:00"); its end is a wall-clock time of that zone."""
    start, end = hours
    local = at.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    inside = start <= t < end if start <= end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, zone)


def zone_of(name: object, default: str) -> ZoneInfo:
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(default)


class Guards:
    """The workspace's guards, parsed once per dispatcher."""

    def __init__(self, caps: str, quiet_hours: str, timezone: str) -> None:
        self.caps = parse_caps(caps)
        self.quiet = parse_quiet_hours(quiet_hours)
        self.timezone = timezone

    def check(
        self, engine: Engine, batch: Sequence[Claimed], kinds: dict[str, str]
    ) -> dict[int, Result]:
        """The messages of ``batch`` that must not go now: id → their result (suppressed, or
        postponed to the end of the quiet hours). One query each for consents and counts."""
        personal = [
            m for m in batch if m.person_key is not None and kinds.get(m.channel) in PERSONAL_KINDS
        ]
        if not personal:
            return {}
        at = now()
        persons = sorted({m.person_key for m in personal if m.person_key is not None})
        with engine.connect() as conn:
            refused = {
                (p, c)
                for p, c in conn.execute(
                    select(consents.c.person_key, consents.c.channel).where(
                        consents.c.person_key.in_(persons), consents.c.status == "unsubscribed"
                    )
                )
            }
            sent = self._sent(conn, persons, at) if self.caps else []
        out: dict[int, Result] = {}
        counts = Counter[tuple[int, str, int]]()  # (person, channel or "*", cap index)
        for person, channel, when in sent:
            kind = kinds.get(channel, "")
            for i, cap in enumerate(self.caps):
                if kind in PERSONAL_KINDS and cap.kind in ("*", kind) and when >= at - cap.window:
                    counts[(person, "*" if cap.kind == "*" else channel, i)] += 1
        for m in personal:
            assert m.person_key is not None
            kind = kinds[m.channel]
            if (m.person_key, m.channel) in refused or (m.person_key, "*") in refused:
                out[m.id] = _suppressed(m, f"the person unsubscribed from {m.channel}")
                continue
            if self.quiet is not None:
                zone = zone_of(m.payload.get("timezone"), self.timezone)
                until = quiet_until(at, self.quiet, zone)
                if until is not None:
                    out[m.id] = Result(
                        m.id,
                        m.attempt,
                        "pending" if m.attempt == 1 else "failed",
                        "postponed",
                        next_attempt_at=until.astimezone(UTC),  # SQLite keeps no zone
                        error=f"quiet hours in {zone.key} until {until:%H:%M}",
                    )
                    continue
            slots = [
                ((m.person_key, "*" if cap.kind == "*" else m.channel, i), cap)
                for i, cap in enumerate(self.caps)
                if cap.kind in ("*", kind)
            ]
            full = next((cap for slot, cap in slots if counts[slot] >= cap.limit), None)
            if full is not None:
                per = next(k for k, w in WINDOWS.items() if w == full.window)
                out[m.id] = _suppressed(
                    m, f"frequency cap {full.kind}:{full.limit}/{per} reached for this person"
                )
                continue
            for slot, _ in slots:
                counts[slot] += 1  # passed in this batch: it counts for the next
        return out

    def _sent(
        self, conn: sa.Connection, persons: list[int], at: datetime
    ) -> list[tuple[int, str, datetime]]:
        """(person, channel, delivered at) within the longest cap window."""
        since = at - max(c.window for c in self.caps)
        rows = conn.execute(
            select(outbox.c.person_key, outbox.c.channel, outbox.c.delivered_at).where(
                outbox.c.person_key.in_(persons),
                outbox.c.status == "delivered",
                outbox.c.delivered_at >= since,
            )
        ).all()
        return [(p, c, w if w.tzinfo else w.replace(tzinfo=at.tzinfo)) for p, c, w in rows]


def _suppressed(m: Claimed, why: str) -> Result:
    return Result(m.id, m.attempt, "suppressed", "suppressed", error=why)


# -- unsubscribing ------------------------------------------------------------------------------
def unsubscribe_token(secret: str, person_key: int, channel: str) -> str:
    """A token naming (person, channel), signed: the unsubscribe link of a message."""
    body = f"{person_key}.{channel}".encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(body + b"." + mac).decode().rstrip("=")


def read_token(secret: str, token: str) -> tuple[int, str]:
    """(person, channel) of a valid token; ``DeliveryError`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body, _, mac = raw.rpartition(b".")
        person, _, channel = body.decode().partition(".")
        good = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:12]
        if hmac.compare_digest(mac, good) and person.isdigit() and channel:
            return int(person), channel
    except (ValueError, UnicodeDecodeError):
        pass
    raise DeliveryError("this unsubscribe link is not valid", "token")


def set_consent(engine: Engine, person_key: int, channel: str, status: str, source: str) -> None:
    """Record that ``person_key`` is ``status`` (subscribed / unsubscribed) on ``channel``."""
    with engine.begin() as conn:
        conn.execute(
            sa.delete(consents).where(
                consents.c.person_key == person_key, consents.c.channel == channel
            )
        )
        conn.execute(
            sa.insert(consents).values(
                person_key=person_key, channel=channel, status=status, at=now(), source=source
            )
        )


def consent_of(engine: Engine, person_key: int) -> dict[str, str]:
    """Channel → status of what ``person_key`` said (channels not named: subscribed)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(consents.c.channel, consents.c.status).where(consents.c.person_key == person_key)
        ).all()
    return {c: s for c, s in rows}
