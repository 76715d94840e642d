"""Slowing key guessing: failed key attempts per client address."""

from __future__ import annotations

import time

from calltags.keycache import CACHE_MAX_ENTRIES


class GuessGuard:
    """An address with more than `per_minute` failed key attempts in a minute (counted
    in Redis, over every web process) is refused (429) until the minute ends, unless it
    presents a key this process knows to be good."""

    WINDOW_MS = 60_000

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._blocked: dict[str, float] = {}  # address -> monotonic time the block ends

    def blocked_for(self, address: str) -> float:
        """Seconds the address stays blocked; 0 if it is not."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    def record(self, address: str, attempts: int, window_left_ms: int) -> None:
        """Note the attempts counted for the address; block it once past the limit."""
        if self.per_minute and attempts > self.per_minute:
            if len(self._blocked) >= CACHE_MAX_ENTRIES:
                self._blocked.clear()
            self._blocked[address] = time.monotonic() + max(window_left_ms, 1) / 1000
