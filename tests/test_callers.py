"""A caller's data: GET /admin/callers/{number}, retracting pending tags, and erasing a
caller everywhere (Redis, the log entries still in the streams, Postgres), against real
stores, single node and cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from apitools import assert_error, connect, end
from conftest import ADMIN, ROUTING, Keys, fresh_caller, running_app, written_locally
from logtools import entry, fetch, fill, keyspace

from calltags.config import Secret, Settings
from calltags.erasure import number_hash
from calltags.sink import Sink
from calltags.store import RedisClient
from calltags.times import now_ms


async def post(client: httpx.AsyncClient, key: dict[str, Any], caller: str, **tags: str) -> None:
    data = {"key": key["key"], "caller_number": caller, **tags}
    response = await client.post("/data_writing", data=data)
    assert response.status_code == 200, response.text


def caller_path(number: str, tail: str = "") -> str:
    return f"/admin/callers/{quote(number, safe='')}{tail}"


async def caller(client: httpx.AsyncClient, number: str) -> dict[str, Any]:
    response = await client.get(caller_path(number), headers=ADMIN)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def test_a_callers_pending_tags_and_calls(client: httpx.AsyncClient, keys: Keys) -> None:
    number = fresh_caller()
    first = await keys.key(end_call_cutoff_seconds=0)
    second = await keys.key(end_call_cutoff_seconds=0)
    assert await caller(client, number) == {"caller_number": number, "pending": [], "calls": []}
    call = await connect(client, number)
    await post(client, first, number, live="yes")  # to the live call
    await end(client, call["call_uuid"])
    await post(client, first, number, age="42")  # the cut-off is over: pending
    await post(client, second, number, zip="10001")
    found = await caller(client, written_locally(number))  # any format
    assert found["caller_number"] == number
    pending = {tag["name"]: tag for tag in found["pending"]}
    assert set(pending) == {"age", "zip"}
    assert pending["age"]["value"] == "42"
    assert (pending["age"]["publisher_id"], pending["age"]["key_id"]) == (
        first["publisher_id"],
        first["id"],
    )
    assert pending["zip"]["key_id"] == second["id"]
    assert all(tag["expires_at"] > tag["set_at"] for tag in pending.values())
    assert [c["call_uuid"] for c in found["calls"]] == [call["call_uuid"]]
    assert found["calls"][0]["tags"] == {"live": "yes"}
    assert found["calls"][0]["state"] == "completed"


async def test_a_bad_number_is_422(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(caller_path("12"), headers=ADMIN), 422, "invalid_caller_number")
    assert_error(await client.get(caller_path(fresh_caller())), 401, "unauthorized")


async def test_retract_pending_tags(client: httpx.AsyncClient, keys: Keys) -> None:
    number = fresh_caller()
    first, second = await keys.key(), await keys.key()
    await post(client, first, number, a="1", b="2")
    await post(client, second, number, c="3")
    path = caller_path(number, "/pending")
    one = await client.delete(path, params={"publisher_id": first["publisher_id"]}, headers=ADMIN)
    assert one.json() == {"caller_number": number, "retracted": 2}
    assert [tag["name"] for tag in (await caller(client, number))["pending"]] == ["c"]
    # Retracted tags are not claimed by the next call.
    await post(client, first, number, d="4")
    rest = await client.delete(path, headers=ADMIN)
    assert rest.json() == {"caller_number": number, "retracted": 2}
    assert (await caller(client, number))["pending"] == []
    call = await connect(client, number)
    assert call["tags"] == {}
    again = await client.delete(path, headers=ADMIN)
    assert again.json()["retracted"] == 0
    bad = await client.delete(path, params={"publisher_id": "x"}, headers=ADMIN)
    assert_error(bad, 422, "invalid_request")


async def _redis_holding(redis: RedisClient, prefix: str, needles: list[bytes]) -> list[str]:
    """The keys under `prefix` whose name or any value holds one of `needles`."""
    found = []
    async for name in redis.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await redis.type(name)).decode()
        values: list[bytes] = [name]
        if kind == "string":
            values.append(await redis.get(name) or b"")
        elif kind == "hash":
            values += [part for pair in (await redis.hgetall(name)).items() for part in pair]
        elif kind == "stream":
            for _, fields in await redis.xrange(name):
                values += list(fields.values())
        elif kind in ("set", "zset", "list"):
            values.append(repr(await redis.dump(name)).encode())
        if any(needle in value for value in values for needle in needles):
            found.append(name.decode())
    return found


async def test_erase_leaves_nothing_findable(
    client: httpx.AsyncClient,
    keys: Keys,
    sink: Sink,
    settings: Settings,
    redis: RedisClient,
) -> None:
    number = fresh_caller()
    local = written_locally(number)
    key = await keys.key(end_call_cutoff_seconds=0)
    call = await connect(client, number)
    await post(client, key, number, secret_one="alpha-value")
    await end(client, call["call_uuid"])
    await sink.drain()  # these reach Postgres before the erase
    await post(client, key, local, secret_two="beta-value")  # pending; its entry stays in Redis
    refused = await client.post(
        "/data_writing", data={"key": key["key"], "caller_number": number, "bad name": "x"}
    )
    assert refused.status_code == 422
    other = fresh_caller()
    await post(client, key, other, kept="gamma-value")  # another caller: untouched

    erased = await client.post(caller_path(local, "/erase"), headers=ADMIN)
    assert erased.status_code == 200, erased.text
    counts = erased.json()
    salt = (await fetch(settings.database_url or "", "SELECT salt FROM erasure_salt"))[0][0]
    assert counts["number_hash"] == number_hash(salt.encode(), number)
    assert (counts["pending_tags"], counts["calls_in_redis"]) == (1, 1)
    assert counts["log_entries"] >= 2  # the pending post and the refusal, not yet flushed
    assert counts["postbacks"] >= 1 and counts["call_records"] == 1

    needles = [number.encode(), local.encode(), b"alpha-value", b"beta-value"]
    assert await _redis_holding(redis, settings.redis_prefix, needles) == []
    await sink.drain()  # the redacted entries reach Postgres
    assert await _redis_holding(redis, settings.redis_prefix, needles) == []

    # The API finds nothing by the number.
    assert await caller(client, number) == {"caller_number": number, "pending": [], "calls": []}
    for listing in ("/admin/postbacks", "/admin/calls"):
        listed = await client.get(listing, params={"caller_number": number}, headers=ADMIN)
        assert listed.json()["items"] == [], listing
    gone = await client.get(f"/calls/{call['call_uuid']}", headers=ROUTING)
    assert_error(gone, 404, "call_not_found")

    # Postgres neither, but the rows are kept, for counts.
    dsn = settings.database_url or ""
    for table in ("postbacks", "calls", "caller_erasures"):
        rows = await fetch(dsn, f"SELECT t::text AS text FROM {table} t")
        holding = [r["text"] for r in rows if any(n.decode() in r["text"] for n in needles)]
        assert holding == [], table
    kept = await fetch(
        dsn,
        "SELECT caller_number, caller_raw, tags, error, message FROM postbacks"
        " WHERE key_id = $1 ORDER BY received_at",
        key["id"],
    )
    assert len(kept) == 4
    mine = [r for r in kept if r["caller_number"] is None]
    assert len(mine) == 3 and all(r["caller_raw"] is None for r in mine)
    assert orjson.loads(mine[0]["tags"]) == {"secret_one": ""}
    assert [r["message"] for r in mine if r["error"]] == [
        "a tag name or value breaks the tag rules"
    ]
    assert [orjson.loads(r["tags"]) for r in kept if r["caller_number"] == other] == [
        {"kept": "gamma-value"}
    ]
    records = await fetch(dsn, "SELECT caller_number, tags FROM calls WHERE call_uuid = $1",
                          call["call_uuid"])  # fmt: skip
    assert [(r["caller_number"], orjson.loads(r["tags"])) for r in records] == [
        ("", {"secret_one": ""})
    ]
    recorded = await fetch(dsn, "SELECT * FROM caller_erasures WHERE number_hash = $1",
                           counts["number_hash"])  # fmt: skip
    assert [r["pending_tags"] for r in recorded] == [1]


async def test_late_log_entries_are_redacted(
    client: httpx.AsyncClient, sink: Sink, settings: Settings, redis: RedisClient
) -> None:
    """An entry older than the erase that reaches Postgres after it (held by a worker
    during the erase, say) is redacted by the workers; one newer than it is not."""
    number = fresh_caller()
    before = now_ms() - 5000
    erased = await client.post(caller_path(number, "/erase"), headers=ADMIN)
    assert erased.json()["postbacks"] == 0
    late = entry("late", caller_number=number, caller_raw=number, received_ms=before,
                 tags={"t": "late-value"})  # fmt: skip
    after = entry("after", caller_number=number, caller_raw=number, tags={"t": "new-value"})
    await fill(redis, keyspace(settings), [late, after])
    await sink.drain()
    rows = await fetch(
        settings.database_url or "",
        "SELECT user_agent, caller_number, tags FROM postbacks WHERE user_agent IN"
        " ('late', 'after') AND id = ANY($1::uuid[]) ORDER BY user_agent",
        [late["id"], after["id"]],
    )
    assert [(r["user_agent"], r["caller_number"], orjson.loads(r["tags"])) for r in rows] == [
        ("after", number, {"t": "new-value"}),
        ("late", None, {"t": ""}),
    ]


async def test_a_batch_in_a_workers_hands_during_the_erase_lands_redacted(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, settings: Settings
) -> None:
    """A worker has read the caller's entries and not committed them when the erase
    comes: its commit waits for the erase's lock, or sees the erase's record; the copies
    the erase left in the stream then add no second row."""
    await sink.drain()
    number = fresh_caller()
    key = await keys.key()
    await post(client, key, number, held="held-value")
    held = [
        (stream, batch)
        for stream in keyspace(settings).log_shards_all()
        if (batch := await sink.reader.read(stream, None))
    ]
    assert sum(len(batch) for _, batch in held) == 1
    erased = await client.post(caller_path(number, "/erase"), headers=ADMIN)
    assert erased.json()["log_entries"] == 1 and erased.json()["postbacks"] == 0
    for stream, batch in held:  # the worker goes on: commit, acknowledge
        await sink.writer.commit(*sink._rows(stream, batch), fresh=True)
        await sink.reader.acknowledge(stream, [entry_id for entry_id, _ in batch])
    await sink.drain()  # the erase's redacted copy: the same row
    rows = await fetch(
        settings.database_url or "",
        "SELECT caller_number, caller_raw, tags FROM postbacks WHERE key_id = $1",
        key["id"],
    )
    assert [(r["caller_number"], r["caller_raw"], orjson.loads(r["tags"])) for r in rows] == [
        (None, None, {"held": ""})
    ]


async def test_openapi_documents_the_caller_routes(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/admin/callers/{number}"]) == {"get"}
    assert set(paths["/admin/callers/{number}/pending"]) == {"delete"}
    assert set(paths["/admin/callers/{number}/erase"]) == {"post"}
    components = document["components"]["schemas"]
    assert {"CallerData", "PendingTag", "Retracted", "Erasure"} <= set(components)


async def test_the_erasure_salt_setting_keys_the_hash(settings: Settings) -> None:
    salted = replace(settings, erasure_salt=Secret("pepper"))
    number = fresh_caller()
    async with running_app(salted) as app:
        erased = await app.post(caller_path(number, "/erase"), headers=ADMIN)
    assert erased.json()["number_hash"] == number_hash(b"pepper", number)
