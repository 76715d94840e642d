"""The admin API for publishers and keys, readiness, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from apitools import ADMIN_ROUTES, admin_body, assert_error
from conftest import ADMIN, Keys, fresh_caller, running_app
from redis.asyncio import Redis

from calltags.app import create_app
from calltags.config import Settings

MAX_SECONDS = 2_592_000


async def create_key(client: httpx.AsyncClient, publisher_id: int, **fields: Any) -> httpx.Response:
    return await client.post(
        f"/admin/publishers/{publisher_id}/keys",
        json={"name": "main", "type": "call_data_writing", **fields},
        headers=ADMIN,
    )


async def list_keys(client: httpx.AsyncClient, publisher_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/admin/publishers/{publisher_id}/keys", headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- publishers --------------------------------------------------------------------------


async def test_create_and_list_publishers(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/publishers", json={"name": "Bright Leads"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    publisher = response.json()
    assert set(publisher) >= {"id", "name", "created_at"}
    assert isinstance(publisher["id"], int)
    assert publisher["name"] == "Bright Leads"
    assert publisher["created_at"].endswith("Z")

    response = await client.get("/admin/publishers", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert publisher in response.json()["items"]


@pytest.mark.parametrize(
    "payload",
    [{}, {"name": ""}, {"name": "   "}, {"name": 7}, {"name": "n" * 201}, {"name": "a\u0000b"}],
    ids=["missing", "empty", "blank", "number", "long", "nul"],
)
async def test_publisher_name_validation(client: httpx.AsyncClient, payload: Any) -> None:
    response = await client.post("/admin/publishers", json=payload, headers=ADMIN)
    assert_error(response, 422, "invalid_request")


async def test_publisher_malformed_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/admin/publishers",
        content=b'{"name": ',
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_body")


async def test_rename_a_publisher(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher_id = await keys.publisher("Old Name")
    path = f"/admin/publishers/{publisher_id}"
    response = await client.patch(path, json={"name": "  New Name "}, headers=ADMIN)
    assert response.status_code == 200, response.text
    renamed = response.json()
    assert renamed["id"] == publisher_id and renamed["name"] == "New Name"
    listed = (await client.get("/admin/publishers", headers=ADMIN)).json()["items"]
    assert renamed in listed
    # Fields left out stay as they are.
    unchanged = await client.patch(path, json={}, headers=ADMIN)
    assert unchanged.status_code == 200 and unchanged.json() == renamed


@pytest.mark.parametrize(
    "payload",
    [{"name": ""}, {"name": "   "}, {"name": None}, {"name": "n" * 201}, {"title": "x"}],
    ids=["empty", "blank", "null", "long", "unknown"],
)
async def test_rename_validation(client: httpx.AsyncClient, keys: Keys, payload: Any) -> None:
    publisher_id = await keys.publisher("Kept")
    path = f"/admin/publishers/{publisher_id}"
    assert_error(await client.patch(path, json=payload, headers=ADMIN), 422, "invalid_request")
    listed = (await client.get("/admin/publishers", headers=ADMIN)).json()["items"]
    assert {"id": publisher_id, "name": "Kept"} in [
        {"id": p["id"], "name": p["name"]} for p in listed
    ]


# --- keys --------------------------------------------------------------------------------


async def test_create_key(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher_id = await keys.publisher()
    response = await create_key(client, publisher_id, name="landing pages")
    assert response.status_code == 201, response.text
    key = response.json()
    assert isinstance(key["id"], int)
    assert key["publisher_id"] == publisher_id
    assert key["name"] == "landing pages"
    assert key["type"] == "call_data_writing"
    assert key["end_call_cutoff_seconds"] == 3600
    assert key["storage_duration_seconds"] == 86400
    assert key["paused"] is False
    secret = key["key"]
    assert secret.startswith("ct_")
    assert len(secret) >= 24

    # The example URL is ready to send.
    url = urlsplit(key["example_url"])
    assert url.path == "/data_writing"
    query = parse_qs(url.query)
    assert query["key"] == [secret]
    assert "caller_number" in query
    response = await client.get(key["example_url"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "call not found, tags stored"


async def test_create_key_with_durations(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher_id = await keys.publisher()
    response = await create_key(
        client, publisher_id, end_call_cutoff_seconds=0, storage_duration_seconds=60
    )
    assert response.status_code == 201, response.text
    assert response.json()["end_call_cutoff_seconds"] == 0
    assert response.json()["storage_duration_seconds"] == 60
    response = await create_key(
        client,
        publisher_id,
        end_call_cutoff_seconds=MAX_SECONDS,
        storage_duration_seconds=MAX_SECONDS,
    )
    assert response.status_code == 201, response.text
    assert response.json()["end_call_cutoff_seconds"] == MAX_SECONDS
    assert response.json()["storage_duration_seconds"] == MAX_SECONDS
    # "type" may be left out: call_data_writing is the default.
    response = await client.post(
        f"/admin/publishers/{publisher_id}/keys", json={"name": "no type"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    assert response.json()["type"] == "call_data_writing"


async def test_list_keys_never_shows_the_secret(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher_id = await keys.publisher()
    first = await keys.key(publisher_id, name="first")
    second = await keys.key(publisher_id, name="second")
    other = await keys.key(name="someone else's")

    response = await client.get(f"/admin/publishers/{publisher_id}/keys", headers=ADMIN)
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["id"] for item in items] == [first["id"], second["id"]]
    for item, created in zip(items, (first, second), strict=True):
        assert "key" not in item
        assert "example_url" not in item
        assert item["name"] == created["name"]
        assert created["key"].startswith(item["key_prefix"])
        assert len(item["key_prefix"]) < len(created["key"]) // 2
    for secret in (first["key"], second["key"], other["key"]):
        assert secret not in response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"end_call_cutoff_seconds": -1},
        {"end_call_cutoff_seconds": MAX_SECONDS + 1},
        {"storage_duration_seconds": 59},
        {"storage_duration_seconds": 0},
        {"storage_duration_seconds": MAX_SECONDS + 1},
        {"end_call_cutoff_seconds": "3600"},
        {"end_call_cutoff_seconds": 1.5},
        {"storage_duration_seconds": True},
        {"storage_duration_seconds": [60]},
        {"type": "something_else"},
        {"type": None},
        {"name": ""},
        {"name": None},
        {"name": "k" * 201},
        {"name": "bad\u0000name"},
    ],
)
async def test_create_key_validation(
    client: httpx.AsyncClient, keys: Keys, fields: dict[str, Any]
) -> None:
    publisher_id = await keys.publisher()
    response = await create_key(client, publisher_id, **fields)
    assert_error(response, 422, "invalid_request")
    assert await list_keys(client, publisher_id) == []


async def test_patch_key(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher_id = await keys.publisher()
    key = await keys.key(publisher_id)

    response = await client.patch(
        f"/admin/keys/{key['id']}",
        json={
            "name": "renamed",
            "paused": True,
            "end_call_cutoff_seconds": 120,
            "storage_duration_seconds": 3600,
        },
        headers=ADMIN,
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["id"] == key["id"]
    assert patched["name"] == "renamed"
    assert patched["paused"] is True
    assert patched["end_call_cutoff_seconds"] == 120
    assert patched["storage_duration_seconds"] == 3600
    assert "key" not in patched
    assert key["key"] not in response.text
    assert await list_keys(client, publisher_id) == [patched]

    # Fields left out stay as they were.
    response = await client.patch(f"/admin/keys/{key['id']}", json={"paused": False}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {**patched, "paused": False}


async def test_patched_storage_duration_applies_within_a_second(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    key = await keys.key(storage_duration_seconds=600)
    params = {"key": key["key"], "a": "1"}
    response = await client.get("/data_writing", params={**params, "caller_number": fresh_caller()})
    assert response.status_code == 200, response.text  # the key is cached now

    response = await client.patch(
        f"/admin/keys/{key['id']}", json={"storage_duration_seconds": 1200}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    started = time.monotonic()
    while True:
        now = time.time()
        sent = time.monotonic() - started  # a slow answer does not count against the second
        response = await client.get(
            "/data_writing", params={**params, "caller_number": fresh_caller()}
        )
        assert response.status_code == 200, response.text
        expires = datetime.fromisoformat(response.json()["expires_at"]).timestamp()
        if abs(expires - (now + 1200)) <= 2:
            break
        assert abs(expires - (now + 600)) <= 2
        assert sent <= 1.1
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "fields",
    [
        {"end_call_cutoff_seconds": -1},
        {"end_call_cutoff_seconds": MAX_SECONDS + 1},
        {"storage_duration_seconds": 59},
        {"storage_duration_seconds": MAX_SECONDS + 1},
        {"storage_duration_seconds": None},
        {"storage_duration_seconds": "600"},
        {"paused": "yes"},
        {"paused": 1},
        {"paused": None},
        {"name": ""},
        {"name": 5},
        {"name": "x\u0000"},
    ],
)
async def test_patch_key_validation(
    client: httpx.AsyncClient, key: dict[str, Any], fields: dict[str, Any]
) -> None:
    response = await client.patch(f"/admin/keys/{key['id']}", json=fields, headers=ADMIN)
    assert_error(response, 422, "invalid_request")
    # Nothing changed.
    (listed,) = await list_keys(client, key["publisher_id"])
    assert listed["paused"] is False
    assert listed["name"] == key["name"]
    assert listed["end_call_cutoff_seconds"] == key["end_call_cutoff_seconds"]
    assert listed["storage_duration_seconds"] == key["storage_duration_seconds"]


async def test_revoke_key(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    response = await client.delete(f"/admin/keys/{key['id']}", headers=ADMIN)
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked["id"] == key["id"]
    assert revoked["revoked"] is True
    assert key["key"] not in response.text

    (listed,) = await list_keys(client, key["publisher_id"])
    assert listed["revoked"] is True

    # A revoked key cannot be changed back into use.
    response = await client.patch(f"/admin/keys/{key['id']}", json={"paused": False}, headers=ADMIN)
    assert_error(response, 404, "key_not_found")
    response = await client.get(
        "/data_writing", params={"key": key["key"], "caller_number": fresh_caller(), "a": "1"}
    )
    assert response.status_code == 401


async def test_last_used_at_is_recorded(
    client: httpx.AsyncClient, keys: Keys, settings: Settings
) -> None:
    key = await keys.key()
    assert key["last_used_at"] is None
    async with running_app(settings) as web:
        before = time.time()
        response = await web.get(
            "/data_writing", params={"key": key["key"], "caller_number": fresh_caller(), "a": "1"}
        )
        assert response.status_code == 200, response.text
    # The web process writes last_used_at every few seconds, and when it stops.
    (listed,) = await list_keys(client, key["publisher_id"])
    assert listed["last_used_at"] is not None
    used = datetime.fromisoformat(listed["last_used_at"]).timestamp()
    assert before - 2 <= used <= time.time() + 2


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("POST", "/admin/publishers/999999999/keys", "publisher_not_found"),
        ("GET", "/admin/publishers/999999999/keys", "publisher_not_found"),
        ("PATCH", "/admin/publishers/999999999", "publisher_not_found"),
        ("PATCH", "/admin/publishers/x", "publisher_not_found"),
        ("GET", "/admin/publishers/not-a-number/keys", "publisher_not_found"),
        ("GET", "/admin/publishers/99999999999999999999999/keys", "publisher_not_found"),
        ("PATCH", "/admin/keys/999999999", "key_not_found"),
        ("DELETE", "/admin/keys/999999999", "key_not_found"),
        ("PATCH", "/admin/keys/-1", "key_not_found"),
        ("DELETE", "/admin/keys/abc", "key_not_found"),
    ],
)
async def test_unknown_ids_are_404(
    client: httpx.AsyncClient, method: str, path: str, code: str
) -> None:
    body = admin_body(method)
    response = await client.request(method, path, json=body, headers=ADMIN)
    assert_error(response, 404, code)


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_admin_requires_the_admin_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    body = admin_body(method)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}):
        response = await client.request(method, path, json=body, headers=headers)
        assert_error(response, 401, "unauthorized")


# --- secrets are stored as hashes --------------------------------------------------------


async def test_secrets_are_stored_only_as_hashes(
    client: httpx.AsyncClient, keys: Keys, settings: Settings, redis: Redis
) -> None:
    key = await keys.key()
    secret: str = key["key"]
    response = await client.get(
        "/data_writing", params={"key": secret, "caller_number": fresh_caller(), "a": "1"}
    )
    assert response.status_code == 200, response.text

    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT * FROM postback_keys WHERE id = $1", key["id"])
    finally:
        await conn.close()
    assert len(rows) == 1
    for column, value in rows[0].items():
        assert secret not in str(value), column
        assert secret[3:] not in str(value), column

    # Nor in Redis: neither a key name nor a value under this run's prefix holds it.
    async for name in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
        assert secret.encode() not in name
        kind = (await redis.type(name)).decode()
        if kind == "hash":
            values = [*(await redis.hgetall(name)).values()]
        elif kind == "string":
            values = [await redis.get(name) or b""]
        elif kind == "stream":
            values = [v for _, entry in await redis.xrange(name) for v in entry.values()]
        else:
            values = []
        for value in values:
            assert secret.encode() not in value, name


# --- health and the OpenAPI document ------------------------------------------------------


async def test_readyz(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"redis": "ok", "postgres": "ok"}


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}


async def test_openapi_describes_every_route(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    paths: dict[str, Any] = spec["paths"]

    # The document is the route table: each operation served is in it, and nothing else.
    served = {(op.path, op.method.lower()) for op in create_app(settings).operations}
    described = {(path, method) for path, operations in paths.items() for method in operations}
    assert described == served
    # Every operation is served: asked with its method, none answers "no such route".
    for path, method in served:
        concrete = path.replace("{publisher_id}", "999999999").replace("{key_id}", "999999999")
        concrete = concrete.replace("{call_uuid}", "no-such-call").replace("{key}", "ct_x")
        response = await client.request(method, concrete, headers=ADMIN)
        page = response.headers.get("content-type", "").startswith("text/html")
        assert (
            response.status_code not in (404, 405)
            or page  # a console page saying what it did not find
            or response.json()["error"] not in ("not_found", "method_not_allowed")
        ), (method, path, response.text)
