"""The flush worker against real Redis and Postgres: redelivery adds no row, a worker
killed mid-batch loses and duplicates nothing, a Postgres outage only delays rows,
and the log's day partitions are made and dropped."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import orjson
from logtools import (
    PgProxy,
    count,
    entry,
    eventually,
    fill,
    forget_arq_jobs,
    keyspace,
    open_sink,
    own_prefix,
    stream_lengths,
)
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.keys import SINK_GROUP
from calltags.log import ENTRY_FIELD
from calltags.sink import utc_today

ROOT = Path(__file__).resolve().parent.parent
COUNT_BY_MARKER = "SELECT count(*) FROM postbacks WHERE user_agent = $1"


async def test_a_batch_delivered_twice_adds_no_row(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    mine = own_prefix(settings, "twice")
    marker = f"twice-{secrets.token_hex(4)}"
    await fill(redis, keyspace(mine), [entry(marker, n) for n in range(50)])
    async with (
        open_sink(mine, redis) as first,
        open_sink(mine, redis, claim_idle_ms=1) as second,
    ):
        # The first worker commits its batch and dies before acknowledging it...
        stream = first.keys.log_shard(0)
        await first.ensure_groups()
        batch = await first._read(stream, None)
        assert batch
        await first._commit(*first._rows(stream, batch))
        assert await count(database_url, COUNT_BY_MARKER, marker) == len(batch)
        # ...the second takes the batch over once it is idle, and writes it again.
        await asyncio.sleep(0.01)
        assert await second.drain() == 50
        assert second.counters.claimed == len(batch)
    assert await count(database_url, COUNT_BY_MARKER, marker) == 50
    assert await stream_lengths(redis, keyspace(mine)) == 0


async def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    settings: Settings, redis: Redis, database_url: str, redis_url: str, queue_url: str
) -> None:
    mine = own_prefix(settings, "kill")
    keys = keyspace(mine)
    marker = f"kill-{secrets.token_hex(4)}"
    total = 6000
    await fill(redis, keys, [entry(marker, n) for n in range(total)])
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CALLTAGS_QUEUE_URL": queue_url,
        "DATABASE_URL": database_url,
        "CALLTAGS_REDIS_PREFIX": mine.redis_prefix,
        "CALLTAGS_LOG_SHARDS": str(mine.log_shards),
        "CALLTAGS_FLUSH_BATCH": "100",
        "CALLTAGS_FLUSH_CLAIM_IDLE_SECONDS": "1",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        async def flushing() -> bool:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            return await count(database_url, COUNT_BY_MARKER, marker) > 0

        await eventually(flushing, timeout=30, every=0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stderr is not None:
            worker.stderr.close()
    await forget_arq_jobs(queue_url, f"{mine.redis_prefix}arq:queue")
    moved = await count(database_url, COUNT_BY_MARKER, marker)
    assert 0 < moved < total, "the worker was not killed mid-way"
    pending = 0
    for stream in keys.log_shards_all():
        pending += (await redis.xpending(stream, SINK_GROUP))["pending"]
    assert pending > 0, "no batch was in hand when the worker died"

    # Another worker takes the dead one's entries over once they are idle (1 s here).
    async with open_sink(mine, redis, claim_idle_ms=1000) as heir:
        await asyncio.sleep(1.0)
        await heir.drain()
        assert heir.counters.claimed == pending
    assert await count(database_url, COUNT_BY_MARKER, marker) == total
    conn = await asyncpg.connect(database_url)
    try:
        tags = await conn.fetch(
            "SELECT tags->>'n' AS n, count(*) FROM postbacks WHERE user_agent = $1 GROUP BY 1",
            marker,
        )
    finally:
        await conn.close()
    assert sorted(int(row["n"]) for row in tags) == list(range(total))
    assert all(row["count"] == 1 for row in tags)
    assert await stream_lengths(redis, keys) == 0


async def test_rows_arrive_after_postgres_comes_back(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    mine = own_prefix(settings, "outage")
    keys = keyspace(mine)
    marker = f"outage-{secrets.token_hex(4)}"
    proxy = PgProxy(database_url)

    def rows_are(expected: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await count(database_url, COUNT_BY_MARKER, marker) == expected

        return check

    async def redis_empty() -> bool:
        return await stream_lengths(redis, keys) == 0

    await proxy.start()
    async with open_sink(mine, redis, dsn=proxy.dsn, max_backoff=0.2) as sink:
        stop = asyncio.Event()
        worker = asyncio.create_task(sink.run(stop))
        try:
            await fill(redis, keys, [entry(marker, n) for n in range(20)])
            await eventually(rows_are(20), timeout=10)

            await proxy.stop()  # Postgres unreachable
            await fill(redis, keys, [entry(marker, n) for n in range(20, 70)])
            await asyncio.sleep(1.0)
            assert await rows_are(20)()
            assert await stream_lengths(redis, keys) == 50  # kept in Redis meanwhile
            assert sink.counters.retries > 0

            await proxy.start()  # back
            await eventually(rows_are(70), timeout=15)
            await eventually(redis_empty, timeout=5)
        finally:
            stop.set()
            await asyncio.wait_for(worker, 10)
            await proxy.stop()


async def test_unreadable_entries_are_kept_not_lost_nor_stuck(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    mine = own_prefix(settings, "junk")
    keys = keyspace(mine)
    marker = f"nul-{secrets.token_hex(4)}"
    # Postgres text and jsonb refuse NUL characters: they are replaced, not fatal.
    await fill(redis, keys, [entry(marker, 1, tags={"a\x00b": "x\x00y"}, caller_raw="1\x00")])
    await redis.xadd(keys.log_shard(1), {ENTRY_FIELD: b"{not json"})
    async with open_sink(mine, redis) as sink:
        assert await sink.drain() == 2
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM postbacks WHERE user_agent = $1", marker)
        assert row is not None
        assert orjson.loads(row["tags"]) == {"a\ufffdb": "x\ufffdy"}
        assert row["caller_raw"] == "1\ufffd"
        junk = await conn.fetch(
            "SELECT * FROM postbacks WHERE error = 'undecodable_entry' AND tags->>'raw' = $1",
            "{not json",
        )
        assert len(junk) == 1
    finally:
        await conn.close()
    assert await stream_lengths(redis, keys) == 0


async def test_day_partitions_are_made_ahead_and_dropped_after_retention(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with open_sink(settings, redis) as sink:
            await sink.maintain(retention_days=90)
        today = utc_today()
        names = {
            row["relname"]
            for row in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'postbacks'::regclass"
            )
        }
        for ahead in range(-1, 4):
            assert f"postbacks_p{today + timedelta(days=ahead):%Y%m%d}" in names
        assert "postbacks_default" in names

        # Far in the past, so that no other test's rows are near: a row whose day had no
        # partition lands in DEFAULT, moves into the day's partition when it is made,
        # and goes with it when retention drops it.
        old = date(2001, 1, 5)
        insert = (
            "INSERT INTO postbacks (received_at, id, method, http_status)"
            " VALUES ($1::date::timestamp AT TIME ZONE 'UTC' + interval '1 hour',"
            " gen_random_uuid(), 'GET', 200)"
        )
        where = "FROM postbacks WHERE received_at < '2001-02-01'"
        await conn.execute(insert, old)
        await conn.execute(insert, old - timedelta(days=2))
        assert await conn.fetchval(f"SELECT count(*) {where}") == 2
        assert await conn.fetchval("SELECT postbacks_ensure_partition($1)", old) is True
        assert await conn.fetchval("SELECT postbacks_ensure_partition($1)", old) is False
        partitions = await conn.fetch(f"SELECT tableoid::regclass::text AS part {where}")
        assert sorted(row["part"] for row in partitions) == [
            "postbacks_default",
            "postbacks_p20010105",
        ]
        assert await conn.fetchval("SELECT postbacks_drop_partitions($1)", old) == 0
        assert await conn.fetchval(f"SELECT count(*) {where}") == 1
        dropped = await conn.fetchval("SELECT postbacks_drop_partitions($1)", old + timedelta(1))
        assert dropped == 1
        assert await conn.fetchval(f"SELECT count(*) {where}") == 0
        assert await conn.fetchval("SELECT to_regclass('postbacks_p20010105')") is None
    finally:
        await conn.close()
