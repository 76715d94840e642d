"""The store's error boundary: with Redis out of reach, every public coroutine of either
store raises StoreUnavailable, never a driver error."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from logtools import free_port
from redis.asyncio import Redis, RedisCluster

from calltags.errors import StoreUnavailable
from calltags.keys import KeySpace
from calltags.store import ClusterStore, NodeStore, RateLimit, RedisClient, Store, open_store

CALLER = "+12125550100"
CALLS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "write_tags": lambda store: store.write_tags(
        CALLER,
        {"a": "1"},
        publisher_id=1,
        key_id=1,
        cutoff_seconds=60,
        storage_seconds=60,
        log_entry=b"{}",
        rate=RateLimit(10, 10),
    ),
    "append_log": lambda store: store.append_log(b"{}"),
    "count_failure": lambda store: store.count_failure("127.0.0.1", 60_000),
    "connect": lambda store: store.connect(CALLER, str(uuid.uuid4())),
    "caller_of": lambda store: store.caller_of(str(uuid.uuid4())),
    "get_call": lambda store: store.get_call(str(uuid.uuid4())),
    "end_call": lambda store: store.end_call(str(uuid.uuid4())),
}


def _unreachable(kind: type[RedisClient]) -> RedisClient:
    port = free_port()  # nothing listens there
    if kind is RedisCluster:
        cluster: RedisClient = RedisCluster(host="127.0.0.1", port=port)
        return cluster
    node: RedisClient = Redis(host="127.0.0.1", port=port)
    return node


@pytest.mark.parametrize(
    ("kind", "store_class"), [(Redis, NodeStore), (RedisCluster, ClusterStore)]
)
@pytest.mark.parametrize("name", sorted(CALLS))
async def test_every_command_raises_store_unavailable_when_redis_is_down(
    kind: type[RedisClient], store_class: type[Store], name: str
) -> None:
    redis = _unreachable(kind)
    store = open_store(redis, KeySpace("ct:", 2), 3600)
    assert type(store) is store_class
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await CALLS[name](store)
        assert raised.value.__cause__ is not None  # the driver's error, kept as the cause
    finally:
        await redis.aclose()
