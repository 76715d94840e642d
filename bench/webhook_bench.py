"""Webhook deliveries of ONE worker process (`arq workers.flush.WorkerSettings`) to a fast
local receiver (tests/receiver.py, in this process, answering 200 at once).

1. Throughput: pre-fills postback log entries whose tags are stored (each one event
   `tags.stored`, one webhook listening), starts one worker, and times the deliveries
   from the first one the receiver gets to the last: deliveries/s (the worker flushes
   the log and makes the deliveries in the same window, as it does in production).
0. The HTTP client, side by side: REQUESTS requests to the receiver, CLIENT_CONCURRENCY at
   a time, through aiohttp (what calltags sends with) and through httpx, alternately,
   ROUNDS times: requests/s of each and the median ratio.
2. Latency at steady load: appends such entries at --rate a second for --seconds while
   that worker runs; for each delivery, the time from the postback's arrival (the log
   entry's received_at) to the receiver reading the request: p50, p95, max.

Redis and Postgres come from REDIS_URL / DATABASE_URL when set, embedded servers
otherwise; the bench uses a database and key prefix of its own and removes them.

    .venv/bin/python -m bench.webhook_bench [--deliveries 5000] [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from bench.flush_bench import _database, _profiled, append, stores, worker
from calltags import db
from calltags.keys import KeySpace
from calltags.webhooks import WebhookCreate
from calltags.webhookstore import WebhookStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from receiver import Receiver

REQUESTS = 1000
CLIENT_CONCURRENCY = 10
ROUNDS = 3
ACCEPTED_SHARE = 0.8  # of bench.flush_bench's entries: the others are refused (no event)
SHARDS = 8


def _entries_for(deliveries: int) -> int:
    return round(deliveries / ACCEPTED_SHARE)


async def _wait(receiver: Receiver, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while receiver.count < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {receiver.count} of {count} deliveries in {timeout} s")
        await asyncio.sleep(0.01)


def _occurred_ms(body: bytes) -> float:
    text: str = orjson.loads(body)["occurred_at"]
    return datetime.fromisoformat(text).timestamp() * 1000


async def _rate(send: Callable[[], Awaitable[object]]) -> float:
    limit = asyncio.Semaphore(CLIENT_CONCURRENCY)

    async def one() -> None:
        async with limit:
            await send()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(REQUESTS)))
    return REQUESTS / (time.perf_counter() - started)


async def compare_clients(receiver: Receiver) -> dict[str, float]:
    """aiohttp's and httpx's requests/s to the receiver, alternately; the median ratio."""
    url = receiver.url + "/client"
    async with aiohttp.ClientSession() as session, httpx.AsyncClient() as client:

        async def by_aiohttp() -> None:
            async with session.post(url, data=b"{}") as response:
                await response.read()

        async def by_httpx() -> None:
            await client.post(url, content=b"{}")

        rates: dict[str, list[float]] = {"aiohttp": [], "httpx": []}
        for _ in range(ROUNDS):
            rates["aiohttp"].append(await _rate(by_aiohttp))
            rates["httpx"].append(await _rate(by_httpx))
    ratio = statistics.median(a / h for a, h in zip(rates["aiohttp"], rates["httpx"], strict=True))
    found = {name: round(statistics.median(values)) for name, values in rates.items()}
    print(
        f"clients, {CLIENT_CONCURRENCY} at a time: aiohttp {found['aiohttp']}/s,"
        f" httpx {found['httpx']}/s, aiohttp/httpx {ratio:.1f}x"
    )
    receiver.requests.clear()
    receiver.count = 0
    return {"aiohttp_rps": found["aiohttp"], "httpx_rps": found["httpx"], "ratio": round(ratio, 1)}


async def measure(
    redis_url: str,
    server_url: str,
    deliveries: int,
    rate: int,
    seconds: float,
    profile: Path | None = None,
) -> dict[str, float]:
    name = f"calltags_bench_{secrets.token_hex(4)}"
    prefix = f"ctbench:{secrets.token_hex(4)}:"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = _database(server_url, name)
    redis = Redis.from_url(redis_url)
    keys = KeySpace(prefix, SHARDS)
    receiver = Receiver()
    await receiver.start()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "CALLTAGS_REDIS_PREFIX": prefix,
        "CALLTAGS_LOG_SHARDS": str(SHARDS),
        "CALLTAGS_WEBHOOK_ALLOW_PRIVATE": "1",
    }
    pool = None
    try:
        clients = await compare_clients(receiver)
        await db.migrate(database_url)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        new = WebhookCreate(name="bench", url=receiver.url + "/hook", events=["tags.stored"])
        await WebhookStore(pool).create(new)
        entries = _entries_for(deliveries)
        print(f"pre-filling {entries} entries ({deliveries} events) ...", flush=True)
        await append(redis, keys, 0, entries)
        with worker(env) as proc:
            # 1. throughput: the receiver's first delivery to its last.
            await _wait(receiver, 1, 60)
            first = receiver.requests[0].at
            await _wait(receiver, deliveries, 300)
            took = receiver.requests[-1].at - first
            per_second = (deliveries - 1) / took if took > 0 else float("inf")
            sent = len({r.headers["x-calltags-delivery"] for r in receiver.requests})
            print(
                f"throughput: {deliveries} deliveries in {took:.2f} s = {per_second:.0f}/s"
                f" ({receiver.count} requests for {sent} deliveries)"
            )

            # 2. latency at `rate` events a second.
            receiver.requests.clear()
            receiver.count = 0
            tick = 0.1
            per_tick = round(_entries_for(rate) * tick)
            ticks = round(seconds / tick)
            started = time.monotonic()
            expected = sum(1 for n in range(entries, entries + ticks * per_tick) if n % 5 != 4)
            with _profiled(proc.pid, profile):
                for n in range(ticks):
                    await append(redis, keys, entries + n * per_tick, per_tick)
                    await asyncio.sleep(max(0.0, started + (n + 1) * tick - time.monotonic()))
                await _wait(receiver, expected, 120)
            latencies = sorted(r.wall * 1000 - _occurred_ms(r.body) for r in receiver.requests)
            quantiles = statistics.quantiles(latencies, n=100)
            p50, p95 = quantiles[49], quantiles[94]
            sent_rate = expected / seconds
            print(
                f"latency at {sent_rate:.0f} events/s for {seconds:g} s ({expected} deliveries):"
                f" p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms"
            )
        return {
            **clients,
            "deliveries_per_second": round(per_second),
            "rate": round(sent_rate),
            "p50_ms": round(p50),
            "p95_ms": round(p95),
            "max_ms": round(latencies[-1]),
        }
    finally:
        await receiver.stop()
        if pool is not None:
            await pool.close()
        async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=500, help="events a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--profile", type=Path, help="py-spy the worker at steady load into this file"
    )
    args = parser.parse_args()
    with stores() as (redis_url, server_url):
        found = asyncio.run(
            measure(redis_url, server_url, args.deliveries, args.rate, args.seconds, args.profile)
        )
    print(orjson.dumps(found).decode())


if __name__ == "__main__":
    main()
