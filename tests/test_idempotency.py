"""Idempotent postbacks: an `Idempotency-Key` header or `idempotency_key` parameter makes
a repeat within the window get the first answer again, writing nothing; the key with
other parameters is 422. Against real Redis (single node, or CALLTAGS_TEST_REDIS=cluster)
and Postgres."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import httpx
import orjson
from apitools import assert_error, connect
from conftest import ADMIN, Keys, fresh_caller, running_app
from logtools import fetch, keyspace

from calltags.config import Settings
from calltags.sink import Sink
from calltags.store import RedisClient

STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"
REPLAYED = "idempotent-replayed"
ROWS = (
    "SELECT http_status, status, error, replayed, tags FROM postbacks"
    " WHERE user_agent = $1 ORDER BY received_at"
)


def _ikey() -> str:
    return f"retry-{secrets.token_hex(6)}"


async def _post(
    client: httpx.AsyncClient,
    secret: str,
    caller: str,
    ikey: str | None,
    agent: str = "idempotency-test",
    **tags: str,
) -> httpx.Response:
    headers = {"user-agent": agent}
    if ikey is not None:
        headers["Idempotency-Key"] = ikey
    params = {"key": secret, "caller_number": caller, **tags}
    return await client.get("/data_writing", params=params, headers=headers)


async def _call_version(redis: RedisClient, settings: Settings, caller: str, uuid: str) -> int:
    """How many writes the call has had (its JSON's v), read from Redis."""
    raw = await redis.hget(keyspace(settings).calls(caller), uuid)
    assert raw is not None
    version: int = orjson.loads(raw)["v"]
    return version


async def test_of_50_identical_posts_racing_exactly_one_writes(
    client: httpx.AsyncClient,
    keys: Keys,
    settings: Settings,
    redis: RedisClient,
    sink: Sink,
    database_url: str,
) -> None:
    key = await keys.key()
    caller, ikey, agent = fresh_caller(), _ikey(), f"race-{secrets.token_hex(4)}"
    call = await connect(client, caller, f"race-{secrets.token_hex(4)}")
    before = await _call_version(redis, settings, caller, call["call_uuid"])

    answers = await asyncio.gather(
        *(_post(client, key["key"], caller, ikey, agent, lead="a", zip="10001") for _ in range(50))
    )
    assert {response.status_code for response in answers} == {200}
    assert len({response.content for response in answers}) == 1  # the same body, 50 times
    first = [response for response in answers if REPLAYED not in response.headers]
    assert len(first) == 1
    assert all(r.headers[REPLAYED] == "true" for r in answers if r is not first[0])
    assert first[0].json()["status"] == LIVE
    after = await _call_version(redis, settings, caller, call["call_uuid"])
    assert after == before + 1  # one write

    await sink.drain()
    rows = await fetch(database_url, ROWS, agent)
    assert len(rows) == 50  # every request logged, once
    assert sorted(row["replayed"] for row in rows) == [False] + [True] * 49
    assert {(row["http_status"], row["status"], row["error"]) for row in rows} == {
        (200, LIVE, None)
    }

    listed = await client.get(
        "/admin/postbacks", params={"key_id": key["id"], "limit": 100}, headers=ADMIN
    )
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert sorted(item["replayed"] for item in items) == [False] + [True] * 49
    assert {item["call_uuid"] for item in items} == {call["call_uuid"]}
    for replayed, count in (("true", 49), ("false", 1)):
        only = await client.get(
            "/admin/postbacks",
            params={"key_id": key["id"], "replayed": replayed, "limit": 100},
            headers=ADMIN,
        )
        assert [item["replayed"] for item in only.json()["items"]] == [replayed == "true"] * count

    page = await client.get("/console/log", params={"key_id": key["id"]}, headers=ADMIN)
    assert page.status_code == 200, page.text
    assert page.text.count('class="replayed"') == 49
    repeats = await client.get(
        "/console/log", params={"key_id": key["id"], "replayed": "true"}, headers=ADMIN
    )
    assert repeats.text.count('class="replayed"') == repeats.text.count('class="entry ') == 49
    assert '<option value="true" selected>' in repeats.text


async def test_a_repeat_gets_the_first_answer_and_writes_nothing(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller, ikey = fresh_caller(), _ikey()
    first = await _post(client, key["key"], caller, ikey, lead="a")
    assert first.status_code == 200, first.text
    assert REPLAYED not in first.headers
    assert first.json()["status"] == STORED

    again = await _post(client, key["key"], caller, ikey, lead="a")
    assert again.status_code == 200
    assert again.headers[REPLAYED] == "true"
    assert again.content == first.content  # expires_at included: the first answer's

    # The parameter form names the same key, in the query or a JSON body.
    query = {"key": key["key"], "caller_number": caller, "lead": "a", "idempotency_key": ikey}
    by_query = await client.get("/data_writing", params=query)
    by_body = await client.post("/data_writing", json=query)
    for response in (by_query, by_body):
        assert response.headers.get(REPLAYED) == "true", response.text
        assert response.content == first.content

    call = await connect(client, caller)
    assert call["tags"] == {"lead": "a"}
    # ... and after the connect, the repeat still answers what the first post did.
    late = await _post(client, key["key"], caller, ikey, lead="a")
    assert late.headers[REPLAYED] == "true" and late.content == first.content
    assert (await connect(client, fresh_caller()))["tags"] == {}


async def test_the_key_with_other_parameters_is_422_and_writes_nothing(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller, other, ikey = fresh_caller(), fresh_caller(), _ikey()
    assert (await _post(client, key["key"], caller, ikey, lead="a")).status_code == 200
    for refused in (
        await _post(client, key["key"], caller, ikey, lead="b"),  # another value
        await _post(client, key["key"], caller, ikey, lead="a", zip="1"),  # one tag more
        await _post(client, key["key"], other, ikey, lead="a"),  # another caller
    ):
        assert_error(refused, 422, "idempotency_key_reused")
    assert (await connect(client, caller))["tags"] == {"lead": "a"}
    assert (await connect(client, other))["tags"] == {}


async def test_the_scope_is_the_postback_key(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher = await keys.publisher()
    one, two = await keys.key(publisher), await keys.key(publisher)
    caller, ikey = fresh_caller(), _ikey()
    assert REPLAYED not in (await _post(client, one["key"], caller, ikey, a="1")).headers
    other_key = await _post(client, two["key"], caller, ikey, a="2")  # its own key: a write
    assert other_key.status_code == 200 and REPLAYED not in other_key.headers
    assert (await connect(client, caller))["tags"] == {"a": "2"}


async def test_replays_across_two_web_processes(
    settings: Settings, client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller, ikey = fresh_caller(), _ikey()
    async with running_app(settings) as second:
        first = await _post(client, key["key"], caller, ikey, lead="x")
        again = await _post(second, key["key"], caller, ikey, lead="x")
        assert again.status_code == 200 and again.headers[REPLAYED] == "true"
        assert again.content == first.content
        assert_error(await _post(second, key["key"], caller, ikey, lead="y"), 422,
                     "idempotency_key_reused")  # fmt: skip
        # Racing from both processes at once: one write in all.
        racing, ikey = fresh_caller(), _ikey()
        answers = await asyncio.gather(
            *(_post(app, key["key"], racing, ikey, n="1") for app in (client, second) * 10)
        )
        assert [REPLAYED in response.headers for response in answers].count(False) == 1


async def test_the_window(settings: Settings) -> None:
    brief = replace(settings, idempotency_seconds=1)
    caller, ikey = fresh_caller(), _ikey()
    async with running_app(brief) as client:
        key = await Keys(client).key()
        first = await _post(client, key["key"], caller, ikey, lead="a")
        assert (await _post(client, key["key"], caller, ikey, lead="a")).headers[REPLAYED]
        await asyncio.sleep(1.2)  # past the window: the key is new again
        anew = await _post(client, key["key"], caller, ikey, lead="b")
        assert anew.status_code == 200, anew.text
        assert REPLAYED not in anew.headers
        assert anew.content != first.content
        assert (await connect(client, caller))["tags"] == {"lead": "b"}


async def test_invalid_idempotency_keys(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    for bad in ("x" * 256, "tab\there", "é"):
        response = await client.get(
            "/data_writing",
            params={"key": key["key"], "caller_number": caller, "a": "1", "idempotency_key": bad},
        )
        assert_error(response, 422, "invalid_idempotency_key")
    empty = await _post(client, key["key"], caller, "", a="1")
    assert_error(empty, 422, "invalid_idempotency_key")
    both = await client.get(
        "/data_writing",
        params={"key": key["key"], "caller_number": caller, "a": "1", "idempotency_key": "one"},
        headers={"Idempotency-Key": "two"},
    )
    assert_error(both, 422, "invalid_idempotency_key")
    longest = await _post(client, key["key"], caller, "k" * 255 + secrets.token_hex(0), a="1")
    assert longest.status_code == 200, longest.text
    assert "idempotency_key" not in longest.json()["tag_values"]  # never a tag


async def test_refusals_are_not_kept_a_retry_is_judged_again(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    """Only writes are kept for replay: a refused postback's retry is a new attempt."""
    caller, ikey = fresh_caller(), _ikey()
    uuid = f"late-{secrets.token_hex(4)}"
    params = {"key": key["key"], "call_uuid": uuid, "lead": "a"}
    headers = {"Idempotency-Key": ikey}
    assert_error(await client.get("/data_writing", params=params, headers=headers), 404,
                 "call_not_found")  # fmt: skip
    await connect(client, caller, uuid)
    found = await client.get("/data_writing", params=params, headers=headers)
    assert found.status_code == 200, found.text
    assert REPLAYED not in found.headers
    assert found.json()["call_uuid"] == uuid
    again = await client.get("/data_writing", params=params, headers=headers)
    assert again.headers[REPLAYED] == "true" and again.content == found.content


async def test_the_openapi_document_names_the_header(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for method in ("get", "post"):
        params = spec["paths"]["/data_writing"][method]["parameters"]
        assert {"name": "idempotency_key", "in": "query"}.items() <= next(
            p for p in params if p["name"] == "idempotency_key"
        ).items()
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params)


async def test_an_erase_deletes_the_callers_idempotency_records(
    client: httpx.AsyncClient, key: dict[str, Any], redis: RedisClient, settings: Settings
) -> None:
    caller, ikey = fresh_caller(), _ikey()
    assert (await _post(client, key["key"], caller, ikey, lead="a")).status_code == 200
    listed = keyspace(settings).replays(caller)
    names = await redis.smembers(listed)  # the record, kept for the window, and its set
    assert len(names) == 1 and await redis.exists(*names) == 1
    expiry = [await redis.execute_command("PEXPIRETIME", k) for k in (listed, *names)]
    assert expiry[0] == expiry[1] > 0  # the set lives as long as its longest-lived record
    erased = await client.post(f"/admin/callers/{caller}/erase", headers=ADMIN)
    assert erased.status_code == 200, erased.text
    assert await redis.exists(listed, *names) == 0
    again = await _post(client, key["key"], caller, ikey, lead="a")  # nothing to replay
    assert again.status_code == 200 and REPLAYED not in again.headers
