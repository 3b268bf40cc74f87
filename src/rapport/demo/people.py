"""The hidden population: who the demo's customers really are, before any system records them.

Each true person gets clean, unique identifiers derived from their index (so no two people
share a mobile or an email by accident); the mess is added later by each system that records
them (``rapport.demo.mess``). Names come from Faker pools built once per process: Faker is
slow per call, a ``random.Random`` choice from a pool is not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from faker import Faker

#: (city, ID-card region code of one of its districts); real codes so the ID numbers look right
CITIES: list[tuple[str, str]] = [
    ("北京", "110105"),
    ("上海", "310115"),
    ("广州", "440106"),
    ("深圳", "440305"),
    ("杭州", "330106"),
    ("南京", "320102"),
    ("成都", "510107"),
    ("武汉", "420106"),
    ("重庆", "500103"),
    ("西安", "610113"),
    ("天津", "120101"),
    ("苏州", "320505"),
    ("青岛", "370202"),
    ("长沙", "430104"),
    ("郑州", "410105"),
    ("沈阳", "210102"),
    ("厦门", "350203"),
    ("宁波", "330203"),
    ("合肥", "340104"),
    ("昆明", "530102"),
]
#: how many more customers the big cities have
CITY_WEIGHTS = [14, 14, 10, 10, 7, 6, 7, 6, 6, 5, 5, 5, 4, 4, 4, 3, 3, 3, 3, 2]

CN_MOBILE_PREFIXES = [
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
    "155", "156", "157", "158", "159", "176", "177", "180", "181", "182", "185", "186",
    "187", "188", "189", "199",
]  # fmt: skip
FOREIGN_MOBILE_PREFIXES = ["+1415", "+1212", "+1650", "+447911", "+447400"]
EMAIL_DOMAINS = ["qq.com", "163.com", "126.com", "sina.com", "gmail.com", "outlook.com"]
EMAIL_DOMAIN_WEIGHTS = [30, 25, 10, 8, 15, 12]
MEMBER_LEVELS = ["regular", "silver", "gold", "platinum"]
MEMBER_LEVEL_WEIGHTS = [60, 25, 11, 4]
INCOME_BANDS = ["<5k", "5k-10k", "10k-20k", "20k-50k", ">50k"]
INCOME_WEIGHTS = [20, 35, 28, 13, 4]
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
_ID_CHECK = "10X98765432"


def id_card_checksum(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of a Chinese resident ID number."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


@dataclass(frozen=True)
class Pools:
    """Name pools drawn once from Faker (seeded), shared by every chunk of a run."""

    zh_last: list[str]
    zh_male: list[str]
    zh_female: list[str]
    en_last: list[str]
    en_male: list[str]
    en_female: list[str]
    romanized: list[str]

    @classmethod
    def build(cls, seed: int, size: int = 1500) -> Pools:
        zh, en = Faker("zh_CN"), Faker("en_US")
        zh.seed_instance(seed)
        en.seed_instance(seed)
        return cls(
            zh_last=[zh.last_name() for _ in range(size)],  # Faker weights common surnames
            zh_male=[zh.first_name_male() for _ in range(size)],
            zh_female=[zh.first_name_female() for _ in range(size)],
            en_last=[en.last_name() for _ in range(size)],
            en_male=[en.first_name_male() for _ in range(size)],
            en_female=[en.first_name_female() for _ in range(size)],
            romanized=sorted({zh.first_romanized_name().lower() for _ in range(size)}),
        )


@dataclass(slots=True)
class Person:
    """One real customer and how they behave; ``pid`` is the hidden ground-truth id."""

    pid: int
    foreign: bool
    name: str
    gender: str  # male | female
    birthday: date
    mobile: str  # canonical: 11 national digits for China, E.164 otherwise
    email: str
    city: str
    id_card: str
    income: str
    member_ids: list[str] = field(default_factory=list)
    registered_at: datetime | None = None
    member_level: str = "regular"
    customer_ids: list[str] = field(default_factory=list)
    app_devices: list[str] = field(default_factory=list)
    web_cookies: list[str] = field(default_factory=list)
    #: a tablet shared with another person of the household (set by the chunk)
    household_device: str | None = None
    uses_test_phone: bool = False
    fridge_shopper: bool = False
    traveller: bool = False
    big_spender: bool = False
    n_orders: int = 0
    n_hotel_stays: int = 0
    n_tickets: int = 0
    n_events: int = 0


def _bijection(idx: int, mul: int, add: int, modulus: int) -> int:
    """A permutation of range(modulus) (mul coprime with it): unique values that look random."""
    return (idx * mul + add) % modulus


def make_person(rng: random.Random, pid: int, pools: Pools, now: datetime) -> Person:
    foreign = rng.random() < 0.04
    gender = "male" if rng.random() < 0.5 else "female"
    if foreign:
        first = rng.choice(pools.en_male if gender == "male" else pools.en_female)
        name = f"{first} {rng.choice(pools.en_last)}"
        prefix, digits = rng.choice(FOREIGN_MOBILE_PREFIXES), _bijection(pid, 7919, 0, 10**6)
        # US numbers need an exchange digit 2-9 before the last six; UK mobiles do not
        mobile = f"{prefix}{'8' if prefix.startswith('+1') else ''}{digits:06d}"
    else:
        first = rng.choice(pools.zh_male if gender == "male" else pools.zh_female)
        name = rng.choice(pools.zh_last) + first
        mobile = rng.choice(CN_MOBILE_PREFIXES) + f"{_bijection(pid, 48271, 1234567, 10**8):08d}"
    age = min(75, max(18, int(rng.gauss(36, 11))))
    birthday = date(now.year - age, 1, 1) + timedelta(days=rng.randrange(365))
    city, region = rng.choices(CITIES, CITY_WEIGHTS)[0]
    seq = rng.randrange(0, 999, 2) + (1 if gender == "male" else 0)  # odd sequence = male
    first17 = f"{region}{birthday:%Y%m%d}{seq % 1000:03d}"
    user = rng.choice(pools.romanized) + rng.choice(["", ".", "_"])
    domain = rng.choices(EMAIL_DOMAINS, EMAIL_DOMAIN_WEIGHTS)[0]
    local = f"{_bijection(pid, 7919, 10_000_000, 10**9)}" if domain == "qq.com" else None
    email = f"{local or user + str(_bijection(pid, 7907, 4321, 10**7))}@{domain}"
    p = Person(
        pid=pid,
        foreign=foreign,
        name=name,
        gender=gender,
        birthday=birthday,
        mobile=mobile,
        email=email,
        city=city,
        id_card=first17 + id_card_checksum(first17),
        income=rng.choices(INCOME_BANDS, INCOME_WEIGHTS)[0],
    )
    rich = p.income in ("20k-50k", ">50k")
    if rng.random() < 0.70:
        n_ids = 2 if rng.random() < 0.03 else 1  # re-registered: a duplicate member row
        p.member_ids = [f"M{pid * 2 + k + 1:09d}" for k in range(n_ids)]
        p.registered_at = now - timedelta(seconds=rng.randrange(3 * 365 * 86400))
        p.member_level = rng.choices(MEMBER_LEVELS, MEMBER_LEVEL_WEIGHTS)[0]
    on_app, on_web = rng.random() < 0.6, rng.random() < 0.5
    if not (on_app or on_web) and rng.random() < 0.8:
        on_app = True  # most people have at least one tracked touchpoint
    if on_app:
        p.app_devices = [device_id(rng) for _ in range(2 if rng.random() < 0.15 else 1)]
    if on_web:
        p.web_cookies = [device_id(rng) for _ in range(1 + int(rng.random() < 0.3))]
    p.uses_test_phone = rng.random() < 0.004
    p.fridge_shopper = rng.random() < (0.30 if rich else 0.12)
    p.traveller = rng.random() < (0.35 if rich else 0.15)
    p.big_spender = rich and rng.random() < 0.02
    if rng.random() < 0.45:
        p.n_orders = 1 + min(12, int(rng.expovariate(0.7)))
        p.customer_ids = [f"C{_bijection(pid, 6007, 20_000_000, 10**8) + k:08d}" for k in (0, 1)]
        if rng.random() >= 0.1:  # 10% checked out as a guest once: a second customer id
            p.customer_ids = p.customer_ids[:1]
    if p.traveller:
        p.n_hotel_stays = 30 + rng.randrange(10) if p.big_spender else 1 + rng.randrange(4)
    p.n_tickets = rng.choice([1, 1, 1, 2, 3]) if rng.random() < 0.15 else 0
    if p.app_devices or p.web_cookies:
        p.n_events = min(300, max(3, int(rng.expovariate(1 / 12))))
    return p


def device_id(rng: random.Random) -> str:
    """A UUID-shaped device or cookie id, reproducible from the seed."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
