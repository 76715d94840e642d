"""The console's side of tag schemas and caller data: a key's schema chosen in its forms,
personal tags masked on the log, call and caller pages until revealed (a CSRF-carrying
form), and the caller page with its retract and erase forms."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from apitools import connect
from conftest import ADMIN, Keys, fresh_caller, written_locally
from pagetools import Signed, sign_in, texts

from calltags.pii import MASK
from calltags.sink import Sink

RULES = {"email": {"type": "email", "pii": True}, "age": {"type": "integer"}}


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> AsyncIterator[Signed]:
    yield await sign_in(client)
    client.cookies.clear()


async def schema(client: httpx.AsyncClient, rules: dict[str, Any] = RULES) -> str:
    name = f"pii{secrets.token_hex(3)}"
    response = await client.put(f"/admin/tag_schemas/{name}", json={"tags": rules}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return name


async def post(client: httpx.AsyncClient, secret: str, caller: str, **tags: str) -> None:
    response = await client.post(
        "/data_writing", data={"key": secret, "caller_number": caller, **tags}
    )
    assert response.status_code == 200, response.text


async def test_the_key_forms_choose_a_tag_schema(
    client: httpx.AsyncClient, keys: Keys, browser: Signed
) -> None:
    name = await schema(client)
    publisher = await keys.publisher()
    added = await client.post(
        f"/console/publishers/{publisher}/keys",
        data=browser.form(name="with schema", tag_schema=name),
        headers=browser.headers,
    )
    assert added.status_code == 200, added.text
    assert texts(added.text, "schema-name") == [name]
    key_id = int(added.text.split('data-id="')[1].split('"')[0])
    cleared = await client.post(
        f"/console/keys/{key_id}/tag_schema", data=browser.form(tag_schema=""),
        headers=browser.headers,
    )  # fmt: skip
    assert cleared.status_code == 303
    page = await client.get(f"/console/publishers/{publisher}", headers=browser.headers)
    assert texts(page.text, "schema-name") == ["none"]
    refused = await client.post(
        f"/console/keys/{key_id}/tag_schema", data=browser.form(tag_schema="nosuch"),
        headers=browser.headers,
    )  # fmt: skip
    assert refused.status_code == 422
    assert texts(refused.text, "message") == ["tag_schema: no tag schema 'nosuch'"]
    # The key's own form takes the field too (its KeyUpdate): refused the same way.
    refused = await client.post(
        f"/console/keys/{key_id}", data=browser.form(tag_schema="nosuch"), headers=browser.headers
    )
    assert refused.status_code == 422, refused.text
    assert texts(refused.text, "message") == ["tag_schema: no tag schema 'nosuch'"]
    forged = await client.post(
        f"/console/keys/{key_id}/tag_schema", data={"tag_schema": name}, headers=browser.headers
    )
    assert forged.status_code == 403


async def test_personal_tags_are_masked_until_revealed(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink
) -> None:
    key = await keys.key(tag_schema=await schema(client))
    caller = fresh_caller()
    call = await connect(client, caller)
    await post(client, key["key"], caller, email="Ann@Example.com", age="30")
    await sink.drain()
    query = {"caller_number": caller}

    log = await client.get("/console/log", params=query, headers=browser.headers)
    assert texts(log.text, "tags") == [f"age=30, email={MASK}"]
    assert "Ann@example.com" not in log.text
    forged = await client.post("/console/log", params=query, headers=browser.headers)
    assert forged.status_code == 403 and "Ann@example.com" not in forged.text
    shown = await client.post(
        "/console/log", params=query, data=browser.form(), headers=browser.headers
    )
    assert shown.status_code == 200
    assert texts(shown.text, "tags") == ["age=30, email=Ann@example.com"]

    page = f"/console/calls/{call['call_uuid']}"
    masked = await client.get(page, headers=browser.headers)
    assert texts(masked.text, "tag-value") == ["30", MASK]
    assert "Ann@example.com" not in masked.text
    assert (await client.post(page, headers=browser.headers)).status_code == 403
    revealed = await client.post(page, data=browser.form(), headers=browser.headers)
    assert texts(revealed.text, "tag-value") == ["30", "Ann@example.com"]


async def test_the_caller_page_shows_retracts_and_erases(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink
) -> None:
    first = await keys.key(tag_schema=await schema(client))
    second = await keys.key()
    number = fresh_caller()
    await post(client, first["key"], number, email="a@b.example", age="41")
    await post(client, second["key"], number, zip="10001")

    found = await client.get(
        "/console/callers", params={"number": written_locally(number)}, headers=browser.headers
    )
    assert found.status_code == 303
    url = found.headers["location"]
    assert url == f"/console/callers/{quote(number, safe='')}"
    page = await client.get(url, headers=browser.headers)
    assert texts(page.text, "tag-name") == ["age", "email", "zip"]
    assert texts(page.text, "tag-value") == ["41", MASK, "10001"]
    revealed = await client.post(url, data=browser.form(), headers=browser.headers)
    assert texts(revealed.text, "tag-value") == ["41", "a@b.example", "10001"]
    bad = await client.get("/console/callers", params={"number": "12"}, headers=browser.headers)
    assert bad.status_code == 422 and "not a possible phone number" in bad.text

    retracted = await client.post(
        f"{url}/retract",
        data=browser.form(publisher_id=str(second["publisher_id"])),
        headers=browser.headers,
    )
    assert texts(retracted.text, "retracted") == ["1 pending tag retracted."]
    assert texts(retracted.text, "tag-name") == ["age", "email"]
    assert (await client.post(f"{url}/erase", headers=browser.headers)).status_code == 403
    unconfirmed = await client.post(f"{url}/erase", data=browser.form(), headers=browser.headers)
    assert unconfirmed.status_code == 422 and "tick the box" in unconfirmed.text
    assert texts(unconfirmed.text, "tag-name") == ["age", "email"]
    erased = await client.post(
        f"{url}/erase", data=browser.form(confirm="true"), headers=browser.headers
    )
    assert erased.status_code == 200
    assert texts(erased.text, "erased-pending") == ["2"]
    assert texts(erased.text, "empty") == ["No pending tags.", "No calls."]
    await sink.drain()
    log = await client.get(
        "/console/log", params={"caller_number": number}, headers=browser.headers
    )
    assert texts(log.text, "empty") == ["No postbacks match."]


async def test_the_tag_schemas_page_lists_each_rule(
    client: httpx.AsyncClient, browser: Signed
) -> None:
    rules = {**RULES, "tier": {"type": "enum", "values": ["Gold", "Silver"], "required": True}}
    name = await schema(client, rules)
    page = await client.get("/console/tag_schemas", headers=browser.headers)
    assert page.status_code == 200
    inside = ("data-name", name)
    assert texts(page.text, "rule-type", inside) == ["integer", "email", "enum"]
    assert "one of Gold, Silver" in texts(page.text, "rule-limits", inside)
    assert texts(page.text, "rule-pii", inside)[1] == "masked"  # email's
    assert texts(page.text, "unknown", inside) == ["kept as posted"]
