"""Declared tag schemas: the admin API, and what a key's postbacks get under one
(accepted in canonical text, refused naming the tag and the rule), against real stores."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import httpx
import pytest
from apitools import assert_error, connect, get_call
from conftest import ADMIN, Keys, fresh_caller, open_redis, running_app

from calltags.config import Settings
from calltags.keys import KeySpace
from calltags.models import TAG_TYPES
from calltags.sink import Sink

# Every type, and the rules of each: tag name -> rule.
RULES: dict[str, dict[str, Any]] = {
    "age": {"type": "integer", "min": 18, "max": 120},
    "count": {"type": "integer"},
    "income": {"type": "number", "max": 1e6},
    "ratio": {"type": "number"},
    "prequalified": {"type": "boolean"},
    "tier": {"type": "enum", "values": ["Gold", "Silver"]},
    "born": {"type": "date"},
    "email": {"type": "email", "pii": True},
    "mobile": {"type": "phone", "pii": True},
    "site": {"type": "url"},
    "note": {"type": "string", "max_length": 5},
    "state": {"type": "string", "pattern": "[A-Z]{2}"},
    "free": {"type": "string"},
}

ACCEPTED = [  # (tag, as posted, as stored)
    ("age", "042", "42"),
    ("age", "18", "18"),
    ("count", "-0", "0"),
    ("count", "+7", "7"),
    ("count", " 12 ", "12"),
    ("income", "3.50", "3.5"),
    ("income", "1e3", "1000"),
    ("ratio", ".5", "0.5"),
    ("ratio", "-0.0", "0"),
    ("ratio", "2.5E-3", "0.0025"),
    ("prequalified", "YES", "true"),
    ("prequalified", "1", "true"),
    ("prequalified", "True", "true"),
    ("prequalified", "no", "false"),
    ("prequalified", "0", "false"),
    ("prequalified", "FALSE", "false"),
    ("tier", "gold", "Gold"),
    ("tier", "SILVER", "Silver"),
    ("born", "1990-07-04", "1990-07-04"),
    ("born", "19900704", "1990-07-04"),
    ("born", "1990-07-04T10:30:00Z", "1990-07-04"),
    ("email", "Ann.Lee@Example.COM", "Ann.Lee@example.com"),
    ("mobile", "(212) 555-0123", "+12125550123"),
    ("mobile", "+44 20 7946 0958", "+442079460958"),
    ("site", "HTTPS://Example.com/Path?q=A", "https://example.com/Path?q=A"),
    ("note", "hello", "hello"),
    ("state", "NY", "NY"),
    ("free", "  anything  ", "  anything  "),
]

REFUSED = [  # (tag, as posted, what the message says of the rule)
    ("age", "17", "at least 18"),
    ("age", "121", "at most 120"),
    ("age", "4.2", "must be an integer"),
    ("count", "ten", "must be an integer"),
    ("count", "", "must be an integer"),
    ("income", "1000001", "at most 1e+06"),
    ("ratio", "nan", "must be a number"),
    ("ratio", "1e400", "within"),
    ("ratio", "1,5", "must be a number"),
    ("prequalified", "maybe", "true, false"),
    ("tier", "bronze", "one of: Gold, Silver"),
    ("born", "07/04/1990", "must be a date"),
    ("born", "1990-02-30", "must be a date"),
    ("email", "ann.example.com", "email address"),
    ("email", "ann@localhost", "email address"),
    ("mobile", "12", "phone number"),
    ("site", "ftp://example.com/", "http or https URL"),
    ("site", "example.com", "http or https URL"),
    ("note", "hello!", "at most 5 characters"),
    ("state", "ny", "pattern"),
]


async def put_schema(
    client: httpx.AsyncClient, name: str, tags: dict[str, Any], unknown: str = "accept"
) -> httpx.Response:
    body = {"tags": tags, "unknown": unknown}
    return await client.put(f"/admin/tag_schemas/{name}", json=body, headers=ADMIN)


async def schema_key(
    client: httpx.AsyncClient, keys: Keys, tags: dict[str, Any], unknown: str = "accept"
) -> tuple[str, str]:
    """A new schema of these rules and a key naming it: (schema name, key secret)."""
    name = f"s{secrets.token_hex(4)}"
    response = await put_schema(client, name, tags, unknown)
    assert response.status_code == 201, response.text
    key = await keys.key(tag_schema=name)
    assert key["tag_schema"] == name
    return name, str(key["key"])


async def post(client: httpx.AsyncClient, secret: str, **tags: str) -> httpx.Response:
    data = {"key": secret, "caller_number": fresh_caller(), **tags}
    return await client.post("/data_writing", data=data)


@pytest.fixture
async def typed(client: httpx.AsyncClient, keys: Keys) -> str:
    return (await schema_key(client, keys, RULES))[1]


@pytest.mark.parametrize(("tag", "posted", "stored"), ACCEPTED)
async def test_each_type_accepts_and_normalizes(
    client: httpx.AsyncClient, typed: str, tag: str, posted: str, stored: str
) -> None:
    response = await post(client, typed, **{tag: posted})
    assert response.status_code == 200, response.text
    assert response.json()["tag_values"] == {tag: stored}
    assert "dropped_tags" not in response.json()


@pytest.mark.parametrize(("tag", "posted", "rule"), REFUSED)
async def test_each_type_refuses_what_does_not_fit(
    client: httpx.AsyncClient, typed: str, tag: str, posted: str, rule: str
) -> None:
    response = await post(client, typed, other="kept", **{tag: posted})
    message = assert_error(response, 422, "invalid_tag")
    assert f"'{tag}'" in message and RULES[tag]["type"] in message and rule in message


async def test_the_call_holds_the_canonical_text(client: httpx.AsyncClient, typed: str) -> None:
    caller = fresh_caller()
    call = await connect(client, caller)
    data = {"key": typed, "caller_number": caller, "tier": "gold", "age": "0030"}
    response = await client.post("/data_writing", data=data)
    assert response.status_code == 200, response.text
    assert (await get_call(client, call["call_uuid"]))["tags"] == {"tier": "Gold", "age": "30"}


async def test_required_tags(client: httpx.AsyncClient, keys: Keys) -> None:
    rules = {"zip": {"type": "string", "required": True}, "age": {"type": "integer"}}
    _, secret = await schema_key(client, keys, rules)
    message = assert_error(await post(client, secret, age="30"), 422, "missing_tag")
    assert "'zip'" in message
    assert (await post(client, secret, zip="10001")).status_code == 200


@pytest.mark.parametrize("unknown", ["accept", "reject", "drop"])
async def test_undeclared_tags(client: httpx.AsyncClient, keys: Keys, unknown: str) -> None:
    _, secret = await schema_key(client, keys, {"age": {"type": "integer"}}, unknown)
    response = await post(client, secret, age="07", extra="x", more="y")
    if unknown == "reject":
        assert "'extra'" in assert_error(response, 422, "unknown_tag")
        return
    assert response.status_code == 200, response.text
    body = response.json()
    if unknown == "accept":
        assert body["tag_values"] == {"age": "7", "extra": "x", "more": "y"}
        assert "dropped_tags" not in body
    else:
        assert body["tag_values"] == {"age": "7"}
        assert body["dropped_tags"] == ["extra", "more"]


async def test_a_pattern_that_would_backtrack_answers_at_once(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Matched by RE2: a value that takes a backtracking engine exponential time is a
    plain 422 (Python's re needs minutes for this one)."""
    _, secret = await schema_key(client, keys, {"word": {"type": "string", "pattern": "(a+)+"}})
    response = await post(client, secret, word="a" * 1000 + "b")
    assert "'word'" in assert_error(response, 422, "invalid_tag")
    assert (await post(client, secret, word="a" * 1000)).status_code == 200


