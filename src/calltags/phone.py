"""Caller numbers: any common format in, E.164 out."""

from __future__ import annotations

from collections import OrderedDict

import phonenumbers

from calltags import errors

MAX_RAW_LENGTH = 64  # longer input is never a phone number; refuse before parsing
CACHE_SIZE = 262_144  # entries; about 75 MB when full (~285 bytes an entry)
# Punctuation phonenumbers ignores: dropped before the cache lookup, so that the many ways
# of writing one number share one cache entry.
_PUNCTUATION = str.maketrans("", "", " ()-./\t")
_UNSEEN = ""  # no number's E.164 text: a cache lookup's "not there"


def parse(raw: str, region: str) -> str | None:
    """The E.164 form of `raw` as phonenumbers gives it, or None: no cache."""
    return _parse(raw, region)[0]


def _parse(raw: str, region: str) -> tuple[str | None, bool]:
    """(E.164 or None, whether the E.164 text surely parses to itself). It may not when
    the national number begins with 0 or 1: phonenumbers then takes those digits after
    the country code for a national prefix ("+49 0…", "+61 0…") and drops them. A search
    over every region found no other case."""
    plain = _plain_nanp(raw, region)
    if plain is not None:
        return plain, True
    return _parsed(raw, region)


def _plain_nanp(raw: str, region: str) -> str | None:
    """The E.164 form of a North American number written plainly, the bulk of what
    publishers post: +1NXXXXXXXXX (any region), 1NXXXXXXXXX or NXXXXXXXXX (region US), N
    a digit 2-9, the rest digits. phonenumbers gives these "+1" and the ten digits, but
    takes ~12 µs to; tests hold this shortcut to its answer. None: not such a number."""
    if len(raw) == 12 and raw[:2] == "+1":
        digits = raw[2:]
    elif region != "US":
        return None
    elif len(raw) == 11 and raw[0] == "1":
        digits = raw[1:]
    elif len(raw) == 10:
        digits = raw
    else:
        return None
    if digits.isascii() and digits.isdigit() and digits[0] in "23456789":
        return "+1" + digits
    return None


def _parsed(raw: str, region: str) -> tuple[str | None, bool]:
    """`_parse` by phonenumbers itself."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None, False
    if not phonenumbers.is_possible_number(number):
        return None, False
    national = phonenumbers.national_significant_number(number)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, national[:1] not in ("0", "1")


class _Cache:
    """Parsed numbers, least recently used dropped first. A parse also files its result
    under the E.164 text itself, when that parses to itself (see `_parse`), so that once
    a caller has been seen in any format, E.164 input of that caller, as routing sends
    at connect, is a hit: parsing costs ~20 µs, a hit well under 1 µs. A hit gives what
    a fresh parse would, so every process normalizes a number alike."""

    def __init__(self, size: int):
        self.size = size
        # An OrderedDict, not a dict: a dict's oldest entry, found by iterating from its
        # start, costs a walk over every entry deleted since it was last resized.
        self.found: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    def normalize(self, value: str, region: str) -> str | None:
        key = (value, region)
        found = self.found
        e164 = found.get(key, _UNSEEN)
        if e164 != _UNSEEN:
            found.move_to_end(key)  # to the young end
            return e164
        found_e164, stable = _parse(value, region)
        self._put(key, found_e164)
        if (
            found_e164 is not None
            and found_e164 != value
            and (stable or parse(found_e164, region) == found_e164)
        ):
            self._put((found_e164, region), found_e164)
        return found_e164

    def _put(self, key: tuple[str, str], e164: str | None) -> None:
        found = self.found
        if key in found:
            found.move_to_end(key)
        elif len(found) >= self.size:
            found.popitem(last=False)  # the least recently used
        found[key] = e164


_cache = _Cache(CACHE_SIZE)


def normalize(raw: str, region: str) -> str:
    """The E.164 form of `raw`, or ApiError 422 `invalid_caller_number` echoing the input."""
    value = raw.strip()
    e164 = None
    if 0 < len(value) <= MAX_RAW_LENGTH:
        value = value.translate(_PUNCTUATION).removeprefix("tel:")
        # A plain North American number costs less worked out than looked up in a cache
        # of a quarter million entries, and leaves the cache to the others.
        e164 = (_plain_nanp(value, region) or _cache.normalize(value, region)) if value else None
    if e164 is None:
        raise errors.invalid_caller_number(raw)
    return e164
