"""Identity rules, configured not coded: identifier types, blocked values, survivorship rules.

They live in the metadata DB (``identifier_types``, ``identity_blocklist``,
``survivorship_rules``); the defaults below are written on first use and then belong to the
user. ``IdentityConfig`` is the compiled, read-only view the resolver works with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from rapport.db.tables import identifier_types, identity_blocklist, survivorship_rules
from rapport.identity.graph import TypeRule
from rapport.ingest.normalize import (
    InvalidValue,
    clean_string,
    normalize_email,
    normalize_id_card,
    normalize_mobile,
)

NORMALISERS = ("mobile", "email", "id_card", "trim", "lower")
SURVIVORSHIP_RULES = (
    "source_priority",
    "most_recent",
    "most_frequent",
    "first_non_empty",
    "sum",
    "union",
)
DEFAULT_SURVIVORSHIP = "most_recent"


@dataclass(frozen=True)
class IdentifierTypeConfig:
    name: str
    priority: int
    max_per_person: int | None = None
    merge: bool = True
    normaliser: str = "trim"
    pattern: str | None = None
    paths: tuple[str, ...] = ()
    scope_path: str | None = None
    shared_after: int | None = None
    description: str = ""
    builtin: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "priority": self.priority,
            "max_per_person": self.max_per_person,
            "merge": self.merge,
            "normaliser": self.normaliser,
            "pattern": self.pattern,
            "paths": list(self.paths),
            "scope_path": self.scope_path,
            "shared_after": self.shared_after,
            "description": self.description,
            "builtin": self.builtin,
        }


_T = IdentifierTypeConfig
#: priorities: the harder the identifier, the higher; limits from what real people have
DEFAULT_TYPES: tuple[IdentifierTypeConfig, ...] = (
    _T("id_card", 100, 1, normaliser="id_card",
       paths=("traits.id_card", "context.traits.id_card"),
       description="Chinese resident ID card number (checksum verified)"),
    _T("mobile", 90, 2, normaliser="mobile", shared_after=3,
       paths=("traits.mobile", "traits.phone", "context.traits.mobile", "context.traits.phone"),
       description="Mobile number in E.164 (+86 by default)"),
    _T("email", 80, 3, normaliser="email", shared_after=3,
       paths=("traits.email", "context.traits.email"), description="Email address, lower-cased"),
    _T("wechat_unionid", 75, 1, paths=("context.wechat.unionid", "traits.wechat_unionid"),
       description="WeChat unionid: one per person across the company's apps"),
    _T("member_id", 70, 3, paths=("userId",), description="Member number of the loyalty DB"),
    _T("customer_id", 60, 3, description="Customer id of the order system"),
    _T("wechat_openid", 50, 5, paths=("context.wechat.openid", "traits.wechat_openid"),
       scope_path="context.wechat.appid",
       description="WeChat openid: per app, so it is scoped by the app id"),
    _T("device_id", 40, 5, normaliser="lower", shared_after=1, paths=("context.device.id",),
       description="Mobile device id (IDFA/IDFV/Android id)"),
    _T("anonymous_id", 30, 10, shared_after=1, paths=("anonymousId",),
       description="SDK anonymous id / web cookie"),
)  # fmt: skip

#: (type or None for all, exact value, regex, reason)
DEFAULT_BLOCKLIST: tuple[tuple[str | None, str | None, str | None, str], ...] = (
    (None, None, r"^[0\-]*$", "only zeros and dashes: a placeholder"),
    (None, None, r"(?i)^(-1|null|none|nil|undefined|anonymous|unknown|test|n/?a)$",
     "a placeholder word"),
    ("mobile", "+8613800138000", None, "well-known test number 13800138000"),
    ("mobile", None, r"^\+861(\d)\1{9}$", "one digit repeated: a typed-in placeholder number"),
    ("device_id", "9774d56d682e549c", None, "Android emulator id"),
    ("device_id", None, r"^0+(-0+)*$", "zeroed advertising id (tracking limited)"),
)  # fmt: skip


class ConfigError(ValueError):
    """A rule that cannot work; the message says which field and why."""


@dataclass(frozen=True)
class BlockEntry:
    id: int
    id_type: str | None
    value: str | None
    pattern: str | None
    reason: str
    auto: bool
    created_at: datetime | None = None
    created_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "id_type": self.id_type,
            "value": self.value,
            "pattern": self.pattern,
            "reason": self.reason,
            "auto": self.auto,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
        }


@dataclass
class IdentityConfig:
    """The compiled rules: type order, normalisers, blocklist matchers."""

    types: list[IdentifierTypeConfig]
    blocklist: list[BlockEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.types = sorted(self.types, key=lambda t: t.name)
        self.index = {t.name: i for i, t in enumerate(self.types)}
        self._patterns = {t.name: re.compile(t.pattern) for t in self.types if t.pattern}
        self._exact: dict[str | None, dict[str, str]] = {}
        self._regex: list[tuple[str | None, re.Pattern[str], str]] = []
        for entry in self.blocklist:
            if entry.value is not None:
                self._exact.setdefault(entry.id_type, {})[entry.value] = entry.reason
            if entry.pattern:
                self._regex.append((entry.id_type, re.compile(entry.pattern), entry.reason))

    def rules(self) -> list[TypeRule]:
        return [
            TypeRule(i, t.name, t.priority, t.max_per_person, t.merge)
            for i, t in enumerate(self.types)
        ]

    def type(self, name: str) -> IdentifierTypeConfig | None:
        i = self.index.get(name)
        return None if i is None else self.types[i]

    def normalise(self, id_type: str, raw: object) -> str:
        """The canonical value, or ``InvalidValue`` (an identifier we will not match on)."""
        t = self.type(id_type)
        if t is None:
            raise InvalidValue("unknown_type", f"unknown identifier type {id_type!r}")
        text = clean_string(raw)
        if text is None:
            raise InvalidValue("empty", f"empty {id_type}")
        if t.normaliser == "mobile":
            text = normalize_mobile(text)
        elif t.normaliser == "email":
            text = normalize_email(text)
        elif t.normaliser == "id_card":
            text = normalize_id_card(text)
        elif t.normaliser == "lower":
            text = text.lower()
        pattern = self._patterns.get(id_type)
        if pattern is not None and not pattern.search(text):
            raise InvalidValue("pattern", f"{id_type} {text!r} does not match {pattern.pattern}")
        return text

    def blocked(self, id_type: str, value: str) -> str | None:
        """Why the value must never link anything, or None."""
        for scope in (id_type, None):
            reason = self._exact.get(scope, {}).get(value)
            if reason is not None:
                return reason
        for scope, pattern, reason in self._regex:
            if (scope is None or scope == id_type) and pattern.search(value):
                return reason
        return None


# -- reading and writing the rules ----------------------------------------------------------
def _now() -> datetime:
    return datetime.now(UTC)


def ensure_defaults(engine: Engine) -> None:
    """Write the default types and blocklist the first time (then they are the user's)."""
    with engine.begin() as conn:
        if conn.execute(select(func.count()).select_from(identifier_types)).scalar_one():
            return
        now = _now()
        conn.execute(
            insert(identifier_types),
            [_type_row(t) | {"builtin": True, "updated_at": now} for t in DEFAULT_TYPES],
        )
        conn.execute(
            insert(identity_blocklist),
            [
                {"id_type": t, "value": v, "pattern": p, "reason": r, "auto": False}
                | {"created_at": now, "created_by": "default"}
                for t, v, p, r in DEFAULT_BLOCKLIST
            ],
        )


def _type_row(t: IdentifierTypeConfig) -> dict[str, Any]:
    row = t.as_dict()
    row["paths"] = list(t.paths)
    return row


def load(engine: Engine) -> IdentityConfig:
    ensure_defaults(engine)
    with engine.connect() as conn:
        types = [
            IdentifierTypeConfig(
                name=r.name,
                priority=r.priority,
                max_per_person=r.max_per_person,
                merge=r.merge,
                normaliser=r.normaliser,
                pattern=r.pattern,
                paths=tuple(r.paths or ()),
                scope_path=r.scope_path,
                shared_after=r.shared_after,
                description=r.description or "",
                builtin=r.builtin,
            )
            for r in conn.execute(select(identifier_types))
        ]
        blocks = [
            BlockEntry(
                r.id, r.id_type, r.value, r.pattern, r.reason, r.auto, r.created_at, r.created_by
            )
            for r in conn.execute(select(identity_blocklist).order_by(identity_blocklist.c.id))
        ]
    return IdentityConfig(types, blocks)


def validate_type(t: IdentifierTypeConfig) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,49}", t.name):
        raise ConfigError(f"name: {t.name!r} must be lower-case letters, digits and _")
    if t.normaliser not in NORMALISERS:
        raise ConfigError(f"normaliser: {t.normaliser!r} is not one of {', '.join(NORMALISERS)}")
    if t.max_per_person is not None and t.max_per_person < 1:
        raise ConfigError("max_per_person: must be at least 1 (or empty for no limit)")
    if t.shared_after is not None and t.shared_after < 1:
        raise ConfigError("shared_after: must be at least 1 (or empty to never auto-block)")
    if t.pattern:
        try:
            re.compile(t.pattern)
        except re.error as exc:
            raise ConfigError(f"pattern: not a regular expression ({exc})") from None
    for path in t.paths:
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", path):
            raise ConfigError(f"paths: {path!r} is not a dotted path like traits.mobile")


