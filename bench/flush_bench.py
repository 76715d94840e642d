"""Flush throughput and lag of ONE worker process (`arq workers.flush.WorkerSettings`).

1. Throughput: pre-fills N postback log entries in Redis, starts one worker and times
   it draining them into Postgres (from its first acknowledged batch to an empty
   backlog), then prints rows/s.
2. Lag at steady load: appends entries at a fixed rate while that worker runs, samples
   the age of the oldest entry waiting in Redis (what /metrics exports as
   calltags_log_oldest_entry_age_seconds) and prints its median, p95 and maximum.

Redis and Postgres come from REDIS_URL / DATABASE_URL when set, embedded servers
otherwise; the bench uses a database and key prefix of its own and removes them.

    .venv/bin/python -m bench.flush_bench [--entries 200000] [--rate 2000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from redis.asyncio import Redis

from calltags import db
from calltags.devserver import embedded_postgres, embedded_valkey
from calltags.keys import KeySpace
from calltags.log import ENTRY_FIELD, PostbackLog, make_entry
from calltags.store import now_ms

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 5000  # entries a pipeline appends


def entry(n: int) -> dict[str, Any]:
    """A typical entry: 4 in 5 accepted with three tags, 1 in 5 rejected."""
    rejected = n % 5 == 4
    caller = f"+1212{n % 10_000_000:07d}"
    return make_entry(
        received_ms=now_ms(),
        method="GET",
        publisher_id=None if rejected else 1 + n % 7,
        key_id=None if rejected else 1 + n % 13,
        key_prefix="ct_abcde" if rejected else None,
        caller_raw=caller[2:],
        caller_number=caller,
        call_uuid=None,
        tags={"prequalified": "true", "source": f"form-{n % 50}", "zip": f"{n % 100000:05d}"},
        status=None if rejected else "call not found, tags stored",
        error="invalid_key" if rejected else None,
        http_status=401 if rejected else 200,
        remote_addr=f"198.51.100.{n % 250}",
        user_agent="Mozilla/5.0 (bench)",
        latency_us=350 + n % 200,
    )


async def append(redis: Redis, keys: KeySpace, first: int, count: int) -> None:
    shards = keys.log_shards_all()
    for start in range(first, first + count, CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(start + CHUNK, first + count)):
                pipe.xadd(shards[n % len(shards)], {ENTRY_FIELD: orjson.dumps(entry(n))})
            await pipe.execute()


@contextlib.contextmanager
def stores() -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flush-bench-")))
        redis_url = os.environ.get("REDIS_URL") or stack.enter_context(embedded_valkey(tmp / "vk"))
        server_url = os.environ.get("DATABASE_URL") or stack.enter_context(
            embedded_postgres(tmp / "pg", database="postgres")
        )
        yield redis_url, server_url


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.contextmanager
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(args: argparse.Namespace, redis_url: str, server_url: str) -> dict[str, Any]:
    name = f"calltags_bench_{secrets.token_hex(4)}"
    prefix = f"ctbench:{secrets.token_hex(4)}:"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _database(server_url, name)
    redis = Redis.from_url(redis_url)
    keys = KeySpace(prefix, args.shards)
    log = PostbackLog(redis, keys)
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CALLTAGS_REDIS_PREFIX": prefix,
        "CALLTAGS_LOG_SHARDS": str(args.shards),
        "CALLTAGS_FLUSH_BATCH": str(args.batch),
    }
    try:
        await db.migrate(database_url)
        print(f"pre-filling {args.entries} entries over {args.shards} shards ...", flush=True)
        await append(redis, keys, 0, args.entries)

        with worker(env):
            # 1. throughput: from the first batch acknowledged to an empty backlog.
            while (backlog := (await log.measure()).postbacks) >= args.entries:
                await asyncio.sleep(0.005)
            started, left = time.perf_counter(), backlog
            while (await log.measure()).postbacks:
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - started
            rate = left / seconds
            print(f"throughput: {left} rows in {seconds:.2f} s = {rate:,.0f} rows/s", flush=True)

            # 2. lag at a steady load.
            print(f"steady load: {args.rate} entries/s for {args.seconds} s ...", flush=True)
            ages: list[float] = []
            backlogs: list[int] = []

            async def sample() -> None:  # every 20 ms, evenly over the whole run
                while True:
                    measured = await log.measure()
                    ages.append(measured.oldest_age_seconds())
                    backlogs.append(measured.postbacks)
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            tick = 0.1  # s between appends
            first = args.entries
            began = time.perf_counter()
            for step in range(int(args.seconds / tick)):
                await append(redis, keys, first, int(args.rate * tick))
                first += int(args.rate * tick)
                await asyncio.sleep(max(0.0, began + (step + 1) * tick - time.perf_counter()))
            sampler.cancel()
            while (await log.measure()).postbacks:
                await asyncio.sleep(0.05)
        rows = await _count(database_url)
        assert rows == first, f"{rows} rows for {first} entries"
        quantiles = statistics.quantiles(ages, n=20)
        result = {
            "entries": args.entries,
            "shards": args.shards,
            "batch": args.batch,
            "rows_per_second": round(rate),
            "steady_rate": args.rate,
            "lag_median_s": round(statistics.median(ages), 3),
            "lag_p95_s": round(quantiles[18], 3),
            "lag_max_s": round(max(ages), 3),
            "backlog_max": max(backlogs),
            "rows_checked": rows,
        }
        print(
            f"lag at {args.rate}/s: median {result['lag_median_s']} s,"
            f" p95 {result['lag_p95_s']} s, max {result['lag_max_s']} s"
            f" (backlog at most {result['backlog_max']}); {rows} rows, none missing"
        )
        return result
    finally:
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        found: int = await conn.fetchval("SELECT count(*) FROM postbacks")
    finally:
        await conn.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000, help="steady load, entries/s")
    parser.add_argument("--seconds", type=float, default=20, help="steady load duration")
    args = parser.parse_args()
    with stores() as (redis_url, server_url):
        result = asyncio.run(run(args, redis_url, server_url))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "flush.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
