"""The mess real companies have: how each system garbles what it records about a person.

Rates are module constants so that the docs and the tests can quote them.
"""

from __future__ import annotations

import random
from datetime import date

#: the shared test number clerks type when a customer won't give theirs
TEST_PHONE = "13800138000"
RATE_INVALID_MOBILE = 0.01
RATE_MISSING_EMAIL = 0.12
RATE_MISSING_BIRTHDAY = 0.06
RATE_MISSING_CITY = 0.04
RATE_MESSY_EMAIL = 0.15
RATE_INVALID_ID_CARD = 0.03


def mobile_variant(rng: random.Random, mobile: str) -> str:
    """The same number as different systems type it."""
    if mobile.startswith("+"):
        return rng.choice([mobile, f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}"])
    form = rng.randrange(6)
    if form == 0:
        return mobile
    if form == 1:
        return f"{mobile[:3]} {mobile[3:7]} {mobile[7:]}"
    if form == 2:
        return f"+86-{mobile}"
    if form == 3:
        return f"86{mobile}"
    if form == 4:
        return f"+86 {mobile[:3]}-{mobile[3:7]}-{mobile[7:]}"
    return f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}"


def invalid_mobile(rng: random.Random, mobile: str) -> str:
    """A number no phone can have: a digit short, an unallocated 12x prefix, a letter O."""
    digits = mobile.lstrip("+")[-11:]
    form = rng.randrange(3)
    if form == 0:
        return digits[:-1]
    if form == 1:
        return "12" + digits[2:]
    return digits[:-2] + "OO"


def recorded_mobile(rng: random.Random, mobile: str, test_phone: bool) -> str:
    """What a clerk or a form stored: usually the number, sometimes the test number or junk."""
    if test_phone:
        return TEST_PHONE
    if rng.random() < RATE_INVALID_MOBILE:
        return invalid_mobile(rng, mobile)
    return mobile_variant(rng, mobile)


def messy_email(rng: random.Random, email: str) -> str:
    """Upper-case, padded with spaces, or a capitalised domain, as hand-typed forms keep them."""
    if rng.random() >= RATE_MESSY_EMAIL:
        return email
    form = rng.randrange(3)
    if form == 0:
        return f" {email.upper()} "
    if form == 1:
        local, domain = email.split("@")
        return f"{local.capitalize()}@{domain.capitalize()}"
    return f"{email}  "


def birthday_text(rng: random.Random, birthday: date) -> str:
    """Birthdays in the formats a ten-year-old member DB accumulates."""
    form = rng.randrange(6)
    if form <= 1:
        return birthday.isoformat()
    if form == 2:
        return f"{birthday.year}/{birthday.month}/{birthday.day}"
    if form == 3:
        return f"{birthday:%Y%m%d}"
    if form == 4:
        return f"{birthday:%d/%m/%Y}"
    return f"{birthday.year}年{birthday.month}月{birthday.day}日"


def recorded_id_card(rng: random.Random, id_card: str) -> str:
    """Mostly right; sometimes a wrong check character or a lower-case x."""
    if rng.random() < RATE_INVALID_ID_CARD:
        wrong = "0123456789X".replace(id_card[-1], "")
        return id_card[:-1] + rng.choice(wrong)
    return id_card.lower() if id_card.endswith("X") and rng.random() < 0.5 else id_card
