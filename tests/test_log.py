"""The durable postback log end to end: /data_writing -> Redis streams -> the workers'
sink -> Postgres, call records, and back-pressure when the backlog is full."""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from conftest import ADMIN, ROUTING, Keys, fresh_caller, running_app
from logtools import eventually, fetch, keyspace, open_sink, own_prefix, stream_lengths
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.sink import Sink
from calltags.store import SNAPSHOT_FIELD

STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"
COMPLETED = "completed call found, tags applied"


@pytest.fixture
async def sink(settings: Settings, redis: Redis) -> AsyncIterator[Sink]:
    async with open_sink(settings, redis) as found:
        yield found


async def test_every_postback_accepted_or_rejected_is_one_row(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str, redis: Redis
) -> None:
    key = await keys.key(end_call_cutoff_seconds=600)
    paused = await keys.key(key["publisher_id"])
    response = await client.patch(
        f"/admin/keys/{paused['id']}", json={"paused": True}, headers=ADMIN
    )
    assert response.status_code == 200
    marker = f"log-test-{secrets.token_hex(4)}"
    headers = {"User-Agent": marker}
    secret = key["key"]
    caller = fresh_caller()
    local = f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}"  # the same caller, US format

    requests: list[tuple[str, dict[str, str], dict[str, Any] | None]] = [
        ("GET", {"key": secret, "caller_number": fresh_caller(), "n": str(n)}, None)
        for n in range(10)
    ]
    requests += [
        ("GET", {"key": secret, "caller_number": local, "first": "1"}, None),
        ("POST", {}, {"key": secret, "caller_number": caller, "second": 2}),
        ("GET", {"key": "ct_not-a-real-key", "caller_number": caller, "x": "1"}, None),
        ("GET", {"caller_number": caller, "x": "1"}, None),
        ("GET", {"key": secret, "x": "1"}, None),
        ("GET", {"key": secret, "caller_number": "not a number", "x": "1"}, None),
        ("GET", {"key": secret, "caller_number": caller}, None),
        ("GET", {"key": secret, "caller_number": caller, "bad name!": "1"}, None),
        ("GET", {"key": paused["key"], "caller_number": caller, "x": "1"}, None),
        ("GET", {"key": secret, "call_uuid": "no-such-call", "x": "1"}, None),
    ]
    seen: Counter[tuple[int, str]] = Counter()
    for method, params, body in requests:
        response = await client.request(
            method, "/data_writing", params=params, json=body, headers=headers
        )
        data = response.json()
        seen[(response.status_code, data.get("status") or data.get("error"))] += 1
    assert seen[(200, STORED)] == 12
    assert len(seen) == 9  # every rejection above is a different error

    await sink.drain()
    rows = await fetch(database_url, "SELECT * FROM postbacks WHERE user_agent = $1", marker)
    assert len(rows) == len(requests)
    assert len({row["id"] for row in rows}) == len(requests)
    assert Counter((row["http_status"], row["status"] or row["error"]) for row in rows) == seen

    first = next(row for row in rows if row["tags"] == '{"first": "1"}')
    assert first["caller_raw"] == local
    assert first["caller_number"] == caller
    assert (first["publisher_id"], first["key_id"]) == (key["publisher_id"], key["id"])
    assert (first["method"], first["remote_addr"]) == ("GET", "203.0.113.9")
    assert first["error"] is None and first["latency_us"] > 0
    posted = next(row for row in rows if row["method"] == "POST")
    assert orjson.loads(posted["tags"]) == {"second": "2"}
    unknown = next(row for row in rows if row["error"] == "invalid_key")
    assert unknown["key_id"] is None and unknown["key_prefix"] == "ct_not-a"

    # Moved means gone from Redis, and a second pass finds nothing to add.
    assert await stream_lengths(redis, sink.keys) == 0
    assert await sink.drain() == 0
    rows = await fetch(database_url, "SELECT id FROM postbacks WHERE user_agent = $1", marker)
    assert len(rows) == len(requests)