async def test_dropping_every_tag_is_no_tags(client: httpx.AsyncClient, keys: Keys) -> None:
    _, secret = await schema_key(client, keys, {"age": {"type": "integer"}}, "drop")
    assert "extra" in assert_error(await post(client, secret, extra="x"), 422, "no_tags")


async def test_a_key_without_schema_accepts_anything(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key()
    assert key["tag_schema"] is None
    response = await post(client, key["key"], age="007", tier="bronze")
    assert response.json()["tag_values"] == {"age": "007", "tier": "bronze"}


async def test_refusals_and_normalized_tags_are_logged(
    client: httpx.AsyncClient, typed: str, sink: Sink
) -> None:
    caller = fresh_caller()
    for tags in ({"age": "017"}, {"age": "019"}):
        await client.post("/data_writing", data={"key": typed, "caller_number": caller, **tags})
    await sink.drain()
    listed = await client.get("/admin/postbacks", params={"caller_number": caller}, headers=ADMIN)
    items = listed.json()["items"]
    assert [(i["error"], i["tags"]) for i in items] == [
        (None, {"age": "19"}),
        ("invalid_tag", {"age": "017"}),
    ]


# -- the admin API -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "unknown", "says"),
    [
        ({"a": {"type": "string", "pattern": "(["}}, "accept", "pattern"),
        ({"a": {"type": "string", "pattern": "a{1001}"}}, "accept", "repetition size"),
        ({"a": {"type": "string", "pattern": r"(a)\1"}}, "accept", "backreferences"),
        ({"a": {"type": "string", "pattern": "(?=a)a"}}, "accept", "lookaround"),
        ({"a": {"type": "integer", "min": 5, "max": 1}}, "accept", "min 5 is above max 1"),
        ({"a": {"type": "enum"}}, "accept", "needs its values"),
        ({"a": {"type": "enum", "values": []}}, "accept", "length"),
        ({"a": {"type": "enum", "values": ["x", "X"]}}, "accept", "differ"),
        ({"a": {"type": "enum", "values": ["x\x00"]}}, "accept", "NUL"),
        ({"a": {"type": "integer", "max_length": 3}}, "accept", "max_length applies"),
        ({"a": {"type": "string", "values": ["x"]}}, "accept", "values applies"),
        ({"a": {"type": "date", "min": 1}}, "accept", "min applies"),
        ({"a": {"type": "colour"}}, "accept", "type"),
        ({"a b": {"type": "string"}}, "accept", "tag name"),
        ({"A": {"type": "string"}, "a": {"type": "string"}}, "accept", "declared twice"),
        ({"a": {"type": "string", "secret": True}}, "accept", "secret"),
        ({}, "ignore", "unknown"),
    ],
)
async def test_a_bad_schema_is_422(
    client: httpx.AsyncClient, tags: dict[str, Any], unknown: str, says: str
) -> None:
    response = await put_schema(client, "bad", tags, unknown)
    assert says in assert_error(response, 422, "invalid_request")


