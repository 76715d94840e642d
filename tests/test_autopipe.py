"""The auto-pipeline's transport: replies in order, errors per command, no request left
waiting when a batch fails, and with replica acknowledgement one WAIT a batch that
writes (against real Redis: fakeredis has no WAIT)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from calltags.autopipe import AutoPipeline, ReplicaAck, ReplicaAckedPipeline, Unconfirmed


async def test_commands_of_one_turn_get_their_own_replies_and_errors() -> None:
    redis = FakeAsyncRedis()
    pipe = AutoPipeline(redis, [])
    replies = asyncio.gather(
        pipe.execute("SET", "a", "1"),
        pipe.execute("INCR", "a"),
        pipe.execute("HSET", "a", "f", "v"),  # wrong type: this command's error only
        pipe.execute("GET", "a"),
        return_exceptions=True,
    )
    ok, incremented, wrong, value = await replies
    assert incremented == 2
    assert isinstance(wrong, ResponseError)
    assert value == b"2"
    assert ok in (True, b"OK")
    await redis.aclose()


async def test_a_batch_that_fails_unexpectedly_fails_every_waiting_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipe = AutoPipeline(Redis(), [])

    async def broken(commands: object) -> list[object]:
        raise RuntimeError("a bug in the transport")

    monkeypatch.setattr(pipe, "_send", broken)
    waiting = [pipe.execute("GET", "a"), pipe.execute("GET", "b")]
    for future in waiting:
        with pytest.raises(RuntimeError, match="a bug in the transport"):
            await asyncio.wait_for(future, timeout=5)
    await asyncio.sleep(0)  # the batch's task ends (raising: it is logged as a bug)


@pytest.fixture
async def node(single_redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[Redis, str]]:
    """A single Redis node and a key of the test's own on it."""
    redis = Redis.from_url(single_redis_url)
    key = f"{redis_prefix}autopipe:{secrets.token_hex(4)}"
    try:
        yield redis, key
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_one_wait_ends_each_batch_that_writes(
    node: tuple[Redis, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, key = node
    replicas = int((await redis.info("replication"))["connected_slaves"])
    sent: list[list[tuple[Any, ...]]] = []
    send = AutoPipeline._send

    async def recorded(self: AutoPipeline, commands: list[tuple[Any, ...]]) -> list[Any]:
        sent.append(list(commands))
        return await send(self, commands)

    monkeypatch.setattr(AutoPipeline, "_send", recorded)
    pipe = ReplicaAckedPipeline(redis, [], ReplicaAck(replicas, 100))
    counts = await asyncio.gather(*(pipe.execute("INCR", key) for _ in range(20)))
    assert sorted(counts) == list(range(1, 21))
    assert [len(batch) for batch in sent] == [21]  # 20 requests, one WAIT
    assert sent[0][-1] == ("WAIT", replicas, 100)
    sent.clear()
    assert await pipe.execute("GET", key) == b"20"
    assert sent == [[("GET", key)]]  # reads only: no WAIT


async def test_unconfirmed_writes_fail_and_reads_keep_their_replies(
    node: tuple[Redis, str],
) -> None:
    redis, key = node
    replicas = int((await redis.info("replication"))["connected_slaves"])
    pipe = ReplicaAckedPipeline(redis, [], ReplicaAck(replicas + 1, 10))
    write, refused, read = (
        pipe.execute("INCR", key),
        pipe.execute("HSET", key, "f", "v"),  # wrong type: wrote nothing, its own error
        pipe.execute("GET", key),
    )
    with pytest.raises(Unconfirmed) as caught:
        await write
    assert caught.value.reply == 1  # done on the primary, not confirmed
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await refused
    assert await read == b"1"
