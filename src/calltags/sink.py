"""The postback log's Postgres side: entries and call snapshots move from the Redis
streams into Postgres in batches.

A worker process runs one `Sink`: a task per stream (the postback log shards and the
call log shards), each reading through the consumer group SINK_GROUP (streams.py), so
any number of worker processes share the shards and each shard is flushed in parallel
with the others. A batch's rows (rows.py) are committed (writer.py), and only then is
the batch acknowledged and deleted in Redis: a batch delivered twice adds no row.
Entries a dead worker read and never acknowledged are taken over once idle for
`claim_idle_ms`, and go the careful way into Postgres. While Postgres or Redis cannot
be reached the batch is retried with back-off, and stays in Redis until it is
committed. With an `outbox`, a batch's webhook deliveries are committed with its rows,
and their senders told after the commit (outbox.py). The log's day partitions are kept
by `maintain` (partitions.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date

import asyncpg
from redis.backoff import EqualJitterBackoff

from calltags.db import POSTGRES_ERRORS
from calltags.erasure import Redactor
from calltags.keys import KeySpace
from calltags.outbox import Outbox
from calltags.partitions import Partitions, utc_today
from calltags.rows import Row, log_rows, snapshot_rows
from calltags.store import REDIS_ERRORS, RedisClient
from calltags.streams import Entry, StreamReader, consumer_name
from calltags.writer import BadData, RowWriter

log = logging.getLogger("calltags.sink")

BLOCK_MS = 1000  # a read waits this long for new entries; also the longest stop delay, ms
BACKOFF_FIRST = 0.1  # s before the first retry; doubles up to `max_backoff`
# Failures in a row past which the wait stops doubling: redis-py's back-off computes
# base * 2**failures, which overflows a float after about a thousand (a long outage).
_MOST_DOUBLINGS = 32


# What a store that cannot be reached raises: a wait, not a bug.
_OUTAGES = (*REDIS_ERRORS, *POSTGRES_ERRORS)


class _Stopped(Exception):
    """The sink was asked to stop while a batch waited: it stays pending in Redis."""


@dataclass
class Counters:
    batches: int = 0
    rows: int = 0
    calls: int = 0
    claimed: int = 0
    retries: int = 0


class Sink:
    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        keys: KeySpace,
        *,
        batch: int = 1000,
        claim_idle_ms: int = 60_000,
        max_backoff: float = 5.0,
        consumer: str | None = None,
        erasure_salt: str | None = None,
        outbox: Outbox | None = None,
    ):
        self.redis = redis
        self.outbox = outbox
        self.pool = pool
        self.keys = keys
        self.max_backoff = max_backoff
        # Each wait a random time between half and all of its doubled step.
        self._backoff = EqualJitterBackoff(cap=max_backoff, base=BACKOFF_FIRST)
        self.consumer = consumer or consumer_name()
        self.counters = Counters()
        self.streams = keys.log_shards_all() + keys.call_log_shards_all()
        self.reader = StreamReader(
            redis, self.streams, self.consumer, batch=batch, claim_idle_ms=claim_idle_ms
        )
        self.partitions = Partitions()
        self.writer = RowWriter(pool, self.partitions, Redactor(erasure_salt))
        self._postback_streams = frozenset(keys.log_shards_all())

    # -- the worker loop ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every stream until `stop` is set; a batch in hand is finished first."""
        await asyncio.gather(*(self._run_stream(stream, stop) for stream in self.streams))

    async def _run_stream(self, stream: str, stop: asyncio.Event) -> None:
        failures = 0  # in a row
        while not stop.is_set():
            try:
                await self.flush_once(stream, block_ms=BLOCK_MS, stop=stop)
                if failures:
                    log.info("flushing %s again after %d failed tries", stream, failures)
                failures = 0
                continue
            except _Stopped:
                return
            except _OUTAGES as exc:  # a store is down: said once, not at every retry
                if failures == 0:
                    log.warning("flushing %s: %s: %s; retrying", stream, type(exc).__name__, exc)
            except Exception:  # a worker must outlive any failure: log it, wait, go on
                log.exception("flushing %s failed, retrying", stream)
            self.counters.retries += 1
            await _sleep_unless(stop, self._delay(failures))
            failures += 1

    async def flush_once(
        self, stream: str, *, block_ms: int | None = None, stop: asyncio.Event | None = None
    ) -> int:
        """Move one batch of `stream` into Postgres; how many entries it held (0: none
        waiting). Entries idle in a dead consumer come first, then this consumer's own
        unacknowledged ones after a Redis failure (a failover), then new ones."""
        batch = await self.reader.claim(stream)
        self.counters.claimed += len(batch)
        if not batch:
            batch = await self.reader.read_again(stream)
        fresh = not batch
        if fresh:
            batch = await self.reader.read(stream, block_ms)
        if not batch:
            return 0
        await self._store(stream, batch, stop, fresh=fresh)
        return len(batch)

    async def drain(self) -> int:
        """Flush every stream until none has anything new; how many entries moved.

        For tests and benchmarks: entries pending in another consumer are left to it
        (or to a claim once they are idle).
        """

        async def one(stream: str) -> int:
            moved = 0
            while done := await self.flush_once(stream):
                moved += done
            return moved

        return sum(await asyncio.gather(*(one(s) for s in self.streams)))

    def _rows(
        self, stream: str, batch: list[Entry], *, checked: bool = False
    ) -> tuple[list[Row], list[Row], list[Row]]:
        """(postbacks rows, calls rows, amended postbacks rows) of a batch of either kind
        of stream (see rows.log_rows for `checked`)."""
        if stream in self._postback_streams:
            return log_rows(stream, batch, checked=checked)
        return [], snapshot_rows(stream, batch), []

    async def _store(
        self,
        stream: str,
        batch: list[Entry],
        stop: asyncio.Event | None,
        *,
        fresh: bool,
    ) -> None:
        """Commit the batch's rows, then acknowledge it: retried until both are done.

        `fresh`: the batch was never delivered before, so its rows are most likely not
        in Postgres yet (a taken-over batch may be).
        """
        rows = self._rows(stream, batch)
        deliveries: list[Row] | None = None
        made: list[str] = []
        failures = 0
        committed = False
        while True:
            try:
                if not committed:
                    if deliveries is None:
                        deliveries = await self._deliveries(stream, batch)
                    try:
                        made = await self.writer.commit(*rows, fresh=fresh, outbox=deliveries)
                    except BadData as exc:
                        log.warning("rows of %s refused (%s), checking each", stream, exc)
                        rows = self._rows(stream, batch, checked=True)
                        made = await self.writer.commit(*rows, fresh=fresh, outbox=deliveries)
                    committed = True
                    if self.outbox is not None:
                        await self.outbox.committed(made)
                await self.reader.acknowledge(stream, [entry_id for entry_id, _ in batch])
                break
            except Exception as exc:  # Postgres or Redis down: the batch waits, never dropped
                self.counters.retries += 1
                delay = self._delay(failures)
                failures += 1
                log.warning(
                    "%s of %d entries of %s failed (%s: %s), retrying in %.1f s",
                    "acknowledging" if committed else "committing",
                    len(batch),
                    stream,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if stop is None:
                    await asyncio.sleep(delay)
                elif await _sleep_unless(stop, delay):
                    raise _Stopped from exc
        postbacks, calls, amended = rows
        self.counters.batches += 1
        self.counters.rows += len(postbacks) + len(amended)
        self.counters.calls += len(calls)

    async def _deliveries(self, stream: str, batch: list[Entry]) -> list[Row]:
        """The webhook deliveries the batch makes (none without an outbox)."""
        if self.outbox is None:
            return []
        return await self.outbox.plan(batch, postbacks=stream in self._postback_streams)

    def _delay(self, failures: int) -> float:
        """Seconds before the next try, with `failures` failures in a row before this one:
        BACKOFF_FIRST doubled that often, at most `max_backoff`, with jitter."""
        delay: float = self._backoff.compute(min(failures, _MOST_DOUBLINGS))
        return delay

    # -- maintenance (the workers' cron job) ---------------------------------------------

    async def maintain(self, retention_days: int, today: date | None = None) -> dict[str, int]:
        """Create the log's day partitions ahead, drop those past retention, and remove
        consumers that are long gone; what was done."""
        today = utc_today() if today is None else today
        created, dropped = await self.partitions.maintain(self.pool, retention_days, today)
        removed = await self.reader.prune_consumers()
        return {"created": created, "dropped": dropped, "consumers_removed": removed}


async def _sleep_unless(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` s or until `stop` is set; True if it was set."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return False
    return True