async def test_bounds_beyond_a_double_are_422(client: httpx.AsyncClient) -> None:
    body = b'{"tags": {"a": {"type": "number", "max": 1e400}}}'
    response = await client.put("/admin/tag_schemas/bad", content=body, headers=ADMIN)
    assert "out of range" in assert_error(response, 422, "invalid_request")


async def test_put_get_list_delete(client: httpx.AsyncClient) -> None:
    name = f"leads.{secrets.token_hex(3)}"
    created = await put_schema(client, name, {"Age": {"type": "integer", "required": True}})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == name and body["unknown"] == "accept"
    assert body["tags"] == {
        "age": {
            "type": "integer", "required": True, "min": None, "max": None, "max_length": None,
            "pattern": None, "values": None, "pii": False,
        }
    }  # fmt: skip
    replaced = await put_schema(client, name, {"age": {"type": "string"}}, "drop")
    assert replaced.status_code == 200
    got = await client.get(f"/admin/tag_schemas/{name}", headers=ADMIN)
    assert got.json()["tags"]["age"]["type"] == "string" and got.json()["unknown"] == "drop"
    listed = await client.get("/admin/tag_schemas", headers=ADMIN)
    assert name in [item["name"] for item in listed.json()["items"]]
    deleted = await client.delete(f"/admin/tag_schemas/{name}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["name"] == name
    gone = await client.get(f"/admin/tag_schemas/{name}", headers=ADMIN)
    assert_error(gone, 404, "tag_schema_not_found")
    assert_error(await client.delete(f"/admin/tag_schemas/{name}", headers=ADMIN), 404,
                 "tag_schema_not_found")  # fmt: skip
    assert_error(await client.get("/admin/tag_schemas/a%20b", headers=ADMIN), 404,
                 "tag_schema_not_found")  # fmt: skip
    assert_error(await client.get("/admin/tag_schemas"), 401, "unauthorized")


async def test_keys_name_schemas(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher = await keys.publisher()
    response = await client.post(
        f"/admin/publishers/{publisher}/keys",
        json={"name": "k", "tag_schema": "nosuchschema"},
        headers=ADMIN,
    )
    assert "nosuchschema" in assert_error(response, 422, "invalid_request")
    name = f"s{secrets.token_hex(4)}"
    assert (await put_schema(client, name, {"age": {"type": "integer"}})).status_code == 201
    user = await keys.key(publisher, tag_schema=name)
    plain = await keys.key(publisher)
    patched = await client.patch(
        f"/admin/keys/{plain['id']}", json={"tag_schema": name}, headers=ADMIN
    )
    assert patched.json()["tag_schema"] == name
    bad = await client.patch(f"/admin/keys/{plain['id']}", json={"tag_schema": "no"}, headers=ADMIN)
    assert_error(bad, 422, "invalid_request")
    # In use by usable keys: refused, naming them.
    in_use = await client.delete(f"/admin/tag_schemas/{name}", headers=ADMIN)
    assert f"{user['id']}, {plain['id']}" in assert_error(in_use, 409, "tag_schema_in_use")
    # Detached from one, the other revoked: it may go, and the revoked key lets go of it.
    await client.patch(f"/admin/keys/{plain['id']}", json={"tag_schema": None}, headers=ADMIN)
    await client.delete(f"/admin/keys/{user['id']}", headers=ADMIN)
    assert (await client.delete(f"/admin/tag_schemas/{name}", headers=ADMIN)).status_code == 200
    listed = await client.get(f"/admin/publishers/{publisher}/keys", headers=ADMIN)
    assert [k["tag_schema"] for k in listed.json()["items"]] == [None, None, None][
        : len(listed.json()["items"])
    ]


async def test_a_change_reaches_every_web_process(
    settings: Settings, client: httpx.AsyncClient, keys: Keys
) -> None:
    """Two app instances (two web processes' caches): a change made through one is in
    force in the other once the cache's time (CALLTAGS_KEY_CACHE_SECONDS) has passed."""
    quick = replace(settings, key_cache_seconds=0.2)
    name, secret = await schema_key(client, keys, {"age": {"type": "integer"}})
    async with running_app(quick) as first, running_app(quick) as second:
        assert (await post(second, secret, age="x")).status_code == 422  # cached now
        changed = await put_schema(first, name, {"age": {"type": "string"}})
        assert changed.status_code == 200
        await asyncio.sleep(quick.key_cache_seconds + 0.1)
        assert (await post(second, secret, age="x")).status_code == 200
        await put_schema(first, name, {"age": {"type": "integer"}}, "reject")
        await asyncio.sleep(quick.key_cache_seconds + 0.1)
        assert_error(await post(second, secret, age="1", x="1"), 422, "unknown_tag")


async def test_a_schema_lost_from_redis_is_read_from_postgres(
    settings: Settings, client: httpx.AsyncClient, keys: Keys
) -> None:
    name, secret = await schema_key(client, keys, {"age": {"type": "integer"}})
    redis = open_redis(settings.redis_url or "")
    try:
        await redis.delete(KeySpace(settings.redis_prefix, settings.log_shards).tag_schema(name))
        async with running_app(settings) as fresh:
            assert_error(await post(fresh, secret, age="x"), 422, "invalid_tag")
    finally:
        await redis.aclose()


async def test_openapi_documents_schemas(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    assert {"TagRule", "TagSchema", "NamedTagSchema", "TagSchemaList"} <= set(components)
    assert sorted(components["TagRule"]["properties"]["type"]["enum"]) == sorted(TAG_TYPES)
    operations = document["paths"]["/admin/tag_schemas/{name}"]
    assert set(operations) == {"put", "get", "delete"}
    assert operations["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TagSchema"
    }
    assert "409" in operations["delete"]["responses"]
    assert "dropped_tags" in components["PostbackAnswer"]["properties"]
    assert "tag_schema" in components["KeyCreate"]["properties"]
    codes = document["paths"]["/data_writing"]["post"]["responses"]["422"]
    assert "missing_tag" in str(codes) and "unknown_tag" in str(codes)
