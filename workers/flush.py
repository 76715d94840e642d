"""The flush worker: `arq workers.flush.WorkerSettings` (the Procfile's `worker:`).

Started with the worker, a loop moves the postback log and the call snapshots from the
Redis streams into Postgres (`calltags.sink`); any number of these processes may run.
An hourly cron job creates the log's day partitions ahead and drops those past
CALLTAGS_LOG_RETENTION_DAYS. Jobs are safe to run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.cron import CronJob, cron
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from calltags.clients import redis_client, sentinel_primary
from calltags.config import SENTINEL_SCHEMES, load_settings, require
from calltags.keys import KeySpace
from calltags.sink import Sink
from calltags.writer import create_sink_pool

log = logging.getLogger("calltags.worker")

STOP_TIMEOUT = 30.0  # s a stopping worker gives the batches in hand to commit
GC_YOUNG_OBJECTS = 100_000  # containers made between two collections of the youngest ones


async def startup(ctx: dict[str, Any]) -> None:
    ours = logging.getLogger("calltags")
    if not ours.handlers and not logging.getLogger().handlers:  # arq configures only its own
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    settings = load_settings()
    redis = redis_client(settings)
    pool = await create_sink_pool(require(settings.database_url, "DATABASE_URL"))
    sink = Sink(
        redis,
        pool,
        KeySpace(settings.redis_prefix, settings.log_shards),
        batch=settings.flush_batch,
        claim_idle_ms=settings.flush_claim_idle_seconds * 1000,
        erasure_salt=str(settings.erasure_salt) if settings.erasure_salt else None,
    )
    stop = asyncio.Event()
    ctx.update(settings=settings, sink=sink, stop=stop, redis_client=redis, pool=pool)
    # The flush loop makes and drops thousands of small containers a batch (parsed
    # entries, rows), none in a reference cycle. With Python's default thresholds the
    # cyclic collector ran dozens of times a batch, and the batch's objects, alive
    # across those runs, set off full collections walking every object of the process.
    # What exists now lives as long as the process: frozen, no collection walks it
    # again; and the young objects are collected less often, most of them freed by then.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS)
    ctx["flusher"] = asyncio.create_task(sink.run(stop))
    log.info("flushing %d streams as consumer %s", len(sink.streams), sink.consumer)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "stop" not in ctx:  # startup failed
        return
    ctx["stop"].set()
    try:
        await asyncio.wait_for(ctx["flusher"], STOP_TIMEOUT)
    except TimeoutError:
        log.warning("stopped with batches in hand; another worker takes them over")
    sink: Sink = ctx["sink"]
    log.info("flushed %s", sink.counters)
    await ctx["pool"].close()
    await ctx["redis_client"].aclose()


async def maintain(ctx: dict[str, Any]) -> dict[str, int]:
    """Day partitions of the postback log: create ahead, drop past retention."""
    sink: Sink = ctx["sink"]
    done = await sink.maintain(ctx["settings"].log_retention_days)
    log.info("log maintenance: %s", done)
    return done


# arq reads its settings from this class when the module is imported, so the
# environment is read here, once.
_settings = load_settings()
# arq makes its event loop after importing this module: uvloop's where it is installed
# (uvicorn[standard] brings it, but not on Windows), which spends less of the worker's
# CPU on sockets than asyncio's own.
with contextlib.suppress(ImportError):
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# arq's connection retries without end: arq's poll loop has no error handling of its
# own, so a Redis restart or a failover would otherwise end the worker process.
_RETRY_ON = [redis_errors.ConnectionError, redis_errors.TimeoutError]
_RETRY = Retry(
    ExponentialBackoff(cap=1.0, base=0.05),
    -1,
    # OSError too: a refused connect is not a redis ConnectionError.
    supported_errors=(redis_errors.ConnectionError, redis_errors.TimeoutError, OSError),
)


def _queue_redis(url: str) -> RedisSettings:
    """arq's connection to a single node, retrying without end."""
    return dataclasses.replace(RedisSettings.from_dsn(url), retry_on_error=_RETRY_ON, retry=_RETRY)


def _queue_pool(url: str, queue_name: str) -> ArqRedis:
    """arq's connection to the primary that Sentinels name, retrying without end. arq's
    own Sentinel support (RedisSettings(sentinel=True)) passes no retry to the
    connections, so the worker is handed this client instead: made now, it connects in
    the worker's loop."""
    pool = sentinel_primary(
        url, "CALLTAGS_QUEUE_URL", redis_class=ArqRedis, retry_on_error=_RETRY_ON, retry=_RETRY
    )
    assert isinstance(pool, ArqRedis)
    pool.default_queue_name = queue_name
    return pool


class WorkerSettings:
    functions: tuple[()] = ()
    cron_jobs: tuple[CronJob, ...] = (cron(maintain, minute={7}, run_at_startup=True),)
    on_startup = startup
    on_shutdown = shutdown
    # Under the key prefix, so deployments (and test runs) sharing a Redis stay apart.
    queue_name = f"{_settings.redis_prefix}arq:queue"
    # arq's own queue and cron bookkeeping need a single Redis node or a Sentinel-managed
    # primary: CALLTAGS_QUEUE_URL, else REDIS_URL (a cluster REDIS_URL without
    # CALLTAGS_QUEUE_URL stops here).
    if _settings.arq_queue_url().startswith(SENTINEL_SCHEMES):
        redis_pool = _queue_pool(_settings.arq_queue_url(), queue_name)
    else:
        redis_settings = _queue_redis(_settings.arq_queue_url())
