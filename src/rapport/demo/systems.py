"""What each company system records about a chunk of people: member DB rows, orders, service
tickets and tracking events, each with its own ids and its own mess, plus the hidden truth.

A chunk is generated from ``(seed, chunk index)`` alone, so chunks can run in any process, in
any order, and the output is the same for a seed. Output is plain tuples and JSON bytes:
cheap to send back from a worker process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from rapport.demo import mess
from rapport.demo.people import Person, Pools, device_id, make_person
from rapport.demo.products import (
    FRIDGES,
    HOTELS,
    LUXURY_HOTELS,
    OTHER_PRODUCTS,
    PREMIUM_FRIDGES,
    SEARCH_TERMS,
    Hotel,
    Product,
)

TRACKING_DAYS = 90
ORDER_DAYS = 180
TICKET_TOPICS = ["送货延迟", "预约安装", "退款申请", "报修", "开具发票", "酒店订单变更", "会员积分"]
PAYMENT_FAILURES = ["insufficient_funds", "card_declined", "risk_control", "timeout"]
GENDER_TEXT = {"male": ["男", "男", "男", "M", "1"], "female": ["女", "女", "女", "F", "0"]}

MEMBER_COLUMNS = [
    "member_id", "name", "gender", "birthday", "mobile", "email", "id_card", "city",
    "member_level", "registered_at", "updated_at",
]  # fmt: skip
TICKET_COLUMNS = ["ticket_id", "email", "phone", "topic", "channel", "created_at"]
TRACKING_SOURCES = ("app", "web", "server")
#: chance that a web visit from a browser not yet signed in signs in (then the SDK remembers)
WEB_SIGN_IN = 0.75


@dataclass
class Chunk:
    """One chunk's records for every system, and who each record really is."""

    members: list[tuple[Any, ...]] = field(default_factory=list)
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    tickets: list[tuple[Any, ...]] = field(default_factory=list)
    events: dict[str, list[bytes]] = field(
        default_factory=lambda: {s: [] for s in TRACKING_SOURCES}
    )
    #: the ground truth as three columns: source, record key, true person
    truth: tuple[list[str], list[str], list[int]] = field(default_factory=lambda: ([], [], []))
    persons: int = 0
    #: filled by ``pack``: each source's events as one JSON Lines blob (cheap to pickle)
    jsonl: dict[str, bytes] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)

    def record(self, source: str, key: str, pid: int) -> None:
        self.truth[0].append(source)
        self.truth[1].append(key)
        self.truth[2].append(pid)

    def pack(self) -> Chunk:
        for source, lines in self.events.items():
            self.jsonl[source] = b"".join(line + b"\n" for line in lines)
            self.event_counts[source] = len(lines)
        self.events = {}
        return self


