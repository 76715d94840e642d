"""The flush worker: `arq workers.flush.WorkerSettings` (the Procfile's `worker:`).

Started with the worker, a loop moves the postback log and the call snapshots from the
Redis streams into Postgres (`calltags.sink`); any number of these processes may run.
An hourly cron job creates the log's day partitions ahead and drops those past
CALLTAGS_LOG_RETENTION_DAYS. Jobs are safe to run twice.

Webhook deliveries: the flush commits a batch's deliveries with its rows (the outbox,
`calltags.outbox`) and then enqueues arq jobs `deliver`, DELIVERY_CHUNK deliveries
each; a failed attempt enqueues the next one, deferred (`calltags.delivery`). Each
attempt has its own job id, so arq never refuses it for an earlier attempt's keys. An
attempt leases its delivery in Postgres for the receiver's time and a little more, so
that jobs run twice send it once at a time. A sweep every SWEEP_SECONDS enqueues the
attempts overdue (their job lost: a worker killed between a commit and its enqueue, or
its lease run out); the jobs' timeout is short, so a job a killed worker held also runs
again (arq's in-progress key expires) well within a minute.
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
from arq.worker import Function, Retry, func
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff

from calltags.clients import redis_client, sentinel_primary
from calltags.config import SENTINEL_SCHEMES, Settings, load_settings, require
from calltags.delivery import Courier, Sender
from calltags.errors import StoreUnavailable
from calltags.keys import KeySpace
from calltags.outbox import Outbox
from calltags.sink import Sink
from calltags.webhookstore import WebhookStore
from calltags.writer import create_sink_pool

log = logging.getLogger("calltags.worker")

STOP_TIMEOUT = 30.0  # s a stopping worker gives the batches in hand to commit
GC_YOUNG_OBJECTS = 100_000  # containers made between two collections of the youngest ones
SWEEP_SECONDS = 5.0  # between two sweeps for overdue delivery attempts
SWEEP_OVERDUE = 5.0  # s past its time an attempt is taken as lost
SWEEP_LIMIT = 1000  # attempts a sweep enqueues at most
DELIVERY_CHUNK = 50  # new deliveries a job sends
ENQUEUE_WAIT_SECONDS = 0.02  # new deliveries gathered this long before their jobs go
STORE_RETRY_SECONDS = 5  # an attempt waits this long while Postgres is unreachable
JOB_SLACK_SECONDS = 10  # a job's time beyond CALLTAGS_WEBHOOK_TIMEOUT_SECONDS (Postgres)


async def startup(ctx: dict[str, Any]) -> None:
    ours = logging.getLogger("calltags")
    if not ours.handlers and not logging.getLogger().handlers:  # arq configures only its own
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
    settings = load_settings()
    redis = redis_client(settings)
    dsn = require(settings.database_url, "DATABASE_URL")
    pool = await create_sink_pool(dsn)
    keys = KeySpace(settings.redis_prefix, settings.log_shards)
    queue: ArqRedis = ctx["redis"]
    hooks_pool = await create_sink_pool(dsn, max_size=8)
    courier = _courier(settings, WebhookStore(hooks_pool), queue, keys)
    new_deliveries = _NewDeliveries(queue, keys)
    sink = Sink(
        redis,
        pool,
        keys,
        batch=settings.flush_batch,
        claim_idle_ms=settings.flush_claim_idle_seconds * 1000,
        outbox=Outbox(pool, new_deliveries.add),
        erasure_salt=str(settings.erasure_salt) if settings.erasure_salt else None,
    )
    stop = asyncio.Event()
    ctx.update(
        settings=settings,
        sink=sink,
        stop=stop,
        redis_client=redis,
        pool=pool,
        hooks_pool=hooks_pool,
        courier=courier,
    )
    # The flush loop makes and drops thousands of small containers a batch (parsed
    # entries, rows), none in a reference cycle. With Python's default thresholds the
    # cyclic collector ran dozens of times a batch, and the batch's objects, alive
    # across those runs, set off full collections walking every object of the process.
    # What exists now lives as long as the process: frozen, no collection walks it
    # again; and the young objects are collected less often, most of them freed by then.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS)
    ctx["flusher"] = asyncio.create_task(sink.run(stop))
    ctx["sweeper"] = asyncio.create_task(_sweep(queue, keys, courier.store, stop))
    ctx["enqueuer"] = asyncio.create_task(new_deliveries.run())
    log.info("flushing %d streams as consumer %s", len(sink.streams), sink.consumer)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "stop" not in ctx:  # startup failed
        return
    ctx["stop"].set()
    try:
        await asyncio.wait_for(ctx["flusher"], STOP_TIMEOUT)
    except TimeoutError:
        log.warning("stopped with batches in hand; another worker takes them over")
    ctx["sweeper"].cancel()
    ctx["enqueuer"].cancel()
    sink: Sink = ctx["sink"]
    log.info("flushed %s", sink.counters)
    await ctx["courier"].sender.close()
    await ctx["hooks_pool"].close()
    await ctx["pool"].close()
    await ctx["redis_client"].aclose()


def _courier(settings: Settings, store: WebhookStore, queue: ArqRedis, keys: KeySpace) -> Courier:
    async def schedule(delivery_id: str, attempt: int, delay: float) -> None:
        await _enqueue(queue, keys, [delivery_id], attempt, delay)

    sender = Sender(settings.webhook_timeout_seconds, settings.webhook_allow_private)
    return Courier(
        store,
        sender,
        schedule,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        max_attempts=settings.webhook_max_attempts,
        disable_after=settings.webhook_disable_after,
    )


async def _enqueue(
    queue: ArqRedis, keys: KeySpace, delivery_ids: list[str], attempt: int, delay: float = 0
) -> None:
    """A `deliver` job for these deliveries, named after the first one and the attempt;
    arq refuses it while a job of that name exists (that job sends them)."""
    await queue.enqueue_job(
        "deliver",
        delivery_ids,
        _job_id=keys.delivery_job(delivery_ids[0], attempt),
        _defer_by=delay or None,
        _queue_name=WorkerSettings.queue_name,
    )


class _NewDeliveries:
    """The first attempts of deliveries just committed, gathered from every stream's
    batches for ENQUEUE_WAIT_SECONDS, then enqueued DELIVERY_CHUNK a job: at a steady
    trickle each batch holds a few, and a job's own cost is shared by more. What is
    gathered when the worker dies the sweep finds."""

    def __init__(self, queue: ArqRedis, keys: KeySpace):
        self.queue = queue
        self.keys = keys
        self.waiting: list[str] = []
        self.arrived = asyncio.Event()

    async def add(self, delivery_ids: list[str]) -> None:
        self.waiting += delivery_ids
        self.arrived.set()

    async def run(self) -> None:
        while True:
            await self.arrived.wait()
            await asyncio.sleep(ENQUEUE_WAIT_SECONDS)
            self.arrived.clear()
            found, self.waiting = self.waiting, []
            chunks = range(0, len(found), DELIVERY_CHUNK)
            try:
                await asyncio.gather(
                    *(_enqueue(self.queue, self.keys, found[at : at + DELIVERY_CHUNK], 0)
                      for at in chunks)
                )  # fmt: skip
            except Exception as exc:  # Redis down: the sweep enqueues them later
                log.warning("%d deliveries wait for the sweep: %s", len(found), exc)


async def _sweep(queue: ArqRedis, keys: KeySpace, store: WebhookStore, stop: asyncio.Event) -> None:
    """Enqueue the attempts overdue (their job lost), one job each, every SWEEP_SECONDS."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SWEEP_SECONDS)
        try:
            due = await store.due(SWEEP_LIMIT, SWEEP_OVERDUE)
            if due:
                await asyncio.gather(*(_enqueue(queue, keys, [i], n) for i, n in due))
                log.info("swept %d overdue delivery attempts", len(due))
        except Exception as exc:  # a store is down: the next sweep tries again
            log.warning("sweeping deliveries failed: %s: %s", type(exc).__name__, exc)


