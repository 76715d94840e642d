"""The Redis client the settings name: a single node, a Redis Cluster, or the primary
that Sentinels name (`redis+sentinel://`), followed through a failover."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import Sentinel

from calltags.config import CLUSTER_SCHEMES, SENTINEL_SCHEMES, Settings, require, sentinel_url
from calltags.store import RedisClient

# s to reach a Sentinel, or the primary it names: a Sentinel that is down costs this
# much once, then the next one is asked.
SENTINEL_TIMEOUT = 1.0


def redis_client(settings: Settings) -> RedisClient:
    url = require(settings.redis_url, "REDIS_URL")
    if settings.uses_cluster:
        # Any node of the cluster: the client learns the others and the slots from it.
        plain = url.replace("+cluster://", "://", 1) if url.startswith(CLUSTER_SCHEMES) else url
        cluster: RedisClient = RedisCluster.from_url(plain)
        return cluster
    if url.startswith(SENTINEL_SCHEMES):
        return sentinel_primary(url, "REDIS_URL")
    client: RedisClient = Redis.from_url(url)
    return client


def sentinel_primary(
    url: str, name: str, redis_class: type[Redis] = Redis, **options: Any
) -> Redis:
    """A client of the primary the Sentinels of `url` name. Each new connection asks them
    for its address, so after a failover the client reaches the promoted replica: the
    connections to the old primary fail (or, if it lives on as a replica, refuse a write
    with READONLY, which redis-py turns into a ConnectionError and a reconnect)."""
    parts = sentinel_url(url, name)
    timeouts = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}
    sentinels = Sentinel(
        list(parts.sentinels),
        sentinel_kwargs={**timeouts, "ssl": parts.tls} if parts.tls else timeouts,
    )
    client: Redis = sentinels.master_for(
        parts.service,
        redis_class=redis_class,
        db=parts.db,
        username=parts.username,
        password=parts.password,
        ssl=parts.tls,
        socket_connect_timeout=SENTINEL_TIMEOUT,
        **options,
    )
    return client
