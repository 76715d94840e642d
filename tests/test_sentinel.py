"""calltags on a Sentinel-managed primary (tests/sentinels.py: a primary, a replica and
three Sentinels of the tests' own): replica-acknowledged postbacks, 503 while the replica
cannot confirm; and a failover in which the old primary lives on as a replica (refusing
writes with READONLY), which the web side and a running worker follow without a restart,
the entries the worker had read but not acknowledged re-read from the promoted replica."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from apitools import assert_error
from conftest import Keys, fresh_caller, running_app
from logtools import eventually, fetch, open_sink, own_prefix
from sentinels import SERVICE, SentinelSet

from calltags.clients import redis_client
from calltags.config import Settings

ROWS_BY_AGENT = "SELECT http_status, tags->>'n' AS n FROM postbacks WHERE user_agent = $1"


@pytest.fixture(scope="module")
async def sentinel_set(tmp_root: Path) -> AsyncIterator[SentinelSet]:
    async with SentinelSet(tmp_root / f"sentinels-{secrets.token_hex(3)}") as found:
        yield found


def _through(settings: Settings, sentinels: SentinelSet, name: str, **changes: object) -> Settings:
    """The tests' settings under a prefix of the test's own, on the Sentinels' primary."""
    mine = own_prefix(settings, name)
    return replace(mine, redis_url=sentinels.url, redis_cluster=False, **changes)  # type: ignore[arg-type]


async def _post(client: httpx.AsyncClient, key: str, agent: str, n: int) -> httpx.Response:
    params = {"key": key, "caller_number": fresh_caller(), "n": str(n)}
    return await client.get("/data_writing", params=params, headers={"user-agent": agent})


async def _rows(database_url: str, agent: str) -> list[tuple[int, str]]:
    found = await fetch(database_url, ROWS_BY_AGENT, agent)
    return sorted((row["http_status"], row["n"]) for row in found)


async def test_postbacks_wait_for_the_replica(
    settings: Settings, sentinel_set: SentinelSet, database_url: str
) -> None:
    mine = _through(settings, sentinel_set, "sack", write_ack="replica", write_ack_timeout_ms=50)
    agent = f"sack-{secrets.token_hex(4)}"
    async with running_app(mine) as client:
        key = (await Keys(client).key())["key"]
        assert (await _post(client, key, agent, 0)).status_code == 200  # the replica has it
        sentinel_set.replica.signal(signal.SIGSTOP)  # it confirms nothing
        try:
            assert_error(await _post(client, key, agent, 1), 503, "unavailable")
        finally:
            sentinel_set.replica.signal(signal.SIGCONT)
        assert (await _post(client, key, agent, 2)).status_code == 200
    redis = redis_client(mine)
    try:
        async with open_sink(mine, redis) as sink:
            await sink.drain()
    finally:
        await redis.aclose()
    assert await _rows(database_url, agent) == [(200, "0"), (200, "2"), (503, "1")]


async def test_a_failover_is_followed_by_the_web_side_and_the_worker(
    settings: Settings, sentinel_set: SentinelSet, database_url: str
) -> None:
    mine = _through(settings, sentinel_set, "sfail")
    agent = f"sfail-{secrets.token_hex(4)}"
    redis = redis_client(mine)
    stop = asyncio.Event()
    async with running_app(mine) as client, open_sink(mine, redis) as sink:
        key = (await Keys(client).key())["key"]
        for n in range(4):
            assert (await _post(client, key, agent, n)).status_code == 200
        # Read by the worker's consumer, as if the reply had been lost on the way: the
        # entries are delivered to it on the primary, and soon on the replica.
        await sink.reader.ensure_groups()
        held = [e for stream in sink.streams for e in await sink.reader.read(stream, None)]
        assert len(held) == 4
        worker = asyncio.create_task(sink.run(stop))
        old = await sentinel_set.primary_port()
        assert old is not None
        await sentinel_set.wait_synced(sentinel_set.replica)
        async with contextlib.aclosing(sentinel_set.sentinels[0].client()) as asked:
            await asked.execute_command("SENTINEL", "FAILOVER", SERVICE)
        new = await sentinel_set.wait_promoted(old)
        # Sentinel demotes a primary it finds alive after a failover only 8 s later (and
        # then disconnects its clients): here at once, clients left connected. Until
        # then the old primary takes writes that the new one never sees (with
        # CALLTAGS_WRITE_ACK=replica they are refused: it has no replica left).
        async with contextlib.aclosing(sentinel_set.primary.client()) as demoted:
            await demoted.replicaof("127.0.0.1", new)

        answers: list[int] = []

        async def accepted() -> bool:  # the first may meet the old primary, now a replica
            answers.append((await _post(client, key, agent, 4 + len(answers))).status_code)
            return answers[-1] == 200

        await eventually(accepted, timeout=20)
        assert set(answers) <= {200, 503}
        accepted_ns = {"0", "1", "2", "3", str(3 + len(answers))}

        async def flushed() -> bool:
            return {n for status, n in await _rows(database_url, agent) if status == 200} == (
                accepted_ns
            )

        try:
            await eventually(flushed, timeout=20)
        finally:
            stop.set()
            await worker
    await redis.aclose()
    rows = await _rows(database_url, agent)
    assert len(rows) == len({n for _, n in rows}), rows  # every postback once
