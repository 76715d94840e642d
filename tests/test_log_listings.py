"""GET /admin/postbacks and GET /admin/calls: filters, cursor paging, invalid filters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import ADMIN, ROUTING, Keys, fresh_caller
from logtools import open_sink
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.sink import Sink

STORED = "call not found, tags stored"
TICK = 0.003  # s between writes, so that each has its own millisecond and the order is known


@pytest.fixture
async def sink(settings: Settings, redis: Redis) -> AsyncIterator[Sink]:
    async with open_sink(settings, redis) as found:
        yield found


async def _list(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _all_pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await _list(client, path, **params, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= int(params.get("limit", 100))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_postback_listing_filters_and_pages(
    client: httpx.AsyncClient, keys: Keys, sink: Sink
) -> None:
    first = await keys.key()
    second = await keys.key(first["publisher_id"])
    other_publisher = await keys.key()
    caller, other = fresh_caller(), fresh_caller()
    for n in range(5):
        response = await client.get(
            "/data_writing", params={"key": first["key"], "caller_number": caller, "n": str(n)}
        )
        assert response.status_code == 200
        await asyncio.sleep(TICK)
    await client.get("/data_writing", params={"key": second["key"], "caller_number": caller})
    await asyncio.sleep(TICK)
    await client.get(
        "/data_writing", params={"key": second["key"], "caller_number": other, "x": "1"}
    )
    await asyncio.sleep(TICK)
    await client.get(
        "/data_writing", params={"key": other_publisher["key"], "caller_number": caller, "y": "1"}
    )
    await sink.drain()

    # Any number format names the caller.
    local = f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}"
    everything = await _list(client, "/admin/postbacks", caller_number=local)
    items = everything["items"]
    assert len(items) == 7 and everything["next_cursor"] is None
    assert all(item["caller_number"] == caller for item in items)
    received = [item["received_at"] for item in items]
    assert received == sorted(received, reverse=True)  # newest first
    assert [item["tags"] for item in items[-5:]] == [{"n": str(n)} for n in reversed(range(5))]
    assert set(items[0]) >= {
        "id", "received_at", "method", "publisher_id", "key_id", "key_prefix", "caller_raw",
        "caller_number", "call_uuid", "tags", "status", "error", "http_status", "remote_addr",
        "user_agent", "latency_us",
    }  # fmt: skip

    by_key = await _list(client, "/admin/postbacks", key_id=first["id"])
    assert [item["tags"]["n"] for item in by_key["items"]] == ["4", "3", "2", "1", "0"]
    by_publisher = await _list(client, "/admin/postbacks", publisher_id=first["publisher_id"])
    assert len(by_publisher["items"]) == 7
    both = await _list(client, "/admin/postbacks", key_id=second["id"], caller_number=other)
    assert [item["tags"] for item in both["items"]] == [{"x": "1"}]

    rejected = await _list(client, "/admin/postbacks", key_id=second["id"], status="rejected")
    assert [item["error"] for item in rejected["items"]] == ["no_tags"]
    assert (
        await _list(client, "/admin/postbacks", key_id=second["id"], status="no_tags")
    ) == rejected
    accepted = await _list(client, "/admin/postbacks", key_id=second["id"], status="accepted")
    assert len(accepted["items"]) == 1
    stored = await _list(client, "/admin/postbacks", key_id=second["id"], status=STORED)
    assert stored == accepted

    # Cursor paging: pages of 2, each newest first, together the whole list once.
    paged = await _all_pages(client, "/admin/postbacks", caller_number=caller, limit=2)
    assert paged == items
    # since is inclusive, until exclusive.
    window = await _list(
        client,
        "/admin/postbacks",
        caller_number=caller,
        since=items[4]["received_at"],
        until=items[1]["received_at"],
    )
    assert {item["id"] for item in window["items"]} >= {items[2]["id"], items[3]["id"]}
    assert items[0]["id"] not in {item["id"] for item in window["items"]}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"key_id": "abc"},
        {"publisher_id": "-1"},
        {"caller_number": "not a number"},
        {"since": "yesterday"},
        {"until": "2026-13-01"},
        {"cursor": "garbage!"},
        {"cursor": "WzEsMl0"},  # [1,2]: a cursor this API never gave
        {"cursor": "WzEsImFcdTAwMDAiXQ"},  # [1,"a\u0000"]: a NUL Postgres cannot hold
        {"since": "2026-11-29\x00"},
        {"status": "Not A Status"},
        {"colour": "blue"},
    ],
)
async def test_invalid_postback_filters_are_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/admin/postbacks", params=params, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"


async def test_listings_need_the_admin_token(client: httpx.AsyncClient) -> None:
    for path in ("/admin/postbacks", "/admin/calls"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers=ROUTING)).status_code == 401


async def test_call_listing_filters_and_pages(
    client: httpx.AsyncClient, keys: Keys, sink: Sink
) -> None:
    key = await keys.key()
    caller = fresh_caller()
    await client.get("/data_writing", params={"key": key["key"], "caller_number": caller, "a": "1"})
    uuids = []
    for n in range(3):
        response = await client.post(
            "/calls", json={"caller_number": caller, "campaign": f"c{n}"}, headers=ROUTING
        )
        assert response.status_code == 201
        uuids.append(response.json()["call_uuid"])
        await asyncio.sleep(TICK)
    await client.post(f"/calls/{uuids[0]}/end", headers=ROUTING)
    await sink.drain()

    listed = await _list(client, "/admin/calls", caller_number=caller)
    assert [item["call_uuid"] for item in listed["items"]] == uuids[::-1]
    assert listed["items"][-1]["state"] == "completed"
    assert listed["items"][-1]["tags"] == {"a": "1"}  # the first call claimed the tag
    assert listed["items"][-1]["tag_sources"]["a"]["key_id"] == key["id"]
    assert listed["items"][0]["ended_at"] is None

    assert (
        await _all_pages(client, "/admin/calls", caller_number=caller, limit=1) == (listed["items"])
    )
    done = await _list(client, "/admin/calls", caller_number=caller, state="completed")
    assert [item["call_uuid"] for item in done["items"]] == [uuids[0]]
    campaign = await _list(client, "/admin/calls", caller_number=caller, campaign="c1")
    assert [item["call_uuid"] for item in campaign["items"]] == [uuids[1]]

    for params in (
        {"state": "ringing"},
        {"limit": "5000"},
        {"key_id": "1"},
        {"campaign": "c\x001"},  # a NUL Postgres cannot hold
    ):
        response = await client.get("/admin/calls", params=params, headers=ADMIN)
        assert response.status_code == 422
        assert response.json()["error"] == "invalid_request"
