"""The Redis client the settings name: a single node or a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster

from calltags.config import CLUSTER_SCHEMES, Settings, require
from calltags.store import RedisClient


def redis_client(settings: Settings) -> RedisClient:
    url = require(settings.redis_url, "REDIS_URL")
    if settings.uses_cluster:
        # Any node of the cluster: the client learns the others and the slots from it.
        plain = url.replace("+cluster://", "://", 1) if url.startswith(CLUSTER_SCHEMES) else url
        cluster: RedisClient = RedisCluster.from_url(plain)
        return cluster
    client: RedisClient = Redis.from_url(url)
    return client
