"""Caller numbers: any common format in, E.164 out."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from calltags import errors

MAX_RAW_LENGTH = 64  # longer input is never a phone number; refuse before parsing


@lru_cache(maxsize=65_536)
def _normalize(raw: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize(raw: str, region: str) -> str:
    """The E.164 form of `raw`, or ApiError 422 `invalid_caller_number` echoing the input."""
    value = raw.strip()
    e164 = _normalize(value, region) if 0 < len(value) <= MAX_RAW_LENGTH else None
    if e164 is None:
        raise errors.invalid_caller_number(raw)
    return e164
