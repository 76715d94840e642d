"""Webhook deliveries through the real worker process (`arq workers.flush.WorkerSettings`):
a receiver down for 10 s while events come loses none, and a worker SIGKILLed with
attempts in flight delivers them all within a minute of its restart."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest
from logtools import ROOT, entry, fill, forget_arq_jobs, keyspace, own_prefix, process_env, until
from receiver import Receiver
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.webhooks import WebhookCreate
from calltags.webhookstore import WebhookStore

DELIVERED = "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1 AND state = 'delivered'"
MADE = "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1"
PENDING = "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1 AND state = 'pending'"


@dataclass
class Setup:
    settings: Settings
    env: dict[str, str]
    pool: asyncpg.Pool
    webhook_id: int
    receiver: Receiver

    async def count(self, sql: str) -> int:
        found: int = await self.pool.fetchval(sql, self.webhook_id)
        return found


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
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
async def setup(
    settings: Settings, database_url: str, redis_url: str, queue_url: str
) -> AsyncIterator[Setup]:
    mine = own_prefix(settings, "whw")
    env = process_env(
        mine,
        redis_url,
        queue_url,
        database_url,
        CALLTAGS_WEBHOOK_ALLOW_PRIVATE="1",
        CALLTAGS_WEBHOOK_RETRY_BASE_SECONDS="0.5",
        CALLTAGS_WEBHOOK_TIMEOUT_SECONDS="2",
        CALLTAGS_FLUSH_CLAIM_IDLE_SECONDS="1",
    )
    receiver = Receiver()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    await pool.execute("DELETE FROM webhooks")
    new = WebhookCreate(name="load", url=receiver.url + "/hook", events=["tags.stored"])
    webhook = await WebhookStore(pool).create(new)
    try:
        yield Setup(mine, env, pool, webhook.id, receiver)
    finally:
        await receiver.stop()
        await pool.execute("DELETE FROM webhooks")
        await pool.close()
        await forget_arq_jobs(queue_url, f"{mine.redis_prefix}arq:queue")


async def load(redis: Redis, settings: Settings, events: int, seconds: float) -> None:
    """`events` accepted postbacks (tags.stored) logged evenly over `seconds`."""
    slices = 10
    for n in range(slices):
        batch = [entry("whw", n * events + i) for i in range(events // slices)]
        await fill(redis, keyspace(settings), batch)
        await asyncio.sleep(seconds / slices)


async def test_a_receiver_down_for_10_s_under_load_gets_every_event(
    setup: Setup, redis: Redis
) -> None:
    events = 1000
    with worker(setup.env):
        down_since = time.monotonic()
        await load(redis, setup.settings, events, 3.0)
        await until(lambda: _made(setup, events), "deliveries made", 30)
        assert await setup.count(DELIVERED) == 0
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - down_since)))
        await setup.receiver.start()
        await until(lambda: _delivered(setup, events), "every event delivered", 45)
    ids = {r.headers["x-calltags-delivery"] for r in setup.receiver.requests}
    assert len(ids) == events
    assert await setup.count(MADE) == events


async def test_a_worker_killed_with_attempts_in_flight_delivers_them_after_its_restart(
    setup: Setup, redis: Redis
) -> None:
    events = 300
    setup.receiver.hang = True  # takes requests, never answers: attempts stay in flight
    await setup.receiver.start()
    with worker(setup.env) as first:
        await load(redis, setup.settings, events, 0.5)
        await until(lambda: _in_flight(setup), "attempts in flight", 30)
        first.kill()
        first.wait()
    assert await setup.count(PENDING) > 0
    setup.receiver.hang = False
    with worker(setup.env):
        restarted = time.monotonic()
        await until(lambda: _delivered(setup, events), "every event delivered", 60)
        took = time.monotonic() - restarted
    assert took < 60
    ids = {r.headers["x-calltags-delivery"] for r in setup.receiver.requests}
    assert len(ids) == events


async def _made(setup: Setup, events: int) -> bool:
    return await setup.count(MADE) == events


async def _delivered(setup: Setup, events: int) -> bool:
    return await setup.count(DELIVERED) == events


async def _in_flight(setup: Setup) -> bool:
    return setup.receiver.count >= 100
