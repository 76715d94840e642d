from __future__ import annotations

import pytest

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
