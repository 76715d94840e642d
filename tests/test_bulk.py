"""Bulk posts, POST /data_writing/bulk and /data_writing/{key}/bulk: JSON items or CSV,
each item answered and logged as the same postback posted alone. Against real Redis
(single node, or CALLTAGS_TEST_REDIS=cluster) and Postgres."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import orjson
from apitools import assert_error, connect
from conftest import ADMIN, Keys, fresh_caller
from logtools import fetch

from calltags import signing
from calltags.models import MAX_BULK_BODY_BYTES, MAX_BULK_ITEMS
from calltags.sink import Sink
from calltags.store import SCRIPT_BATCH

STORED = "call not found, tags stored"
LIVE = "call in progress, tags applied"
ROWS = "SELECT caller_raw, http_status, error, status, tags FROM postbacks WHERE user_agent = $1"


def _agent() -> dict[str, str]:
    return {"user-agent": f"bulk-{secrets.token_hex(4)}"}


async def _bulk(
    client: httpx.AsyncClient, secret: str, items: list[dict[str, Any]], **headers: str
) -> list[dict[str, Any]]:
    response = await client.post(f"/data_writing/{secret}/bulk", json={"items": items},
                                 headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(items)
    return results


def _without_status(result: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in result.items() if name != "http_status"}


async def test_json_items_good_and_bad_each_answered_as_alone(
    client: httpx.AsyncClient, key: dict[str, Any], sink: Sink, database_url: str
) -> None:
    caller, live_caller = fresh_caller(), fresh_caller()
    call = await connect(client, live_caller, f"bulk-{secrets.token_hex(4)}")
    items: list[dict[str, Any]] = [
        {"caller_number": caller, "lead": "a", "score": 7, "hot": True},
        {"caller_number": "12", "lead": "b"},  # not a phone number
        {"caller_number": caller, "bad tag!": "c"},  # a bad tag name
        {"call_uuid": f"nope-{secrets.token_hex(4)}", "lead": "d"},  # no such call
        {"call_uuid": call["call_uuid"], "lead": "e"},
        {"caller_number": caller},  # no tags
        {"caller_number": caller, "nested": {"x": 1}},  # not a tag value
        {"lead": "f"},  # no caller
    ]
    agent = _agent()
    results = await _bulk(client, key["key"], items, **agent)
    assert [r["http_status"] for r in results] == [200, 422, 422, 404, 200, 422, 422, 422]
    assert results[0]["status"] == STORED
    assert results[0]["tag_values"] == {"lead": "a", "score": "7", "hot": "true"}
    assert results[4]["status"] == LIVE and results[4]["call_uuid"] == call["call_uuid"]
    assert [r.get("error") for r in results[1:4]] == [
        "invalid_caller_number", "invalid_tag", "call_not_found",
    ]  # fmt: skip
    assert [r["error"] for r in results[5:]] == ["no_tags", "invalid_tag", "missing_caller"]

    # Each refusal is the body the same postback gets when posted alone.
    for item, result in zip(items[1:4] + items[5:], results[1:4] + results[5:], strict=True):
        alone = await client.post(f"/data_writing/{key['key']}", json=item)
        assert alone.status_code == result["http_status"]
        assert alone.json() == _without_status(result)

    assert (await connect(client, caller))["tags"] == {"lead": "a", "score": "7", "hot": "true"}
    await sink.drain()
    rows = await fetch(database_url, ROWS, agent["user-agent"])
    assert len(rows) == len(items)  # one log entry an item
    assert sorted((row["http_status"], row["error"] or row["status"]) for row in rows) == sorted(
        (r["http_status"], r.get("error") or r["status"]) for r in results
    )


async def test_csv_rows_empty_cells_are_no_tag(
    client: httpx.AsyncClient, key: dict[str, Any], sink: Sink, database_url: str
) -> None:
    one, two = fresh_caller(), fresh_caller()
    body = (
        "caller_number,idempotency_key,lead,zip\r\n"
        f"{one},,a,10001\r\n"
        f"{two},k-{secrets.token_hex(3)},b,\r\n"
        "not a number,,c,3\r\n"
        f"{one},,,\r\n"
    )
    agent = _agent()
    response = await client.post(
        "/data_writing/bulk",
        params={"key": key["key"]},
        content=body.encode(),
        headers={"content-type": "text/csv; charset=utf-8", **agent},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["http_status"] for r in results] == [200, 200, 422, 422]
    assert results[0]["tag_values"] == {"lead": "a", "zip": "10001"}
    assert results[1]["tag_values"] == {"lead": "b"}  # the empty zip is no tag
    assert [r.get("error") for r in results[2:]] == ["invalid_caller_number", "no_tags"]
    assert (await connect(client, two))["tags"] == {"lead": "b"}
    await sink.drain()
    assert len(await fetch(database_url, ROWS, agent["user-agent"])) == 4


async def test_idempotent_items_replay(client: httpx.AsyncClient, key: dict[str, Any]) -> None:
    caller = fresh_caller()
    ikey = f"bulk-{secrets.token_hex(4)}"
    items = [{"caller_number": caller, "idempotency_key": ikey, "lead": "a"}] * 2
    first = await _bulk(client, key["key"], items)
    assert sorted(r.get("replayed", False) for r in first) == [False, True]  # one writes
    again = await _bulk(client, key["key"], items[:1])
    assert again[0]["replayed"] is True
    written = next(result for result in first if "replayed" not in result)
    assert again[0] == {**written, "replayed": True}
    reused = await _bulk(client, key["key"], [{**items[0], "lead": "b"}])
    assert reused[0]["http_status"] == 422 and reused[0]["error"] == "idempotency_key_reused"
    # A single postback with the same key and parameters is a repeat too.
    alone = await client.get(
        "/data_writing",
        params={"key": key["key"], "caller_number": caller, "lead": "a"},
        headers={"Idempotency-Key": ikey},
    )
    assert alone.headers["idempotent-replayed"] == "true"


async def test_the_rate_limit_counts_items(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key(rate_limit_per_second=0.001, rate_limit_burst=3)
    items = [{"caller_number": fresh_caller(), "n": str(n)} for n in range(5)]
    results = await _bulk(client, key["key"], items)
    assert sorted(r["http_status"] for r in results) == [200, 200, 200, 429, 429]
    assert {r.get("error") for r in results if r["http_status"] == 429} == {"rate_limited"}


async def test_refusals_of_the_whole_post(
    client: httpx.AsyncClient, key: dict[str, Any], sink: Sink, database_url: str
) -> None:
    secret = key["key"]
    path = f"/data_writing/{secret}/bulk"
    caller = fresh_caller()
    agent = _agent()
    too_many = [{"caller_number": caller, "n": "1"}] * (MAX_BULK_ITEMS + 1)
    assert_error(await client.post(path, json={"items": too_many}, headers=agent), 422,
                 "too_many_items")  # fmt: skip
    rows = f"caller_number,n\r\n{caller},1\r\n" * 1 + f"{caller},1\r\n" * MAX_BULK_ITEMS
    csv_headers = {"content-type": "text/csv", **agent}
    assert_error(await client.post(path, content=rows, headers=csv_headers), 422,
                 "too_many_items")  # fmt: skip
    oversize = f"caller_number,n\r\n{caller},".encode().ljust(MAX_BULK_BODY_BYTES + 1, b"1")
    assert_error(await client.post(path, content=oversize, headers=csv_headers), 413,
                 "payload_too_large")  # fmt: skip
    for content_type, body in (
        ("text/plain", b"caller_number,n\n1,2\n"),
        ("application/x-www-form-urlencoded", b"caller_number=1&n=2"),
        ("", b'{"items": []}'),
    ):
        refused = await client.post(path, content=body, headers={"content-type": content_type})
        assert_error(refused, 415, "unsupported_media_type")
    for bad_csv in (
        "lead,zip\r\na,1\r\n",  # no caller column
        f"caller_number,lead\r\n{caller},a,extra\r\n",  # a row longer than the header
        f'caller_number,lead\r\n{caller},"open\r\n',  # a quote never closed
        "caller_number,lead,lead\r\n1,2,3\r\n",  # a column twice
        "",  # no header at all
    ):
        refused = await client.post(path, content=bad_csv, headers=csv_headers)
        assert_error(refused, 400, "invalid_body")
    assert_error(await client.post(path, content=b"\xff\xfe", headers=csv_headers), 400,
                 "invalid_body")  # fmt: skip
    for bad_json in (
        b"{",
        b"[]",
        b'{"items": {}}',
        b'{"items": 5}',
        b"[1, 2]",
        b'{"items": [1]}',
        b'{"other": []}',
    ):
        refused = await client.post(
            path, content=bad_json, headers={"content-type": "application/json"}
        )
        assert_error(refused, 400, "invalid_body")
    named = await _bulk(client, secret, [{"caller_number": caller, "key": secret, "n": "1"}])
    assert named[0]["http_status"] == 400 and named[0]["error"] == "invalid_body"
    assert_error(
        await client.post(path, json={"items": []}, headers={"Idempotency-Key": "k"}),
        422,
        "invalid_idempotency_key",
    )
    assert_error(await client.post("/data_writing/bulk", json={"items": []}), 401, "missing_key")
    assert_error(await client.post("/data_writing/ct_nope/bulk", json={"items": []}), 401,
                 "invalid_key")  # fmt: skip
    assert_error(await client.get(path), 405, "method_not_allowed")
    assert (await client.post(path, json={"items": []})).json() == {"results": []}
    await sink.drain()
    logged = await fetch(database_url, ROWS, agent["user-agent"])
    # One entry a post refused as a whole (those sent with the agent).
    assert sorted(row["error"] for row in logged) == (
        ["invalid_body"] * 6 + ["payload_too_large"] + ["too_many_items"] * 2
    )


async def test_the_bulk_routes_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/data_writing/bulk", "/data_writing/{key}/bulk"):
        post = spec["paths"][path]["post"]
        assert set(post["requestBody"]["content"]) == {"application/json", "text/csv"}
        assert "too_many_items" in post["responses"]["422"]["description"]
    items = spec["components"]["schemas"]["BulkBody"]["properties"]["items"]
    assert items["maxItems"] == MAX_BULK_ITEMS
    assert "BulkAnswer" in spec["components"]["schemas"]


async def test_a_signed_key_signs_the_bulk_body(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key(require_signature=True)
    path = f"/data_writing/{key['key']}/bulk"
    body = orjson.dumps({"items": [{"caller_number": fresh_caller(), "lead": "a"}]})
    json_type = {"content-type": "application/json"}
    assert_error(await client.post(path, content=body, headers=json_type), 401,
                 "missing_signature")  # fmt: skip
    stamp = str(int(time.time()))
    signed = signing.signature(key["signing_secret"].encode(), stamp, "POST", path, "", body)
    headers = {**json_type, signing.TIMESTAMP_HEADER: stamp, signing.SIGNATURE_HEADER: signed}
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == STORED
    tampered = await client.post(path, content=body.replace(b"a", b"b"), headers=headers)
    assert_error(tampered, 401, "invalid_signature")


async def test_items_go_through_the_keys_tag_schema(client: httpx.AsyncClient, keys: Keys) -> None:
    name = f"bulk{secrets.token_hex(4)}"
    schema = {"tags": {"age": {"type": "integer", "required": True}}, "unknown": "drop"}
    put = await client.put(f"/admin/tag_schemas/{name}", json=schema, headers=ADMIN)
    assert put.status_code == 201, put.text
    key = await keys.key(tag_schema=name)
    caller = fresh_caller()
    items: list[dict[str, Any]] = [
        {"caller_number": caller, "age": "007", "extra": "x", "idempotency_key": "k1"},
        {"caller_number": fresh_caller(), "age": "old"},
        {"caller_number": fresh_caller(), "extra": "x"},
    ]
    results = await _bulk(client, key["key"], items)
    assert results[0]["tag_values"] == {"age": "7"}
    assert results[0]["dropped_tags"] == ["extra"]
    assert [(r["http_status"], r.get("error")) for r in results[1:]] == [
        (422, "invalid_tag"), (422, "missing_tag"),
    ]  # fmt: skip
    again = await _bulk(client, key["key"], items[:1])  # a repeat: the first answer
    assert again[0] == {**results[0], "replayed": True}


async def test_a_bulk_larger_than_a_script_call_is_written_in_item_order(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str
) -> None:
    """More items than one script call takes (store.SCRIPT_BATCH), callers of many slots,
    one caller posted to again and again: every item as if alone, in item order (the
    rate limit's tokens too), one log row an item."""
    assert 4 * SCRIPT_BATCH < 300
    key = await keys.key(rate_limit_per_second=0.001, rate_limit_burst=250)
    repeated = fresh_caller()
    items: list[dict[str, Any]] = []
    for n in range(300):
        caller = repeated if n % 3 == 0 else fresh_caller()
        items.append({"caller_number": caller, "n": str(n)})
    agent = _agent()
    results = await _bulk(client, key["key"], items, **agent)
    assert [r["http_status"] for r in results] == [200] * 250 + [429] * 50
    for result, item in zip(results[:250], items, strict=False):
        assert (result["caller_number"], result["tag_values"]) == (
            item["caller_number"],
            {"n": item["n"]},
        )
    # The repeated caller's last written item (of those under the limit) is its tag now.
    last = max(n for n in range(250) if n % 3 == 0)
    assert (await connect(client, repeated))["tags"] == {"n": str(last)}
    await sink.drain()
    rows = await fetch(database_url, ROWS, agent["user-agent"])
    assert len(rows) == 300
    assert sorted(row["http_status"] for row in rows) == [200] * 250 + [429] * 50