def save_type(engine: Engine, t: IdentifierTypeConfig) -> None:
    """Create or replace a type. Changing priorities or limits applies to links resolved from
    now on; ``rapport identity rebuild`` re-applies them to everything."""
    validate_type(t)
    ensure_defaults(engine)
    row = _type_row(t) | {"updated_at": _now()}
    with engine.begin() as conn:
        exists = conn.execute(
            select(identifier_types.c.builtin).where(identifier_types.c.name == t.name)
        ).first()
        if exists:
            row["builtin"] = exists.builtin
            conn.execute(
                update(identifier_types).where(identifier_types.c.name == t.name).values(row)
            )
        else:
            conn.execute(insert(identifier_types).values(row | {"builtin": False}))


def delete_type(engine: Engine, name: str) -> bool:
    with engine.begin() as conn:
        return bool(
            conn.execute(delete(identifier_types).where(identifier_types.c.name == name)).rowcount
        )


def add_block(
    engine: Engine,
    *,
    reason: str,
    actor: str,
    id_type: str | None = None,
    value: str | None = None,
    pattern: str | None = None,
    auto: bool = False,
) -> int:
    if (value is None) == (pattern is None):
        raise ConfigError("give exactly one of value or pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"pattern: not a regular expression ({exc})") from None
    row: dict[str, Any] = {"id_type": id_type, "value": value, "pattern": pattern}
    row["reason"] = reason
    row |= {"auto": auto, "created_at": _now(), "created_by": actor}
    with engine.begin() as conn:
        key = conn.execute(insert(identity_blocklist).values(row)).inserted_primary_key
    assert key is not None
    return int(key[0])


def remove_block(engine: Engine, block_id: int) -> BlockEntry | None:
    with engine.begin() as conn:
        r = conn.execute(select(identity_blocklist).where(identity_blocklist.c.id == block_id))
        row = r.first()
        if row is None:
            return None
        conn.execute(delete(identity_blocklist).where(identity_blocklist.c.id == block_id))
    return BlockEntry(row.id, row.id_type, row.value, row.pattern, row.reason, row.auto)


# -- survivorship ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SurvivorshipRule:
    property: str
    rule: str = DEFAULT_SURVIVORSHIP
    sources: tuple[str, ...] = ()


def survivorship(engine: Engine) -> dict[str, SurvivorshipRule]:
    with engine.connect() as conn:
        return {
            r.property: SurvivorshipRule(r.property, r.rule, tuple(r.sources or ()))
            for r in conn.execute(select(survivorship_rules))
        }


def save_survivorship(engine: Engine, rules: Iterable[SurvivorshipRule]) -> None:
    rules = list(rules)
    for r in rules:
        if r.rule not in SURVIVORSHIP_RULES:
            raise ConfigError(
                f"{r.property}.rule: {r.rule!r} is not one of {', '.join(SURVIVORSHIP_RULES)}"
            )
        if r.rule == "source_priority" and not r.sources:
            raise ConfigError(f"{r.property}.sources: source_priority needs the source order")
    with engine.begin() as conn:
        for r in rules:
            conn.execute(
                delete(survivorship_rules).where(survivorship_rules.c.property == r.property)
            )
            conn.execute(
                insert(survivorship_rules).values(
                    property=r.property, rule=r.rule, sources=list(r.sources), updated_at=_now()
                )
            )
