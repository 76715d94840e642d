"""CALLTAGS_WRITE_ACK=replica on the tests' Redis (a node or a cluster without replicas):
asked for the replicas it has, every write is answered as before; asked for one more,
postbacks, connects and ends get 503 `unavailable` with Retry-After, the log row of such
a postback says so (once), and a retry once the write is confirmed finds what it did."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from apitools import assert_error, connect, end
from conftest import ROUTING, Keys, fresh_caller, running_app
from logtools import entry, fetch, keyspace, open_sink, own_prefix
from redis.asyncio import Redis, RedisCluster

from calltags.config import Settings
from calltags.store import ANSWER_FIELD, ENTRY_FIELD, OUTCOME_FIELD, UNCONFIRMED_ANSWER

ROWS_BY_AGENT = "SELECT http_status, error, status FROM postbacks WHERE user_agent = $1"


async def _replicas(redis: Redis | RedisCluster) -> int:
    """The fewest replicas any primary of the tests' Redis has."""
    if isinstance(redis, RedisCluster):
        found = await redis.info("replication", target_nodes=RedisCluster.PRIMARIES)
        infos = list(found.values()) if "connected_slaves" not in found else [found]
    else:
        infos = [await redis.info("replication")]
    return min(int(info["connected_slaves"]) for info in infos)


@pytest.fixture
async def acked(settings: Settings, redis: Redis) -> Settings:
    """Settings under a prefix of the test's own, with CALLTAGS_WRITE_ACK=replica asking
    for the replicas the tests' Redis has (commonly none): every WAIT is answered."""
    mine = own_prefix(settings, "ack")
    return replace(mine, write_ack="replica", write_replicas=await _replicas(redis))


@pytest.fixture
async def unconfirmed(acked: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app asking for one replica more than Redis has: no write is ever confirmed."""
    settings = replace(acked, write_replicas=acked.write_replicas + 1, write_ack_timeout_ms=20)
    async with running_app(settings) as client:
        yield client


async def test_confirmed_writes_are_answered_as_with_the_primary_alone(acked: Settings) -> None:
    caller = fresh_caller()
    async with running_app(acked) as client:
        key = await Keys(client).key()
        response = await client.get(
            "/data_writing", params={"key": key["key"], "caller_number": caller, "lead": "a"}
        )
        assert response.status_code == 200, response.text
        call = await connect(client, caller, f"ack-{secrets.token_hex(4)}")
        assert call["tags"] == {"lead": "a"}
        assert (await end(client, call["call_uuid"]))["state"] == "completed"


async def test_unconfirmed_writes_are_503_and_the_log_says_so(
    acked: Settings, unconfirmed: httpx.AsyncClient, redis: Redis, database_url: str
) -> None:
    caller = fresh_caller()
    agent = f"ack-{secrets.token_hex(4)}"
    async with running_app(acked) as confirmed:  # the same Redis, asking what it has
        key = await Keys(confirmed).key()
        params = {"key": key["key"], "caller_number": caller, "lead": "a"}
        response = await unconfirmed.get(
            "/data_writing", params=params, headers={"user-agent": agent}
        )
        assert_error(response, 503, "unavailable")
        assert response.headers["retry-after"] == "1"
        refused = await unconfirmed.get(
            "/data_writing", params={**params, "key": "ct_nope"}, headers={"user-agent": agent}
        )
        assert_error(refused, 503, "unavailable")  # its log entry was not confirmed either

        call_uuid = f"ack-{secrets.token_hex(4)}"
        body = {"caller_number": caller, "call_uuid": call_uuid}
        assert_error(
            await unconfirmed.post("/calls", json=body, headers=ROUTING), 503, "unavailable"
        )
        # The write may have happened, and it had: the retry finds the call, which holds
        # the tags of the postback answered 503.
        again = await confirmed.post("/calls", json=body, headers=ROUTING)
        assert again.status_code == 200, again.text
        assert again.json()["tags"] == {"lead": "a"}
        assert_error(
            await unconfirmed.post(f"/calls/{call_uuid}/end", headers=ROUTING), 503, "unavailable"
        )

    async with open_sink(acked, redis) as sink:
        await sink.drain()
    found = await fetch(database_url, ROWS_BY_AGENT, agent)
    rows = sorted((tuple(row) for row in found), key=lambda row: row[2] or "")
    # One row a request, as the client saw it; the postback's keeps what its write did.
    assert rows == [
        (503, "unavailable", None),
        (503, "unavailable", "call not found, tags stored"),
    ]


@pytest.mark.parametrize("amendment_first", [False, True])
async def test_an_amended_entry_replaces_the_row_in_either_order(
    settings: Settings, redis: Redis, database_url: str, amendment_first: bool
) -> None:
    mine = own_prefix(settings, "amend")
    agent = f"amend-{secrets.token_hex(4)}"
    raw = orjson.dumps(entry(agent, status=None))
    first, second = keyspace(mine).log_shards_all()[:2]
    answered: dict[Any, Any] = {
        ENTRY_FIELD: raw,
        OUTCOME_FIELD: 0,
        ANSWER_FIELD: UNCONFIRMED_ANSWER,
    }
    await redis.xadd(second if amendment_first else first, {ENTRY_FIELD: raw, OUTCOME_FIELD: 0})
    await redis.xadd(first if amendment_first else second, answered)
    async with open_sink(mine, redis) as sink:
        await sink.reader.ensure_groups()
        for stream in (first, second):  # one batch after the other, as two workers may
            assert await sink.flush_once(stream) == 1
        # The first entry delivered again (a worker died before acknowledging it).
        await redis.xadd(second if amendment_first else first, {ENTRY_FIELD: raw, OUTCOME_FIELD: 0})
        assert await sink.drain() == 1
    rows = [tuple(row) for row in await fetch(database_url, ROWS_BY_AGENT, agent)]
    assert rows == [(503, "unavailable", "call not found, tags stored")]


async def test_an_idempotent_retry_of_an_unconfirmed_postback_is_its_replay(
    acked: Settings, unconfirmed: httpx.AsyncClient
) -> None:
    """The 503's write may have happened: retried with the same idempotency key, it is
    answered as it was written, and written no second time."""
    caller = fresh_caller()
    async with running_app(acked) as confirmed:
        key = await Keys(confirmed).key()
        params = {"key": key["key"], "caller_number": caller, "lead": "a"}
        headers = {"Idempotency-Key": f"ack-{secrets.token_hex(4)}"}
        refused = await unconfirmed.get("/data_writing", params=params, headers=headers)
        assert_error(refused, 503, "unavailable")
        answered_at = datetime.now(UTC)
        retry = await confirmed.get("/data_writing", params=params, headers=headers)
        assert retry.status_code == 200, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["status"] == "call not found, tags stored"
        call = await connect(confirmed, caller, f"ack-{secrets.token_hex(4)}")
        assert call["tags"] == {"lead": "a"}
        set_at = datetime.fromisoformat(call["tag_sources"]["lead"]["set_at"])
        assert set_at <= answered_at  # the first post's write, not the retry's