async def deliver(ctx: dict[str, Any], delivery_ids: list[str]) -> list[str]:
    """An attempt of each of these webhook deliveries that is pending and due (safe to
    run twice); their states after."""
    courier: Courier = ctx["courier"]
    try:
        return await courier.attempt(delivery_ids)
    except StoreUnavailable as exc:
        log.warning("%d deliveries wait for Postgres: %s", len(delivery_ids), exc)
        raise Retry(defer=STORE_RETRY_SECONDS) from exc


async def maintain(ctx: dict[str, Any]) -> dict[str, int]:
    """Day partitions of the postback log: create ahead, drop past retention; webhook
    deliveries done and older than the log's retention deleted."""
    sink: Sink = ctx["sink"]
    days = ctx["settings"].log_retention_days
    done = await sink.maintain(days)
    courier: Courier = ctx["courier"]
    done["deliveries_deleted"] = await courier.store.prune(days)
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
_RETRY = RedisRetry(
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
    # No result kept: an attempt's job id may be enqueued again (by the sweep) once done.
    functions: tuple[Function, ...] = (func(deliver, keep_result=0),)
    # Every job's timeout, which also sets how long arq's in-progress key of a job a
    # killed worker held keeps the job from running again (this + 10 s).
    job_timeout = _settings.webhook_timeout_seconds + JOB_SLACK_SECONDS
    max_jobs = 200  # jobs in flight: a slow receiver must not hold up the others
    # How often arq looks for jobs due, s (its default, 0.5 s, was most of a delivery's
    # latency at 500 events/s; a look is one Redis command).
    poll_delay = 0.05
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
