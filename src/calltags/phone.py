"""Caller numbers: any common format in, E.164 out."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

from calltags import errors

MAX_RAW_LENGTH = 64  # longer input is never a phone number; refuse before parsing
# Punctuation phonenumbers ignores: dropped before the cache lookup, so that the many ways
# of writing one number share one cache entry.
_PUNCTUATION = str.maketrans("", "", " ()-./\t")


@lru_cache(maxsize=262_144)  # about 75 MB when full (~285 bytes an entry)
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
    e164 = None
    if 0 < len(value) <= MAX_RAW_LENGTH:
        value = value.translate(_PUNCTUATION).removeprefix("tel:")
        e164 = _normalize(value, region) if value else None
    if e164 is None:
        raise errors.invalid_caller_number(raw)
    return e164