async def test_call_record_follows_the_call_and_late_tags(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str, redis: Redis
) -> None:
    key = await keys.key(end_call_cutoff_seconds=600)
    caller = fresh_caller()

    async def post(**tags: str) -> str:
        response = await client.get(
            "/data_writing", params={"key": key["key"], "caller_number": caller, **tags}
        )
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    async def record() -> asyncpg.Record:
        await sink.drain()
        rows = await fetch(database_url, "SELECT * FROM calls WHERE caller_number = $1", caller)
        assert len(rows) == 1
        return rows[0]

    assert await post(source="early") == STORED
    response = await client.post(
        "/calls",
        json={"caller_number": caller, "publisher_id": "pub-9", "campaign": "solar"},
        headers=ROUTING,
    )
    assert response.status_code == 201
    call = response.json()
    row = await record()
    assert row["call_uuid"] == call["call_uuid"]
    assert (row["state"], row["ended_at"]) == ("in_progress", None)
    assert (row["publisher_id"], row["campaign"]) == ("pub-9", "solar")
    assert orjson.loads(row["tags"]) == {"source": "early"}

    assert await post(live="yes") == LIVE
    response = await client.post(f"/calls/{call['call_uuid']}/end", headers=ROUTING)
    assert response.status_code == 200
    assert await post(late="1") == COMPLETED
    row = await record()
    assert row["state"] == "completed" and row["ended_at"] is not None
    assert orjson.loads(row["tags"]) == {"source": "early", "live": "yes", "late": "1"}
    sources = orjson.loads(row["tag_sources"])
    assert sources["late"]["key_id"] == key["id"]
    assert sources["late"]["publisher_id"] == key["publisher_id"]
    assert row["version"] == 4  # connect, live tag, end, late tag
    assert row["updated_at"] >= row["ended_at"]

    # A stale snapshot (say, redelivered from a shard that lagged) changes nothing.
    stale = {"u": call["call_uuid"], "n": caller, "s": "in_progress", "b": "1", "t": {}, "v": 1}
    await redis.xadd(sink.keys.call_log_shard(0), {SNAPSHOT_FIELD: orjson.dumps(stale)})
    assert await record() == row

    response = await client.get("/admin/calls", params={"caller_number": caller}, headers=ADMIN)
    assert response.status_code == 200
    (listed,) = response.json()["items"]
    assert listed["call_uuid"] == call["call_uuid"]
    assert listed["state"] == "completed"
    assert listed["tags"] == {"source": "early", "live": "yes", "late": "1"}


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def test_full_backlog_refuses_postbacks_until_the_workers_catch_up(
    settings: Settings, redis: Redis, key: dict[str, Any]
) -> None:
    bounded = replace(own_prefix(settings, "bp"), log_max_backlog=3)
    params = {"key": key["key"], "caller_number": fresh_caller(), "tag": "v"}
    async with running_app(bounded) as http:
        for _ in range(3):
            assert (await http.get("/data_writing", params=params)).status_code == 200

        async def refusing() -> bool:
            ready = (await http.get("/readyz")).json()
            return ready["log"]["accepting"] is False

        await eventually(refusing, timeout=5)  # measured in the background, every 0.25 s
        response = await http.get("/data_writing", params=params)
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        assert response.headers["retry-after"] == "1"

        ready = await http.get("/readyz")
        assert ready.status_code == 200  # still ready: routing goes on
        assert ready.json()["log"]["backlog"] == 3
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert _metric(text, 'calltags_log_backlog_entries{stream="postbacks"}') == 3
        assert _metric(text, "calltags_log_backlog_full") == 1
        assert _metric(text, "calltags_log_max_backlog_entries") == 3
        assert _metric(text, "calltags_postbacks_refused_total") >= 1
        assert _metric(text, "calltags_log_oldest_entry_age_seconds") > 0

        async with open_sink(bounded, redis) as sink:
            assert await sink.drain() == 3  # the refused post left no entry
        assert await stream_lengths(redis, keyspace(bounded)) == 0

        async def accepting() -> bool:
            return (await http.get("/data_writing", params=params)).status_code == 200

        await eventually(accepting, timeout=5)
        text = (await http.get("/metrics")).text
        assert _metric(text, "calltags_log_backlog_full") == 0
