"""The Store answers and logs the same on a single node and on Redis Cluster, where the
rate limit and the log append are separate commands around the caller's script (run
with CALLTAGS_TEST_REDIS=cluster for the cluster)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import fresh_caller
from logtools import keyspace, own_prefix

from calltags.config import Settings
from calltags.keys import KeySpace
from calltags.store import (
    CALL_FIELD,
    ENTRY_FIELD,
    OUTCOME_FIELD,
    SNAPSHOT_FIELD,
    STATUS_LIVE,
    STATUS_STORED,
    RateLimit,
    RateLimited,
    RedisClient,
    Store,
    open_store,
)

WRITE: dict[str, Any] = {
    "publisher_id": 1,
    "key_id": 7,
    "cutoff_seconds": 60,
    "storage_seconds": 600,
}


def _store(settings: Settings, redis: RedisClient) -> Store:
    return open_store(redis, keyspace(own_prefix(settings, "store")), settings.call_ttl_seconds)


async def _entries(redis: RedisClient, streams: list[str]) -> list[dict[bytes, bytes]]:
    found: list[dict[bytes, bytes]] = []
    for stream in streams:
        found += [fields for _, fields in await redis.xrange(stream)]
    return found


async def test_postback_without_rate_limit_is_written_and_logged(
    settings: Settings, redis: RedisClient
) -> None:
    store = _store(settings, redis)
    caller = fresh_caller()
    stored = await store.write_tags(caller, {"a": "1"}, **WRITE, log_entry=b'{"n":1}')
    assert stored.status == STATUS_STORED
    call, created = await store.connect(caller, str(uuid.uuid4()))
    assert created and call.tags == {"a": "1"}
    live = await store.write_tags(caller, {"b": "2"}, **WRITE, log_entry=b'{"n":2}')
    assert live.status == STATUS_LIVE and live.call_uuid == call.call_uuid

    entries = await _entries(redis, store.keys.log_shards_all())
    assert sorted((e[ENTRY_FIELD], e[OUTCOME_FIELD]) for e in entries) == [
        (b'{"n":1}', b"0"),
        (b'{"n":2}', b"1"),
    ]
    with_call = [e for e in entries if CALL_FIELD in e]
    assert len(with_call) == 1 and call.call_uuid.encode() in with_call[0][CALL_FIELD]


async def test_rate_limited_postback_writes_nothing_and_is_logged(
    settings: Settings, redis: RedisClient
) -> None:
    store = _store(settings, redis)
    caller = fresh_caller()
    rate = RateLimit(per_second=0.01, burst=1)
    await store.write_tags(caller, {"a": "1"}, **WRITE, log_entry=b"{}", rate=rate)
    with pytest.raises(RateLimited) as refused:
        await store.write_tags(caller, {"b": "2"}, **WRITE, log_entry=b"{}", rate=rate)
    assert refused.value.retry_after_ms > 0

    pending = await redis.hgetall(store.keys.pending(caller))
    assert set(pending) == {b"a"}
    outcomes = sorted(e[OUTCOME_FIELD] for e in await _entries(redis, store.keys.log_shards_all()))
    assert outcomes == [b"-2", b"0"]


async def test_connect_and_end_queue_call_snapshots(settings: Settings, redis: RedisClient) -> None:
    store = _store(settings, redis)
    caller = fresh_caller()
    call_uuid = str(uuid.uuid4())
    await store.connect(caller, call_uuid)
    assert (await store.get_call(call_uuid)).state == "in_progress"
    ended, now = await store.end_call(call_uuid)
    assert now and ended.state == "completed"

    keys: KeySpace = store.keys
    snapshots = await _entries(redis, keys.call_log_shards_all())
    assert len(snapshots) == 2
    assert all(call_uuid.encode() in s[SNAPSHOT_FIELD] for s in snapshots)
