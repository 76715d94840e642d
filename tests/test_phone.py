from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calltags import phone
from calltags.errors import ApiError

SAME_CALLER = [
    "(555) 123-4567",
    "555-123-4567",
    "15551234567",
    "+1 555 123 4567",
    "tel:+15551234567",
    "tel:+1-555-123-4567",
    "555.123.4567",
    " 5551234567 ",
]


@pytest.mark.parametrize("raw", SAME_CALLER)
def test_formats_name_the_same_caller(raw: str) -> None:
    assert phone.normalize(raw, "US") == "+15551234567"


def test_international_numbers_keep_their_country() -> None:
    assert phone.normalize("+44 20 7946 0958", "US") == "+442079460958"
    assert phone.normalize("020 7946 0958", "GB") == "+442079460958"


@pytest.mark.parametrize("raw", ["", "abc", "123", "+1", "555-0000-000000000000000", "x" * 500])
def test_impossible_numbers_are_422_echoing_the_input(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        phone.normalize(raw, "US")
    assert caught.value.status == 422
    assert caught.value.code == "invalid_caller_number"
    assert repr(raw)[:40] in caught.value.message


@given(
    st.text(alphabet="0123456789+() -.", min_size=1, max_size=20),
    st.sampled_from(["US", "GB", "DE", "IT", "BR", "IN", "AU"]),
)
@settings(max_examples=500, deadline=None)
@example("000000", "DE")  # +4900000, which parses to +490000
@example("0070704999", "AU")  # +61070704999, which parses to +6170704999
def test_the_cache_answers_what_a_fresh_parse_does(raw: str, region: str) -> None:
    """The cache files a result under its E.164 text too only where that text parses to
    itself: a hit never differs from what another process, without it, would parse."""
    cache = phone._Cache(100)
    e164 = cache.normalize(raw, region)
    assert e164 == phone.parse(raw, region)
    if e164 is None:
        return
    assert cache.normalize(e164, region) == phone.parse(e164, region)
    if phone._parse(raw, region)[1]:  # said to be stable: in every region
        for other in ("US", "GB", "IT", region):
            assert phone.parse(e164, other) == e164


def test_the_cache_keeps_the_most_recently_used_numbers() -> None:
    cache = phone._Cache(4)
    assert cache.normalize("2125550101", "US") == "+12125550101"
    assert cache.normalize("2125550102", "US") == "+12125550102"
    # Each parse filed two entries: the input's and the E.164 text's, so E.164 input of
    # a caller seen in another format is a hit.
    assert list(cache.found) == [
        ("2125550101", "US"), ("+12125550101", "US"), ("2125550102", "US"), ("+12125550102", "US"),
    ]  # fmt: skip
    assert cache.normalize("2125550101", "US") == "+12125550101"  # a hit: now the newest
    assert cache.normalize("bogus", "US") is None  # a miss is kept too: the oldest goes
    assert list(cache.found) == [
        ("2125550102", "US"), ("+12125550102", "US"), ("2125550101", "US"), ("bogus", "US"),
    ]  # fmt: skip


_DIGITS = st.text(alphabet="0123456789", min_size=9, max_size=11)
_NANP_LIKE = st.builds(
    lambda prefix, digits: prefix + digits,
    st.sampled_from(["", "1", "+1", "+", "11", "+11", "01"]),
    _DIGITS | st.text(alphabet="0123456789٢²", min_size=10, max_size=10),
)


@settings(max_examples=3000, deadline=None)
@given(_NANP_LIKE, st.sampled_from(["US", "CA", "BS", "PR", "GB", "DE", "MX"]))
@example("2125550123", "US")
@example("12125550123", "US")
@example("+12125550123", "GB")
@example("2125550123", "CA")
@example("1125550123", "US")
def test_the_north_american_shortcut_gives_what_phonenumbers_gives(raw: str, region: str) -> None:
    """phone._plain_nanp answers only what phonenumbers answers alike."""
    plain = phone._plain_nanp(raw, region)
    if plain is not None:
        assert phone._parsed(raw, region) == (plain, True)
