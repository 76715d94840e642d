"""The publisher API, GET|POST /data_writing: what a publisher sees, against real stores."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from apitools import assert_error, connect, end, get_call
from conftest import ADMIN, ROUTING, Keys, fresh_caller, running_app
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.keys import KeySpace
from calltags.store import open_store

STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"
COMPLETED = "completed call found, tags applied"

MIB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------


def secret_of(key: dict[str, Any] | str) -> str:
    return key if isinstance(key, str) else str(key["key"])


async def write(
    client: httpx.AsyncClient,
    key: dict[str, Any] | str,
    caller: str | None = None,
    *,
    call_uuid: str | None = None,
    headers: dict[str, str] | None = None,
    **tags: str,
) -> httpx.Response:
    """GET /data_writing with the key, the caller (or call_uuid) and the tags."""
    params: dict[str, str] = {"key": secret_of(key)}
    if caller is not None:
        params["caller_number"] = caller
    if call_uuid is not None:
        params["call_uuid"] = call_uuid
    params.update(tags)
    return await client.get("/data_writing", params=params, headers=headers)


async def written(
    client: httpx.AsyncClient,
    key: dict[str, Any] | str,
    caller: str | None = None,
    *,
    call_uuid: str | None = None,
    **tags: str,
) -> dict[str, Any]:
    """The 200 body of a postback that must succeed."""
    response = await write(client, key, caller, call_uuid=call_uuid, headers=None, **tags)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def parse_time(text: str) -> float:
    """An ISO 8601 UTC timestamp as epoch seconds."""
    assert text.endswith("Z"), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None and moment.utcoffset() == UTC.utcoffset(None)
    return moment.timestamp()


def assert_stored(body: dict[str, Any], caller: str, tags: dict[str, str]) -> None:
    assert body["status"] == STORED
    assert body["caller_number"] == caller
    assert body["tag_values"] == tags
    assert "expires_at" in body
    assert "call_uuid" not in body


def assert_applied(
    body: dict[str, Any], status: str, caller: str, call_uuid: str, tags: dict[str, str]
) -> None:
    assert body["status"] == status
    assert body["caller_number"] == caller
    assert body["call_uuid"] == call_uuid
    assert body["tag_values"] == tags
    assert "expires_at" not in body


async def until(deadline_s: float, probe: Any) -> float:
    """Call `probe` every 50 ms until it returns True; when the successful probe was sent,
    in seconds. Fails if a probe sent after `deadline_s` still sees the old state (the
    time a probe takes to answer does not count: a loaded machine answers slowly)."""
    started = time.monotonic()
    while True:
        sent = time.monotonic() - started
        if await probe():
            return sent
        assert sent <= deadline_s, f"not within {deadline_s} s"
        await asyncio.sleep(0.05)


# --- the drop-in example and the three statuses ----------------------------------------


async def test_drop_in_example_url(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    national = f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}"
    response = await client.get(
        f"/data_writing?key={key['key']}&caller_number={national}&prequalified=true"
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body == {
        "tag_values": {"prequalified": "true"},
        "caller_number": caller,
        "status": "call not found, tags stored",
        "expires_at": body["expires_at"],
    }


async def test_stored_claimed_live_completed(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()

    body = await written(client, key, caller, prequalified="true", source="form")
    assert_stored(body, caller, {"prequalified": "true", "source": "form"})

    call = await connect(client, caller)
    assert call["state"] == "in_progress"
    assert call["tags"] == {"prequalified": "true", "source": "form"}
    call_uuid = call["call_uuid"]

    body = await written(client, key, caller, stage="talking")
    assert_applied(body, LIVE, caller, call_uuid, {"stage": "talking"})
    assert (await get_call(client, call_uuid))["tags"] == {
        "prequalified": "true",
        "source": "form",
        "stage": "talking",
    }

    ended = await end(client, call_uuid)
    assert ended["state"] == "completed"

    body = await written(client, key, caller, sale="yes")
    assert_applied(body, COMPLETED, caller, call_uuid, {"sale": "yes"})
    final = await get_call(client, call_uuid)
    assert final["state"] == "completed"
    assert final["tags"] == {
        "prequalified": "true",
        "source": "form",
        "stage": "talking",
        "sale": "yes",
    }

    # Everything went to the first call: the caller's next call starts clean.
    assert (await connect(client, caller))["tags"] == {}


async def test_past_cutoff_tags_wait_for_the_next_call(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    publisher = await keys.publisher()
    no_cutoff = await keys.key(publisher, end_call_cutoff_seconds=0)
    one_second = await keys.key(publisher, end_call_cutoff_seconds=1)
    hour = await keys.key(publisher)  # default cut-off, 3600 s
    caller = fresh_caller()
    call_uuid = (await connect(client, caller))["call_uuid"]
    await end(client, call_uuid)

    assert_stored(await written(client, no_cutoff, caller, a="1"), caller, {"a": "1"})
    body = await written(client, one_second, caller, b="1")
    assert_applied(body, COMPLETED, caller, call_uuid, {"b": "1"})

    await asyncio.sleep(1.1)  # the 1 s cut-off has passed, the 1 h one has not

    assert_stored(await written(client, one_second, caller, c="1"), caller, {"c": "1"})
    body = await written(client, hour, caller, d="1")
    assert_applied(body, COMPLETED, caller, call_uuid, {"d": "1"})

    assert (await get_call(client, call_uuid))["tags"] == {"b": "1", "d": "1"}
    assert (await connect(client, caller))["tags"] == {"a": "1", "c": "1"}


async def test_posts_go_to_the_live_call_not_the_completed_one(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    first = (await connect(client, caller))["call_uuid"]
    await end(client, first)
    second = (await connect(client, caller))["call_uuid"]
    body = await written(client, key, caller, x="1")
    assert_applied(body, LIVE, caller, second, {"x": "1"})
    assert (await get_call(client, first))["tags"] == {}
    assert (await get_call(client, second))["tags"] == {"x": "1"}


# --- call_uuid addressing ----------------------------------------------------------------


async def test_call_uuid_addresses_live_and_completed_calls(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    older = f"call-{uuid.uuid4()}"
    newer = f"call-{uuid.uuid4()}"
    await connect(client, caller, older)
    await end(client, older)
    await connect(client, caller, newer)

    body = await written(client, key, call_uuid=older, outcome="sold")
    assert_applied(body, COMPLETED, caller, older, {"outcome": "sold"})
    body = await written(client, key, call_uuid=newer, stage="ivr")
    assert_applied(body, LIVE, caller, newer, {"stage": "ivr"})
    # call_uuid with the matching caller number in another format works too.
    body = await written(client, key, caller[2:], call_uuid=newer, agent="7")
    assert_applied(body, LIVE, caller, newer, {"agent": "7"})

    assert (await get_call(client, older))["tags"] == {"outcome": "sold"}
    assert (await get_call(client, newer))["tags"] == {"stage": "ivr", "agent": "7"}


async def test_unknown_call_uuid_is_404(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    response = await write(client, key, call_uuid=f"nope-{uuid.uuid4()}", a="1")
    assert_error(response, 404, "call_not_found")
    response = await write(client, key, call_uuid="not a valid uuid / at all", a="1")
    assert_error(response, 404, "call_not_found")

    # A real call_uuid with somebody else's number is not that caller's call.
    caller = fresh_caller()
    call_uuid = (await connect(client, caller))["call_uuid"]
    response = await write(client, key, fresh_caller(), call_uuid=call_uuid, a="1")
    assert_error(response, 404, "call_not_found")
    assert (await get_call(client, call_uuid))["tags"] == {}


# --- storage duration ------------------------------------------------------------------


def pending_key(settings: Settings, caller: str) -> str:
    return KeySpace(settings.redis_prefix, settings.log_shards).pending(caller)


async def test_expires_at_is_now_plus_storage_duration(
    client: httpx.AsyncClient, keys: Keys, redis: Redis, settings: Settings
) -> None:
    key = await keys.key(storage_duration_seconds=600)
    caller = fresh_caller()
    before = time.time()
    body = await written(client, key, caller, a="1")
    after = time.time()
    expires = parse_time(body["expires_at"])
    assert before + 600 - 2 <= expires <= after + 600 + 2
    assert 595_000 <= await redis.pttl(pending_key(settings, caller)) <= 600_000


async def test_later_post_extends_but_never_shortens_the_wait(
    client: httpx.AsyncClient, keys: Keys, redis: Redis, settings: Settings
) -> None:
    publisher = await keys.publisher()
    ten_minutes = await keys.key(publisher, storage_duration_seconds=600)
    twenty_minutes = await keys.key(publisher, storage_duration_seconds=1200)
    one_minute = await keys.key(publisher, storage_duration_seconds=60)
    caller = fresh_caller()
    name = pending_key(settings, caller)

    await written(client, ten_minutes, caller, a="1")
    assert 595_000 <= await redis.pttl(name) <= 600_000

    now = time.time()
    body = await written(client, twenty_minutes, caller, b="1")
    assert 1_195_000 <= await redis.pttl(name) <= 1_200_000
    assert abs(parse_time(body["expires_at"]) - (now + 1200)) <= 3

    now = time.time()
    body = await written(client, one_minute, caller, c="1")
    assert 1_190_000 <= await redis.pttl(name) <= 1_200_000
    # The answer tells when the tags really expire: the longer wait, not 60 s.
    assert abs(parse_time(body["expires_at"]) - (now + 1200)) <= 3

    assert (await connect(client, caller))["tags"] == {"a": "1", "b": "1", "c": "1"}


async def test_pending_tags_vanish_after_the_storage_duration(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    key: dict[str, Any],
) -> None:
    store = open_store(
        redis, KeySpace(settings.redis_prefix, settings.log_shards), settings.call_ttl_seconds
    )
    expiring, claimed = fresh_caller(), fresh_caller()
    for caller in (expiring, claimed):
        result = await store.write_tags(
            caller,
            {"lead": "1"},
            publisher_id=key["publisher_id"],
            key_id=key["id"],
            cutoff_seconds=3600,
            storage_seconds=1,
        )
        assert result.status == STORED
        assert result.expires_at_ms is not None
        assert abs(result.expires_at_ms / 1000 - (time.time() + 1)) <= 1
    assert 0 < await redis.pttl(pending_key(settings, expiring)) <= 1000

    # Inside the storage duration a connect claims them ...
    assert (await connect(client, claimed))["tags"] == {"lead": "1"}
    await asyncio.sleep(1.2)
    # ... after it they are gone.
    assert (await connect(client, expiring))["tags"] == {}
    assert await redis.exists(pending_key(settings, expiring)) == 0


# --- where parameters come from --------------------------------------------------------


async def test_parameters_from_form_body(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    response = await client.post(
        "/data_writing",
        data={"key": key["key"], "caller_number": caller, "source": "landing page"},
    )
    assert response.status_code == 200, response.text
    assert_stored(response.json(), caller, {"source": "landing page"})


async def test_parameters_from_json_body(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    response = await client.post(
        "/data_writing",
        json={"key": key["key"], "caller_number": caller, "source": "api"},
    )
    assert response.status_code == 200, response.text
    assert_stored(response.json(), caller, {"source": "api"})


async def test_json_body_without_content_type(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    """Browsers posting cross-origin without a preflight send JSON as text/plain."""
    caller = fresh_caller()
    response = await client.post(
        "/data_writing",
        content=orjson.dumps({"key": key["key"], "caller_number": caller, "via": "beacon"}),
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200, response.text
    assert_stored(response.json(), caller, {"via": "beacon"})


async def test_body_wins_over_query(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    query = {"key": key["key"], "caller_number": caller, "color": "red", "size": "s"}
    response = await client.post("/data_writing", params=query, json={"color": "blue"})
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == {"color": "blue", "size": "s"}

    response = await client.post("/data_writing", params=query, data={"color": "green"})
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == {"color": "green", "size": "s"}

    # The body's key and caller win too.
    other = fresh_caller()
    response = await client.post(
        "/data_writing",
        params={"key": "ct_not-a-key", "caller_number": caller},
        json={"key": key["key"], "caller_number": other, "a": "1"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["caller_number"] == other


async def test_key_in_path(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    response = await client.get(
        f"/data_writing/{key['key']}", params={"caller_number": caller, "a": "1"}
    )
    assert response.status_code == 200, response.text
    assert_stored(response.json(), caller, {"a": "1"})

    response = await client.post(
        f"/data_writing/{key['key']}", json={"caller_number": caller, "b": "2"}
    )
    assert response.status_code == 200, response.text
    assert_stored(response.json(), caller, {"b": "2"})

    response = await client.get("/data_writing/ct_not-a-key", params={"caller_number": caller})
    assert_error(response, 401, "invalid_key")


async def test_repeated_parameter_last_wins(
    client: httpx.AsyncClient, keys: Keys, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    response = await client.get(
        "/data_writing",
        params=[("key", key["key"]), ("caller_number", caller), ("t", "1"), ("t", "2")],
    )
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == {"t": "2"}

    response = await client.post(
        "/data_writing",
        content=f"key={key['key']}&caller_number={caller[1:]}&u=first&u=last".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == {"u": "last"}

    # A tag posted again while pending: the later post's value (and source) wins.
    other_key = await keys.key(key["publisher_id"])
    await written(client, other_key, caller, t="3")
    call = await connect(client, caller)
    assert call["tags"] == {"t": "3", "u": "last"}
    assert call["tag_sources"]["t"]["key_id"] == other_key["id"]
    assert call["tag_sources"]["u"]["key_id"] == key["id"]


async def test_tag_names_fold_to_lower_case(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    body = await written(client, key, caller, Campaign_ID="Spring-Sale", UTM_Source="Google")
    assert body["tag_values"] == {"campaign_id": "Spring-Sale", "utm_source": "Google"}
    call = await connect(client, caller)
    assert call["tags"] == {"campaign_id": "Spring-Sale", "utm_source": "Google"}


async def test_json_numbers_and_booleans_become_text(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    response = await client.post(
        "/data_writing",
        json={
            "key": key["key"],
            "caller_number": caller,
            "age": 42,
            "score": 1.5,
            "qualified": True,
            "opted_out": False,
        },
    )
    assert response.status_code == 200, response.text
    expected = {"age": "42", "score": "1.5", "qualified": "true", "opted_out": "false"}
    assert response.json()["tag_values"] == expected
    assert (await connect(client, caller))["tags"] == expected


async def test_tag_values_round_trip(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    tags = {
        "pipes": "a|b|c",
        "colons": "1:2:3",
        "unicode": "café ☎ 日本",
        "empty": "",
        "json_like": '{"x": [1, 2]}',
        "slash": "https://example.com/a?b=c",
        "max": "é" * 512,  # 1024 bytes
    }
    response = await client.post(
        "/data_writing", json={"key": key["key"], "caller_number": caller, **tags}
    )
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == tags
    call = await connect(client, caller)
    assert call["tags"] == tags
    # Applied to the live call they survive as well.
    response = await client.post(
        "/data_writing", json={"key": key["key"], "caller_number": caller, **tags, "extra": "x"}
    )
    assert response.status_code == 200, response.text
    assert (await get_call(client, call["call_uuid"]))["tags"] == {**tags, "extra": "x"}


async def test_tag_limits_accept_the_boundaries(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    tags = {f"t{n:03d}": "v" for n in range(99)}
    tags["n" * 64] = "x" * 1024
    body = await written(client, key, caller, **tags)
    assert len(body["tag_values"]) == 100


# --- errors ------------------------------------------------------------------------------


async def test_missing_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/data_writing", params={"caller_number": fresh_caller(), "a": "1"})
    assert_error(response, 401, "missing_key")
    response = await client.post("/data_writing", json={"caller_number": fresh_caller(), "a": "1"})
    assert_error(response, 401, "missing_key")
    response = await client.get("/data_writing", params={"key": "", "caller_number": "2125550100"})
    assert_error(response, 401, "missing_key")


async def test_invalid_key(client: httpx.AsyncClient) -> None:
    for secret in ("ct_definitely-not-a-key", "x", "ct_" + "a" * 300):
        response = await write(client, secret, fresh_caller(), a="1")
        assert_error(response, 401, "invalid_key")


async def test_missing_caller(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    assert_error(await write(client, key, a="1"), 422, "missing_caller")
    assert_error(await write(client, key, "", a="1"), 422, "missing_caller")
    assert_error(await write(client, key, call_uuid="", a="1"), 422, "missing_caller")


@pytest.mark.parametrize(
    "raw",
    ["not-a-phone", "12", "+1 212 555 0100 999 999", "++--", "1" * 80, "555-CALL-NOW-PLEASE"],
)
async def test_invalid_caller_number_echoes_the_input(
    client: httpx.AsyncClient, key: dict[str, Any], raw: str
) -> None:
    message = assert_error(await write(client, key, raw, a="1"), 422, "invalid_caller_number")
    assert raw in message


async def test_no_tags(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    assert_error(await write(client, key, fresh_caller()), 422, "no_tags")
    response = await client.post(
        "/data_writing", json={"key": key["key"], "caller_number": fresh_caller()}
    )
    assert_error(response, 422, "no_tags")


@pytest.mark.parametrize(
    "tags",
    [
        {"bad name": "x"},
        {"b@d": "x"},
        {"": "x"},
        {"n" * 65: "x"},
        {"ok": "x" * 1025},
        {"ok": "é" * 513},  # 1026 bytes in UTF-8
    ],
    ids=["space", "symbol", "empty", "long-name", "long-value", "long-utf8-value"],
)
async def test_invalid_tag(
    client: httpx.AsyncClient, key: dict[str, Any], tags: dict[str, str]
) -> None:
    caller = fresh_caller()
    response = await client.get(
        "/data_writing", params={"key": key["key"], "caller_number": caller, **tags}
    )
    assert_error(response, 422, "invalid_tag")
    # Nothing was written.
    assert (await connect(client, caller))["tags"] == {}


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], None], ids=["object", "list", "null"])
async def test_invalid_tag_json_values(
    client: httpx.AsyncClient, key: dict[str, Any], value: Any
) -> None:
    response = await client.post(
        "/data_writing",
        json={"key": key["key"], "caller_number": fresh_caller(), "ok": "1", "meta": value},
    )
    assert_error(response, 422, "invalid_tag")


async def test_too_many_tags(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    tags = {f"t{n}": "v" for n in range(101)}
    response = await client.post(
        "/data_writing", json={"key": key["key"], "caller_number": caller, **tags}
    )
    assert_error(response, 422, "too_many_tags")
    assert (await connect(client, caller))["tags"] == {}


async def test_payload_too_large(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    query = {"key": key["key"], "caller_number": fresh_caller()}
    head = orjson.dumps({"a": "1"})
    # Exactly 1 MiB is accepted ...
    body = head[:-1] + b" " * (MIB - len(head)) + b"}"
    assert len(body) == MIB
    response = await client.post(
        "/data_writing", params=query, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    # ... one byte more is not, whether its length is declared or streamed.
    body = head[:-1] + b" " * (MIB + 1 - len(head)) + b"}"
    response = await client.post(
        "/data_writing", params=query, content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a="
        for _ in range(17):
            yield b"x" * 65536

    response = await client.post(
        "/data_writing",
        params=query,
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"caller_number": ', "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"just a string"', "application/json"),
        (b'{"a": "\\ud800"}', "application/json"),
        (b"\xff\xfe=1", "application/x-www-form-urlencoded"),
    ],
    ids=["truncated", "array", "string", "lone-surrogate", "not-utf8-form"],
)
async def test_invalid_body(
    client: httpx.AsyncClient, key: dict[str, Any], content: bytes, content_type: str
) -> None:
    response = await client.post(
        "/data_writing",
        params={"key": key["key"], "caller_number": fresh_caller()},
        content=content,
        headers={"content-type": content_type},
    )
    assert_error(response, 400, "invalid_body")


# --- CORS --------------------------------------------------------------------------------

ORIGIN = "https://leads.example.com"


@pytest.mark.parametrize("path", ["/data_writing", "/data_writing/ct_anything"])
async def test_cors_preflight(client: httpx.AsyncClient, path: str) -> None:
    response = await client.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code in (200, 204), response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed_headers or "*" in allowed_headers


async def test_cors_on_answers(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    cors = {"Origin": ORIGIN}
    caller = fresh_caller()
    responses = [
        await write(client, key, caller, a="1", headers=cors),
        await client.post(
            "/data_writing",
            json={"key": key["key"], "caller_number": caller, "b": "2"},
            headers=cors,
        ),
        await client.post(
            f"/data_writing/{key['key']}",
            data={"caller_number": caller, "c": "3"},
            headers=cors,
        ),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers.get_list("vary") == ["Origin"]

    errors = [
        (await write(client, "ct_nope", caller, a="1", headers=cors), 401),
        (await write(client, key, "nope", a="1", headers=cors), 422),
        (await client.post("/data_writing", content=b"{", headers=cors), 400),
    ]
    for response, status in errors:
        assert response.status_code == status, response.text
        assert response.headers["access-control-allow-origin"] == "*"


async def test_server_postbacks_have_no_cors_headers_and_head_writes_nothing(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    response = await write(client, key, caller, a="1")
    assert response.status_code == 200, response.text
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["vary"] == "Origin"  # the answer differs by Origin
    assert response.headers["content-type"] == "application/json"

    head = await client.head(
        "/data_writing", params={"key": key["key"], "caller_number": caller, "b": "2"}
    )
    assert head.status_code == 405
    assert head.headers["allow"] == "GET, POST, OPTIONS"
    call = await connect(client, caller)
    assert call["tags"] == {"a": "1"}  # b was not written


# --- caller number formats -------------------------------------------------------------


async def test_number_formats_name_the_same_caller(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()  # +1212NXXXXXX
    area, exchange, line = caller[2:5], caller[5:8], caller[8:]
    formats = [
        f"({area}) {exchange}-{line}",
        f"{area}-{exchange}-{line}",
        f"1{area}{exchange}{line}",
        f"+1 {area} {exchange} {line}",
        f"tel:+1{area}{exchange}{line}",
        caller,
    ]
    for n, raw in enumerate(formats):
        body = await written(client, key, raw, **{f"f{n}": raw})
        assert body["caller_number"] == caller, raw
    call = await connect(client, formats[0])
    assert call["caller_number"] == caller
    assert call["tags"] == {f"f{n}": raw for n, raw in enumerate(formats)}


# --- pause and revoke --------------------------------------------------------------------


async def test_pause_resume_and_revoke_take_effect_within_a_second(
    client: httpx.AsyncClient, key: dict[str, Any]
) -> None:
    caller = fresh_caller()
    await written(client, key, caller, a="1")  # the key is now in every cache

    async def status_is(status: int, code: str | None = None) -> bool:
        response = await write(client, key, caller, a="1")
        if response.status_code != status:
            return False
        return code is None or bool(response.json()["error"] == code)

    response = await client.patch(f"/admin/keys/{key['id']}", json={"paused": True}, headers=ADMIN)
    assert response.status_code == 200, response.text
    await until(1.1, lambda: status_is(403, "key_paused"))
    assert_error(await write(client, key, caller, a="1"), 403, "key_paused")

    response = await client.patch(f"/admin/keys/{key['id']}", json={"paused": False}, headers=ADMIN)
    assert response.status_code == 200, response.text
    await until(1.1, lambda: status_is(200))

    response = await client.delete(f"/admin/keys/{key['id']}", headers=ADMIN)
    assert response.status_code == 200, response.text
    await until(1.1, lambda: status_is(401, "invalid_key"))
    assert_error(await write(client, key, caller, a="1"), 401, "invalid_key")


# --- attribution -------------------------------------------------------------------------


def assert_source(
    source: dict[str, Any], key: dict[str, Any], not_before: float, not_after: float
) -> None:
    assert set(source) == {"publisher_id", "key_id", "set_at"}
    assert source["publisher_id"] == key["publisher_id"]
    assert source["key_id"] == key["id"]
    assert not_before - 1 <= parse_time(source["set_at"]) <= not_after + 1


async def test_tag_sources_name_publisher_key_and_time(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    acme = await keys.key(await keys.publisher("Acme Leads"))
    zenith = await keys.key(await keys.publisher("Zenith Media"))
    caller = fresh_caller()

    before = time.time()
    await written(client, acme, caller, prequalified="true", shared="acme")
    await written(client, zenith, caller, zip="10001")
    call = await connect(client, caller)
    await written(client, zenith, caller, shared="zenith", stage="live")
    after = time.time()

    call = await get_call(client, call["call_uuid"])
    assert call["tags"] == {
        "prequalified": "true",
        "zip": "10001",
        "shared": "zenith",
        "stage": "live",
    }
    assert set(call["tag_sources"]) == set(call["tags"])
    assert_source(call["tag_sources"]["prequalified"], acme, before, after)
    assert_source(call["tag_sources"]["zip"], zenith, before, after)
    assert_source(call["tag_sources"]["stage"], zenith, before, after)
    # A tag a second publisher overwrote is that publisher's now.
    assert_source(call["tag_sources"]["shared"], zenith, before, after)
    # Times tell the order the tags were set in.
    sources = call["tag_sources"]
    assert parse_time(sources["prequalified"]["set_at"]) <= parse_time(sources["stage"]["set_at"])


# --- a store down ------------------------------------------------------------------------


async def test_redis_down_is_503_never_500(settings: Settings, key: dict[str, Any]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # nothing listens on it once the socket closes
    down = replace(settings, redis_url=f"redis://127.0.0.1:{closed_port}/0")
    async with running_app(down) as client:
        response = await write(client, key, fresh_caller(), a="1")
        assert_error(response, 503, "unavailable")
        assert response.headers.get("retry-after")
        response = await client.post(
            "/calls", json={"caller_number": fresh_caller()}, headers=ROUTING
        )
        assert_error(response, 503, "unavailable")
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["redis"] != "ok"
        assert response.json()["checks"]["postgres"] == "ok"
