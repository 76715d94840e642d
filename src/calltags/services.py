"""The clients a running app holds, opened in its lifespan: what every process needs
(`Core`: Redis and the store), and what the publisher and admin sides add (`Services`:
Postgres, the key resolver, the log's backlog)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import asyncpg
from starlette.requests import Request

from calltags.clients import redis_client
from calltags.config import Settings, require
from calltags.db import create_pool
from calltags.erasure import Erasures
from calltags.guard import GuessGuard
from calltags.keycache import KeyResolver
from calltags.keys import KeySpace
from calltags.log import PostbackLog
from calltags.publishers import Publishers
from calltags.records import Records
from calltags.store import RedisClient, Store, open_store
from calltags.tagschemas import TagSchemas


@dataclass
class Core:
    """What the routing API needs: no Postgres, so it runs through a Postgres outage."""

    settings: Settings
    redis: RedisClient
    keys: KeySpace
    store: Store

    @functools.cached_property
    def routing_tokens(self) -> tuple[str | None, str | None]:
        """The tokens the routing API accepts: the routing token and the admin token."""
        settings = self.settings
        return (
            str(settings.routing_token) if settings.routing_token else None,
            str(settings.admin_token) if settings.admin_token else None,
        )

    def admin_token(self) -> str | None:
        token = self.settings.admin_token
        return str(token) if token else None

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass
class Services(Core):
    pool: asyncpg.Pool
    log: PostbackLog
    publishers: Publishers
    records: Records
    resolver: KeyResolver
    guard: GuessGuard
    tag_schemas: TagSchemas
    erasures: Erasures

    async def close(self) -> None:
        await self.pool.close()
        await super().close()


def open_core(settings: Settings) -> Core:
    redis = redis_client(settings)
    keys = KeySpace(settings.redis_prefix, settings.log_shards)
    store = open_store(redis, keys, settings.call_ttl_seconds, settings.replica_ack)
    return Core(settings, redis, keys, store)


async def open_services(settings: Settings) -> Services:
    core = open_core(settings)
    try:
        pool = await create_pool(require(settings.database_url, "DATABASE_URL"))
    except BaseException:
        await core.close()
        raise
    publishers = Publishers(pool, core.redis, core.keys)
    return Services(
        settings=settings,
        redis=core.redis,
        keys=core.keys,
        store=core.store,
        pool=pool,
        log=PostbackLog(core.redis, core.keys, settings.log_max_backlog),
        publishers=publishers,
        records=Records(pool),
        resolver=KeyResolver(
            core.redis, core.keys, settings.key_cache_seconds, fallback=publishers
        ),
        guard=GuessGuard(settings.key_failures_per_minute),
        tag_schemas=TagSchemas(
            pool, core.redis, core.keys, settings.key_cache_seconds, settings.default_region
        ),
        erasures=Erasures(pool, str(settings.erasure_salt) if settings.erasure_salt else None),
    )


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
