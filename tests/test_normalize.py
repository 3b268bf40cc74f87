"""Identifier normalisation at the door: what a user sees in the warehouse and the quarantine."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from rapport.ingest import normalize
from rapport.ingest.normalize import InvalidValue


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "138 0013 8000",
        "+86-13800138000",
        "8613800138000",
        "0086 138-0013-8000",
        "(138) 0013 8000",
        "138\u30000013\u30008000",
    ],
)
def test_chinese_mobiles_in_every_format_become_one_e164(raw):
    assert normalize.normalize_identifier("mobile", raw) == "+8613800138000"


def test_international_numbers_keep_their_country():
    assert normalize.normalize_mobile("+44 20 7946 0958") == "+442079460958"
    assert normalize.normalize_mobile("001 650 253 0000") == "+16502530000"


@pytest.mark.parametrize("raw", ["12345", "abc", "+86 999", "10000000000"])
def test_invalid_mobiles_are_refused_with_a_reason(raw):
    with pytest.raises(InvalidValue) as exc:
        normalize.normalize_mobile(raw)
    assert exc.value.reason == "invalid_mobile"
    assert raw in str(exc.value)


def _samples() -> list[str]:
    rng = random.Random(7)
    prefixes = ["", "86", "+86"]
    return [
        rng.choice(prefixes) + "1" + "".join(rng.choices("0123456789", k=10)) for _ in range(3000)
    ]


def test_fast_path_agrees_with_phonenumbers():
    """The regular expression run inside DuckDB accepts only what phonenumbers calls valid."""
    for raw in _samples():
        try:
            parsed = phonenumbers.parse("+" + raw if raw.startswith("86") else raw, "CN")
        except phonenumbers.NumberParseException:
            parsed = None
        expected = (
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            if parsed is not None and phonenumbers.is_valid_number(parsed)
            else None
        )
        fast = normalize._CN_MOBILE_FAST_RE.match(raw)
        if fast:
            assert expected == "+86" + fast.group(1), raw
        try:
            assert normalize.normalize_mobile(raw) == expected, raw
        except InvalidValue:
            assert expected is None, raw


def test_emails_are_lower_cased_and_checked_without_dns():
    assert normalize.normalize_identifier("email", "  Alice@Example.COM ") == "alice@example.com"
    for bad in ("alice", "alice@", "a b@example.com", "alice@example"):
        with pytest.raises(InvalidValue) as exc:
            normalize.normalize_email(bad)
        assert exc.value.reason == "invalid_email"


def test_id_cards_check_birth_date_and_checksum():
    assert normalize.normalize_id_card("11010519491231002x") == "11010519491231002X"
    assert normalize.id_card_check_digit("11010519491231002") == "X"
    for bad, why in [
        ("110105194912310021", "checksum"),
        ("1101051949123100", "17 digits"),
        ("110105194913310029", "birth date"),
    ]:
        with pytest.raises(InvalidValue, match=why) as exc:
            normalize.normalize_id_card(bad)
        assert exc.value.reason == "invalid_id_card"


def test_other_identifiers_and_strings_are_trimmed_and_blank_is_missing():
    assert normalize.normalize_identifier("member_id", " 00123 ") == "00123"
    assert normalize.normalize_identifier("wechat_openid", "   ") is None
    assert normalize.clean_string(None) is None