@lru_cache(maxsize=4096)
def _day(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")


def _iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds; by hand because this runs for every event."""
    ms = int(ts * 1000)
    day, ms = divmod(ms, 86_400_000)
    sec, ms = divmod(ms, 1000)
    return f"{_day(day)}{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}.{ms:03d}Z"


def _sql_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


class _Tracker:
    """One person's Segment messages, as the app/web SDKs and the payment server send them."""

    def __init__(self, rng: random.Random, person: Person, chunk: Chunk) -> None:
        self.rng, self.p, self.chunk = rng, person, chunk
        self.emitted = 0
        #: the user id each device's SDK remembers after a login (Segment SDKs persist it)
        self.signed_in: dict[str, str] = {}

    def _message_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def send(self, source: str, message: dict[str, Any]) -> None:
        message["messageId"] = mid = self._message_id()
        self.chunk.events[source].append(orjson.dumps(message))
        self.chunk.record(source, mid, self.p.pid)
        self.emitted += 1

    def session(self, t: float, platform: str, device: str, plan: list[tuple]) -> None:
        """Send the steps of one visit, a few seconds to minutes apart, starting at ``t``.

        Anonymous until a ``login`` step; every later message carries that user id.
        """
        rng, user_id = self.rng, self.signed_in.get(device)
        if platform == "app":
            os_name = "android" if device[0] < "8" else "ios"
            context: dict[str, Any] = {
                "device": {"id": device, "type": os_name},
                "app": {"name": "Rapport Mall", "version": "5.2.1"},
                "library": {"name": f"analytics-{os_name}", "version": "4.11.3"},
            }
        else:
            context = {
                "page": {"url": "https://mall.example.cn/"},
                "library": {"name": "analytics.js", "version": "4.1.0"},
            }
        for kind, event, props, extra in plan:
            t += rng.uniform(5, 90)
            if kind == "login":
                user_id = self.signed_in[device] = event
                continue
            message: dict[str, Any] = {"type": kind, "anonymousId": device, "timestamp": _iso(t)}
            if user_id:
                message["userId"] = user_id
            if kind == "track":
                message["event"] = event
                message["properties"] = props
                t += props.get("duration_s", 0)
            else:
                message["traits"] = props
            message["context"] = context
            self.send(platform, message)
            if extra:  # a server-side event about the same moment (payment failed)
                failed = {
                    "type": "track",
                    "event": "payment_failed",
                    "userId": user_id or extra["customer_id"],
                    "timestamp": _iso(t - 2),
                    "properties": extra["properties"],
                }
                self.send("server", failed)


def _view(rng: random.Random, product: Product, keen: bool, platform: str) -> tuple:
    duration = rng.randint(60, 400) if keen else rng.randint(3, 75)
    props = {
        "item_id": product.item_id,
        "category": product.category,
        "price": product.price,
        "duration_s": duration,
        "scene": rng.choice(["home", "search", "recommend", "campaign", "category_page"]),
        "channel": platform,
    }
    if rng.random() < 0.005:  # an old app build sends the price as text: a plan violation
        props["price"] = f"{product.price:.0f}"
    return ("track", "view_product", props, None)


def _cart(product: Product, platform: str) -> tuple:
    props = {"item_id": product.item_id, "category": product.category, "price": product.price}
    return ("track", "add_to_cart", {**props, "quantity": 1, "channel": platform}, None)


class PersonRecords:
    """Everything the company's systems record about one person."""

    def __init__(self, rng: random.Random, p: Person, chunk: Chunk, end: float) -> None:
        self.rng, self.p, self.chunk, self.end = rng, p, chunk, end
        self.tracker = _Tracker(rng, p, chunk)

    def member_rows(self) -> None:
        rng, p = self.rng, self.p
        if p.registered_at is None:
            return
        for k, member_id in enumerate(p.member_ids):
            registered = p.registered_at.timestamp() + k * rng.uniform(86400, 400 * 86400)
            registered = min(registered, self.end - 3600)
            updated = registered + rng.uniform(0, self.end - registered)
            row = (
                member_id,
                p.name if rng.random() > 0.02 else None,
                rng.choice(GENDER_TEXT[p.gender]) if rng.random() > 0.05 else None,
                mess.birthday_text(rng, p.birthday)
                if rng.random() > mess.RATE_MISSING_BIRTHDAY
                else None,
                mess.recorded_mobile(rng, p.mobile, p.uses_test_phone),
                mess.messy_email(rng, p.email) if rng.random() > mess.RATE_MISSING_EMAIL else None,
                mess.recorded_id_card(rng, p.id_card) if rng.random() > 0.3 else None,
                p.city if rng.random() > mess.RATE_MISSING_CITY else None,
                p.member_level if k == 0 else "regular",
                _sql_time(registered),
                _sql_time(updated),
            )
            self.chunk.members.append(row)
            self.chunk.record("member_db", member_id, p.pid)

    def _user_id(self) -> str | None:
        ids = self.p.member_ids
        if not ids:
            return None
        return ids[-1] if len(ids) > 1 and self.rng.random() < 0.4 else ids[0]

    def _login(self, platform: str) -> list[tuple]:
        """Log in, then the SDK's identify call linking the device to the member and mobile."""
        user_id = self._user_id()
        traits: dict[str, Any] = {"mobile": mess.mobile_variant(self.rng, self.p.mobile)}
        if user_id is None:  # no member account: sign-in with the phone number (SMS code)
            sign_in = {"method": "mobile", "channel": platform}
            return [("login", "", {}, None), ("track", "login", sign_in, None)] + [
                ("identify", None, traits, None)
            ]
        if self.rng.random() < 0.5:
            traits["email"] = self.p.email
        method = self.rng.choice(["mobile", "mobile", "email", "wechat", "alipay"])
        return [
            ("login", user_id, {}, None),
            ("track", "login", {"method": method, "channel": platform}, None),
            ("identify", None, traits, None),
        ]

    def _device(self, platform: str) -> str:
        p = self.p
        if platform == "app":
            if p.household_device and self.rng.random() < 0.3:
                return p.household_device
            return self.rng.choice(p.app_devices)
        return self.rng.choice(p.web_cookies)

    def _platform(self, preferred: str) -> str | None:
        p = self.p
        if preferred == "app" and p.app_devices:
            return "app"
        if preferred == "web" and p.web_cookies:
            return "web"
        return "app" if p.app_devices else ("web" if p.web_cookies else None)

    def _when(self, days: int) -> float:
        """A moment in the last ``days`` days, mostly in the evening (China time)."""
        day = self.end - 86400 * (1 + self.rng.randrange(days))
        hour = self.rng.choice([1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 12, 13, 13, 14, 14, 15])
        return day + hour * 3600 + self.rng.uniform(0, 3600)

    def orders_and_sessions(self) -> None:
        rng, p = self.rng, self.p
        window = self.end - TRACKING_DAYS * 86400
        purchases: list[tuple[float, Product | Hotel, int]] = []
        for _ in range(p.n_orders):
            if p.fridge_shopper and rng.random() < 0.4:
                item: Product | Hotel = rng.choice(FRIDGES)
            else:
                item = rng.choice(OTHER_PRODUCTS)
            purchases.append((self._when(ORDER_DAYS), item, 1))
        for _ in range(p.n_hotel_stays):
            hotel = rng.choice(LUXURY_HOTELS if p.big_spender else HOTELS)
            days = 30 if p.big_spender else ORDER_DAYS
            purchases.append((self._when(days), hotel, rng.choice([1, 1, 2, 3])))
        purchases.sort(key=lambda x: x[0])
        if purchases and not p.customer_ids:
            p.customer_ids = [f"C9{p.pid:08d}"]  # hotel-only customers get an order-system id
        for n, (paid, item, nights) in enumerate(purchases):
            order_id = f"O{p.pid:09d}{n:03d}"
            customer_id = p.customer_ids[-1 if n == len(purchases) - 1 else 0]
            amount = round(item.price * nights, 2)
            mobile = (
                mess.recorded_mobile(rng, p.mobile, p.uses_test_phone)
                if rng.random() > 0.05
                else None
            )
            if isinstance(item, Hotel):
                model, category = item.name, "hotel"
            else:
                model, category = item.model, item.category
            when = datetime.fromtimestamp(paid, UTC)
            row = (order_id, customer_id, mobile, model, category, amount, when, item.item_id)
            self.chunk.orders.append(row)
            self.chunk.record("orders", order_id, p.pid)
            preferred = "app" if rng.random() < 0.6 else ("web" if rng.random() < 0.6 else "store")
            if p.big_spender and isinstance(item, Hotel):
                preferred = "app"  # frequent travellers book in the app (the seeds' tag)
            platform = self._platform(preferred) if preferred != "store" else None
            if paid >= window and platform:
                self._purchase_session(paid, platform, item, nights, order_id, customer_id, amount)
        self._browse_sessions(window)

    def _purchase_session(
        self,
        paid: float,
        platform: str,
        item: Product | Hotel,
        nights: int,
        order_id: str,
        customer_id: str,
        amount: float,
    ) -> None:
        rng = self.rng
        plan: list[tuple] = self._login(platform)
        if isinstance(item, Hotel):
            check_in = _iso(paid + 86400 * rng.randint(1, 30))
            booking = {"item_id": item.item_id, "price": item.price, "nights": nights}
            booking |= {"check_in": check_in, "city": item.city, "channel": platform}
            found = rng.randint(5, 60)
            search = {"query": f"{item.city}酒店", "result_count": found, "channel": platform}
            plan.append(("track", "search", search, None))
            plan.append(("track", "book_hotel", booking, None))
        else:
            plan.append(_view(rng, item, True, platform))
            plan.append(_cart(item, platform))
            extra = None
            if rng.random() < 0.08:
                reason = rng.choice(PAYMENT_FAILURES)
                failed = {"order_id": order_id, "amount": amount, "reason": reason}
                failed["channel"] = "server"
                extra = {"customer_id": customer_id, "properties": failed}
            paid_props = {"order_id": order_id, "amount": amount, "item_count": 1}
            paid_props["item_id"] = item.item_id
            paid_props["channel"] = platform
            plan.append(("track", "order_paid", paid_props, extra))
        if not self.p.member_ids:  # guest checkout: the SDK identifies the device by mobile
            traits = {"mobile": mess.mobile_variant(rng, self.p.mobile)}
            plan.append(("identify", None, traits, None))
        device = self._device(platform)
        self.tracker.session(paid - rng.uniform(120, 900), platform, device, plan)

    def _browse_sessions(self, window: float) -> None:
        rng, p = self.rng, self.p
        registered = p.registered_at.timestamp() if p.registered_at else 0.0
        first = True
        while self.tracker.emitted < p.n_events:
            platform = self._platform("app" if rng.random() < 0.6 else "web")
            if platform is None:
                return
            plan: list[tuple] = []
            t = self._when(TRACKING_DAYS)
            device = self._device(platform)
            if first and registered >= window:  # joined during the window: the sign-up visit
                t, user_id = registered, p.member_ids[0]
                traits = {"mobile": mess.mobile_variant(rng, p.mobile), "email": p.email}
                plan += [
                    ("login", user_id, {}, None),
                    ("track", "register", {"method": "mobile", "channel": platform}, None),
                    ("identify", None, traits, None),
                ]
            elif device not in self.tracker.signed_in and (
                platform == "app" or rng.random() < WEB_SIGN_IN
            ):  # people sign in on a new phone at first launch; on the web, most visits
                plan += self._login(platform)
            first = False
            if rng.random() < 0.4:
                query = {"query": rng.choice(SEARCH_TERMS), "result_count": rng.randint(0, 80)}
                plan.append(("track", "search", {**query, "channel": platform}, None))
            for _ in range(rng.randint(1, 8)):
                if p.fridge_shopper and rng.random() < 0.6:
                    keen = rng.random() < 0.5
                    product = rng.choice(PREMIUM_FRIDGES if keen else FRIDGES)
                else:
                    keen, product = False, rng.choice(OTHER_PRODUCTS)
                plan.append(_view(rng, product, keen, platform))
                if rng.random() < 0.12:
                    plan.append(_cart(product, platform))
            self.tracker.session(t, platform, device, plan)

    def tickets(self) -> None:
        rng, p = self.rng, self.p
        for n in range(p.n_tickets):
            ticket_id = f"T{p.pid:09d}{n:02d}"
            by_phone = rng.random() < 0.55
            phone = mess.recorded_mobile(rng, p.mobile, p.uses_test_phone) if by_phone else ""
            email = "" if by_phone and rng.random() < 0.8 else mess.messy_email(rng, p.email)
            created = _sql_time(self._when(ORDER_DAYS))
            channel = "hotline" if by_phone else rng.choice(["online_chat", "email"])
            row = (ticket_id, email, phone, rng.choice(TICKET_TOPICS), channel, created)
            self.chunk.tickets.append(row)
            self.chunk.record("customer_service", ticket_id, p.pid)


def generate_chunk(
    seed: int, index: int, first_pid: int, count: int, end: datetime, pools: Pools
) -> Chunk:
    """Records of persons ``first_pid .. first_pid + count - 1``; depends only on the args."""
    rng = random.Random(f"rapport-demo:{seed}:{index}")
    people = [make_person(rng, first_pid + i, pools, end) for i in range(count)]
    for a, b in zip(people[::2], people[1::2], strict=False):
        if a.app_devices and b.app_devices and rng.random() < 0.06:
            a.household_device = b.household_device = device_id(rng)
    chunk = Chunk(persons=count)
    end_ts = end.timestamp()
    for p in people:
        records = PersonRecords(rng, p, chunk, end_ts)
        records.member_rows()
        records.orders_and_sessions()
        records.tickets()
    return chunk.pack()


def window_end(as_of: datetime | None = None) -> datetime:
    """The end of the generated window: midnight UTC of ``as_of`` (today by default)."""
    day = (as_of or datetime.now(UTC)).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
