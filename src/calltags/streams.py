"""The log streams as a worker reads them: through the consumer group SINK_GROUP, so that
any number of worker processes share the shards.

New entries are read in slices; entries a dead worker read and never acknowledged are
taken over (XAUTOCLAIM) once idle for `claim_idle_ms`; a batch is acknowledged and
deleted together (ack-1.lua), once its rows are committed; consumers long gone are
removed from the group. After Redis failed a call (a failover among others), each
stream's own unacknowledged entries are read again first: the promoted replica may hold
as delivered to this consumer entries whose delivery never reached it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TypeAlias

from redis.exceptions import ResponseError

from calltags import scripts
from calltags.keys import SINK_GROUP
from calltags.store import REDIS_ERRORS, RedisClient

log = logging.getLogger("calltags.sink")

# Most entries one Redis command reads or acknowledges: Redis serves nobody else while
# it runs (a few µs an entry), so a big batch is read and acknowledged in slices.
REDIS_SLICE = 1000
CONSUMER_MAX_IDLE_MS = 86_400_000  # 1 day in ms: idle this long, nothing pending: removed

# A stream entry as redis-py returns it: (id, fields), fields None once deleted.
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes] | None]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class StreamReader:
    """One consumer (`consumer`, unique to a worker process) of SINK_GROUP on `streams`."""

    def __init__(
        self,
        redis: RedisClient,
        streams: list[str],
        consumer: str,
        *,
        batch: int,
        claim_idle_ms: int,
    ):
        self.redis = redis
        self.streams = streams
        self.consumer = consumer
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self._claim_cursor: dict[str, bytes] = {}
        self._claim_due: dict[str, float] = {}
        self._unsure: set[str] = set()  # streams whose pending entries to read again
        self._ack = scripts.register(redis, "ack-1.lua")

    @contextlib.contextmanager
    def _watching(self) -> Iterator[None]:
        """Remembers a Redis failure, for `read_again`. Any stream's: in a failover
        some connections break (a read blocked on the dead or demoted primary) while
        others only find the new primary when they next connect, without an error."""
        try:
            yield
        except REDIS_ERRORS:
            self._unsure.update(self.streams)
            raise

    async def ensure_groups(self, streams: Iterable[str] | None = None) -> None:
        for stream in self.streams if streams is None else streams:
            try:
                await self.redis.xgroup_create(stream, SINK_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, stream: str, block_ms: int | None) -> list[Entry]:
        """Up to `batch` new entries, read in slices; the first read waits up to
        `block_ms` for one to come."""
        with self._watching():
            entries = await self._read_slice(stream, min(self.batch, REDIS_SLICE), block_ms)
            last = len(entries)
            while last == REDIS_SLICE and len(entries) < self.batch:  # maybe more waiting
                more = await self._read_slice(stream, min(self.batch - len(entries), REDIS_SLICE))
                entries += more
                last = len(more)
        return entries

    async def read_again(self, stream: str) -> list[Entry]:
        """After Redis failed a call: entries of `stream` this consumer read and has not
        acknowledged, as Redis holds them now (after a failover, the promoted replica may
        hold as delivered what never reached this worker, and `>` never delivers an entry
        twice). Empty, and no command sent, once none is left. Entries deleted meanwhile
        (their rows committed) are only acknowledged."""
        while stream in self._unsure:
            with self._watching():
                entries = await self._read_slice(stream, min(self.batch, REDIS_SLICE), at="0")
                gone = [entry_id for entry_id, fields in entries if fields is None]
                if gone:
                    await self.redis.xack(stream, SINK_GROUP, *gone)
            if not entries:
                self._unsure.discard(stream)
            live: list[Entry] = [entry for entry in entries if entry[1] is not None]
            if live:
                return live
        return []

    async def _read_slice(
        self, stream: str, count: int, block_ms: int | None = None, at: str = ">"
    ) -> list[Entry]:
        for attempt in (1, 2):
            try:
                reply = await self.redis.xreadgroup(
                    SINK_GROUP, self.consumer, {stream: at}, count=count, block=block_ms
                )
                break
            except ResponseError as exc:  # no group yet (first run, or Redis lost it)
                if "NOGROUP" not in str(exc) or attempt == 2:
                    raise
                await self.ensure_groups([stream])
        if not reply:
            return []
        entries: list[Entry] = reply[0][1]
        return entries

    async def claim(self, stream: str) -> list[Entry]:
        """Entries read by a consumer that went quiet for claim_idle_ms (it died)."""
        now = time.monotonic()
        if now < self._claim_due.get(stream, 0.0):
            return []
        cursor = self._claim_cursor.get(stream, b"0-0")
        try:
            with self._watching():
                reply = await self.redis.xautoclaim(
                    stream,
                    SINK_GROUP,
                    self.consumer,
                    self.claim_idle_ms,
                    cursor,
                    count=min(self.batch, REDIS_SLICE),
                )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_groups([stream])
            return []
        next_cursor: bytes = reply[0]
        self._claim_cursor[stream] = next_cursor
        if next_cursor in (b"0-0", "0-0"):  # scanned every pending entry: look again later
            self._claim_due[stream] = now + self.claim_idle_ms / 2000
        claimed = [(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
        if claimed:
            log.warning("took over %d idle entries of %s", len(claimed), stream)
        return claimed

    async def acknowledge(self, stream: str, ids: list[bytes]) -> None:
        with self._watching():
            for first in range(0, len(ids), REDIS_SLICE):
                await self._ack(
                    keys=[stream], args=[SINK_GROUP, b" ".join(ids[first : first + REDIS_SLICE])]
                )

    async def prune_consumers(self) -> int:
        """Remove the other consumers idle for a day with nothing pending; how many."""
        removed = 0
        for stream in self.streams:
            try:
                consumers = await self.redis.xinfo_consumers(stream, SINK_GROUP)
            except ResponseError:  # no stream or group yet
                continue
            for consumer in consumers:
                name = consumer["name"]
                if name in (self.consumer, self.consumer.encode()):
                    continue
                if consumer["pending"] == 0 and consumer["idle"] >= CONSUMER_MAX_IDLE_MS:
                    await self.redis.xgroup_delconsumer(stream, SINK_GROUP, name)
                    removed += 1
        return removed
