"""The flush worker against real Redis and Postgres: redelivery adds no row, a worker
killed mid-batch loses and duplicates nothing, a Postgres outage only delays rows,
the log's day partitions are made and dropped, an entry's outcome code (field r) and
call (field c) decide its row and the call record, a value Postgres refuses costs
only its own row, and the worker runs without the web side."""

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
import pytest
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
    process_env,
    stream_lengths,
)
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.keys import SINK_GROUP
from calltags.log import ENTRY_FIELD
from calltags.partitions import utc_today

ROOT = Path(__file__).resolve().parent.parent
COUNT_BY_MARKER = "SELECT count(*) FROM postbacks WHERE user_agent = $1"
# The web side, which the worker must run without (habit 15 of the style guide).
WEB_MODULES = frozenset(
    f"calltags.{name}"
    for name in (
        "app", "asgi", "http", "postbacks", "calls", "admin", "listings", "logpage", "openapi",
        "metrics", "health", "services", "cli", "devserver",
    )
)  # fmt: skip


def test_the_worker_imports_nothing_of_the_web_side() -> None:
    code = "import sys, workers.flush; print(' '.join(sorted(sys.modules)))"
    # Settings are read when workers.flush is imported; nothing connects to this port.
    env = {**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"}
    env.pop("CALLTAGS_QUEUE_URL", None)
    env.pop("CALLTAGS_REDIS_CLUSTER", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "calltags.sink" in loaded
    assert loaded & WEB_MODULES == set()
    assert {name for name in loaded if name.partition(".")[0] == "starlette"} == set()


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
        await first.reader.ensure_groups()
        batch = await first.reader.read(stream, None)
        assert batch
        await first.writer.commit(*first._rows(stream, batch))
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
    total = 20_000  # a good while of work: the worker is caught with batches in hand
    await fill(redis, keys, [entry(marker, n) for n in range(total)])
    env = process_env(
        mine,
        redis_url,
        queue_url,
        database_url,
        CALLTAGS_FLUSH_BATCH="100",
        CALLTAGS_FLUSH_CLAIM_IDLE_SECONDS="1",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        async def mid_batch() -> bool:
            """Rows committed and a batch in hand: the worker is then frozen (SIGSTOP),
            so that it cannot finish that batch before it is killed."""
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            if await count(database_url, COUNT_BY_MARKER, marker) == 0:
                return False
            worker.send_signal(signal.SIGSTOP)
            if await _pending(redis, keys.log_shards_all()) > 0:
                return True
            worker.send_signal(signal.SIGCONT)
            return False

        await eventually(mid_batch, timeout=30, every=0.01)
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
    pending = await _pending(redis, keys.log_shards_all())
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


async def _pending(redis: Redis, streams: list[str]) -> int:
    """Entries read by the workers and not yet acknowledged."""
    total = 0
    for stream in streams:
        total += (await redis.xpending(stream, SINK_GROUP))["pending"]
    return total


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


async def _rows_of(database_url: str, marker: str) -> dict[str, asyncpg.Record]:
    """The marker's postbacks rows by their tag n."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM postbacks WHERE user_agent = $1", marker)
    finally:
        await conn.close()
    return {orjson.loads(row["tags"])["n"]: row for row in rows}


def _call(caller: str, **fields: object) -> bytes:
    """A call's JSON as the Lua scripts store it (see lua/connect-3.lua)."""
    doc = {
        "u": f"00000000-0000-4000-8000-{secrets.token_hex(6)}",
        "n": caller,
        "s": "in_progress",
        "b": "1700000000000",
        "t": {"source": "1:2:1700000000500|form"},
        "v": 2,
        **fields,
    }
    return orjson.dumps(doc)


async def test_the_outcome_code_decides_status_error_and_http_status(
    settings: Settings, redis: Redis, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    mine = own_prefix(settings, "outcome")
    keys = keyspace(mine)
    marker = f"outcome-{secrets.token_hex(4)}"
    # The web process writes the entry before the script decides: no status in it yet.
    undecided = {"status": None, "error": None, "http_status": 200}
    live = _call("+12125550001")
    completed = _call("+12125550002", s="completed", e="1700000009000", v=3)
    cases: list[tuple[str, dict[bytes, bytes]]] = [
        ("stored", {b"r": b"0"}),
        ("live", {b"r": b"1", b"c": live}),
        ("completed", {b"r": b"2", b"c": completed}),
        ("no call", {b"r": b"-1"}),
        ("limited", {b"r": b"-2"}),
        # An unknown code (a newer web process, say) keeps what the entry says.
        ("unknown", {b"r": b"7"}),
        ("junk code", {b"r": b"x"}),
        # A call that cannot be read is dropped; the postback's row is kept.
        ("bad call", {b"r": b"1", b"c": b"{not json"}),
    ]
    for n, (name, extra) in enumerate(cases):
        own = {"status": "as the entry says", "error": "entry_error", "http_status": 418}
        values = own if name in ("unknown", "junk code") else undecided
        doc = entry(marker, n, tags={"n": name}, **values)
        await redis.xadd(
            keys.log_shard(n % mine.log_shards), {ENTRY_FIELD: orjson.dumps(doc), **extra}
        )
    with caplog.at_level("WARNING", logger="calltags.sink"):
        async with open_sink(mine, redis) as sink:
            assert await sink.drain() == len(cases)
    assert "unknown outcome code" in caplog.text
    assert await stream_lengths(redis, keys) == 0

    rows = await _rows_of(database_url, marker)
    got = {name: (row["status"], row["error"], row["http_status"]) for name, row in rows.items()}
    assert got == {
        "stored": ("call not found, tags stored", None, 200),
        "live": ("call in progress, tags applied", None, 200),
        "completed": ("completed call found, tags applied", None, 200),
        "no call": (None, "call_not_found", 404),
        "limited": (None, "rate_limited", 429),
        "unknown": ("as the entry says", "entry_error", 418),
        "junk code": ("as the entry says", "entry_error", 418),
        "bad call": ("call in progress, tags applied", None, 200),
    }
    # The row names the call the tags went to, which only the script knew.
    assert rows["live"]["call_uuid"] == orjson.loads(live)["u"]
    assert rows["completed"]["call_uuid"] == orjson.loads(completed)["u"]
    assert rows["stored"]["call_uuid"] is None

    conn = await asyncpg.connect(database_url)
    try:
        calls = {
            row["caller_number"]: row
            for row in await conn.fetch(
                "SELECT * FROM calls WHERE caller_number = ANY($1::text[])",
                ["+12125550001", "+12125550002"],
            )
        }
    finally:
        await conn.close()
    assert set(calls) == {"+12125550001", "+12125550002"}
    record = calls["+12125550001"]
    assert (record["call_uuid"], record["state"], record["version"]) == (
        orjson.loads(live)["u"],
        "in_progress",
        2,
    )
    assert orjson.loads(record["tags"]) == {"source": "form"}
    assert orjson.loads(record["tag_sources"])["source"]["key_id"] == 2
    ended = calls["+12125550002"]
    assert ended["state"] == "completed" and ended["ended_at"] is not None
    assert ended["version"] == 3


async def test_a_call_in_field_c_wins_over_one_in_the_entry(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    """Entries written before field c existed carry the call inside e; one with both
    is stored from c, the call as it was after the write."""
    mine = own_prefix(settings, "callfield")
    keys = keyspace(mine)
    marker = f"callfield-{secrets.token_hex(4)}"
    older = _call("+12125550003", v=1, t={})
    newer = orjson.loads(_call("+12125550003", v=5))
    newer["u"] = orjson.loads(older)["u"]
    doc = entry(marker, 0, tags={"n": "both"}, call=older)
    await redis.xadd(
        keys.log_shard(0), {ENTRY_FIELD: orjson.dumps(doc), b"r": b"1", b"c": orjson.dumps(newer)}
    )
    inside = entry(marker, 1, tags={"n": "inside"}, call=_call("+12125550004"))
    await fill(redis, keys, [inside])
    async with open_sink(mine, redis) as sink:
        assert await sink.drain() == 2
    conn = await asyncpg.connect(database_url)
    try:
        versions: dict[str, int] = {
            row["caller_number"]: row["version"]
            for row in await conn.fetch(
                "SELECT caller_number, version FROM calls WHERE caller_number = ANY($1::text[])",
                ["+12125550003", "+12125550004"],
            )
        }
    finally:
        await conn.close()
    assert versions == {"+12125550003": 5, "+12125550004": 2}


async def test_a_batch_with_a_value_postgres_refuses_keeps_every_other_row(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    """Rows go to COPY unchecked; when one is refused the batch is checked entry by
    entry: the good rows land, the bad entry becomes an undecodable_entry row."""
    mine = own_prefix(settings, "badvalue")
    keys = keyspace(mine)
    marker = f"badvalue-{secrets.token_hex(4)}"
    good = [entry(marker, n, tags={"n": str(n)}) for n in range(6)]
    bad = [
        entry(marker, 10, tags={"n": "10"}, publisher_id="not a number"),
        entry(marker, 11, tags={"n": "11"}, http_status=10**6),
        {**entry(marker, 12, tags={"n": "12"}), "id": "not-a-uuid"},
        {**entry(marker, 13, tags={"n": "13"}), "received_at": 10**17},
    ]
    await fill(redis, keys, good + bad)
    async with open_sink(mine, redis) as sink:
        assert await sink.drain() == len(good) + len(bad)
        assert sink.counters.retries == 0  # checked at once, not retried
    rows = await _rows_of(database_url, marker)
    assert set(rows) == {str(n) for n in range(6)}
    conn = await asyncpg.connect(database_url)
    try:
        kept = await conn.fetchval(
            "SELECT count(*) FROM postbacks WHERE error = 'undecodable_entry'"
            " AND tags->>'raw' LIKE $1",
            f"%{marker}%",
        )
    finally:
        await conn.close()
    assert kept == len(bad)
    assert await stream_lengths(redis, keys) == 0


async def test_entries_already_in_postgres_are_not_added_again(
    settings: Settings, redis: Redis, database_url: str
) -> None:
    """A batch read as new whose rows are in Postgres already (its group was lost and
    made again, say): the COPY straight into the table fails on the primary key, and
    the batch goes through the temp table, adding only the rows missing."""
    mine = own_prefix(settings, "again")
    keys = keyspace(mine)
    marker = f"again-{secrets.token_hex(4)}"
    first = [entry(marker, n, tags={"n": str(n)}) for n in range(40)]
    await fill(redis, keys, first)
    async with open_sink(mine, redis) as sink:
        assert await sink.drain() == 40
        await fill(
            redis, keys, first[:30] + [entry(marker, n, tags={"n": str(n)}) for n in range(40, 50)]
        )
        assert await sink.drain() == 40
    assert await count(database_url, COUNT_BY_MARKER, marker) == 50
    assert await stream_lengths(redis, keys) == 0


async def test_retry_waits_double_from_a_tenth_of_a_second_up_to_max_backoff(
    settings: Settings, redis: Redis
) -> None:
    async with open_sink(settings, redis, max_backoff=0.2) as sink:
        waits = [sink._delay(failures) for failures in range(5000)]  # a long outage
    assert 0.05 <= waits[0] <= 0.1
    assert 0.1 <= waits[1] <= 0.2
    assert all(0.1 <= wait <= 0.2 for wait in waits[2:])
