"""Times: the clock in Unix milliseconds, and the one ISO 8601 format every answer uses
(UTC, milliseconds, "Z"), e.g. 2026-11-29T12:00:00.123Z."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC, e.g. 2026-11-29T12:00:00.123Z."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


def to_ms(value: datetime) -> int:
    """A time as epoch milliseconds (a naive time is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MILLISECOND


def iso(value: datetime | None) -> str | None:
    """A time in the same format as iso_ms (None stays None)."""
    return None if value is None else iso_ms(to_ms(value))
