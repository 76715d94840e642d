"""Random (version 4) UUIDs as text, for log entries and calls: made from one buffer of
OS randomness refilled every 256 UUIDs, which costs a fraction of `str(uuid.uuid4())`
(one system call and one UUID object each) on the postback path."""

from __future__ import annotations

import os

_BATCH = 256
_VARIANT = "89ab89ab89ab89ab"  # the RFC 4122 variant: the first digit of group 4 is 8-b


class _Pool:
    def __init__(self) -> None:
        self.empty()

    def empty(self) -> None:
        self.hex = ""
        self.at = 0

    def take(self) -> str:
        if self.at >= len(self.hex):
            self.hex = os.urandom(16 * _BATCH).hex()
            self.at = 0
        h = self.hex[self.at : self.at + 32]
        self.at += 32
        return h


_pool = _Pool()
# A forked process must not hand out its parent's UUIDs again.
os.register_at_fork(after_in_child=_pool.empty)


def random_uuid() -> str:
    """A new version 4 UUID, e.g. '0b9f0e6c-2a5d-4c1e-9f3a-7d2b1c0e5a48'."""
    h = _pool.take()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16)]}{h[17:20]}-{h[20:]}"
