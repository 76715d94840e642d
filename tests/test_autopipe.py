"""The auto-pipeline's transport: replies in order, errors per command, and no request
left waiting when a batch fails."""

from __future__ import annotations

import asyncio

import pytest
from fakeredis import FakeAsyncRedis
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from calltags.autopipe import AutoPipeline


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
