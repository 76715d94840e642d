"""The console's pages over in-process HTTP: publishers and their counts, a publisher's
keys and every action on them, the forms read through the admin API's models (defaults
shown from the model, refusals with its message), a new secret shown once and nowhere
else, the test of a key, the calls pages, escaping, and 404 pages."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from apitools import connect, end
from conftest import ADMIN, ROUTING, Keys, fresh_caller, written_locally
from logtools import fetch
from pagetools import Signed, sign_in, texts, value

from calltags.models import DEFAULT_CUTOFF_SECONDS, DEFAULT_GRACE_SECONDS, DEFAULT_STORAGE_SECONDS
from calltags.postbacks import CONSOLE_AGENT
from calltags.sink import Sink

STORED = "call not found, tags stored"


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> AsyncIterator[Signed]:
    yield await sign_in(client)
    client.cookies.clear()


def _name(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(3)}"


async def _keys(client: httpx.AsyncClient, publisher_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/admin/publishers/{publisher_id}/keys", headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _post(client: httpx.AsyncClient, secret: str, caller: str, **tags: str) -> int:
    params = {"key": secret, "caller_number": caller, **tags}
    return (await client.get("/data_writing", params=params)).status_code


async def test_publishers_list_their_keys_and_last_days_postbacks(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink
) -> None:
    name = _name("Counted Leads")
    publisher_id = await keys.publisher(name)
    key = await keys.key(publisher_id)
    await keys.key(publisher_id)
    revoked = await keys.key(publisher_id)
    assert (await client.delete(f"/admin/keys/{revoked['id']}", headers=ADMIN)).status_code == 200
    quiet_id = await keys.publisher(_name("Quiet Leads"))
    caller = fresh_caller()
    for n in range(3):
        assert await _post(client, key["key"], caller, n=str(n)) == 200
    assert await _post(client, key["key"], caller, **{"bad tag!": "1"}) == 422
    await sink.drain()

    page = await client.get("/console/publishers", headers=browser.headers)
    assert page.status_code == 200, page.text
    row = ("data-id", str(publisher_id))
    assert texts(page.text, "name", row) == [name]
    assert texts(page.text, "keys", row) == ["2"]  # the revoked one is not counted
    assert texts(page.text, "postbacks", row) == ["4"]
    assert texts(page.text, "accepted", row) == ["75.0 %"]
    quiet = ("data-id", str(quiet_id))
    assert [texts(page.text, c, quiet) for c in ("keys", "postbacks", "accepted")] == [
        ["0"],
        ["0"],
        ["\N{EN DASH}"],
    ]

    page = await client.get(f"/console/publishers/{publisher_id}", headers=browser.headers)
    assert texts(page.text, "key-postbacks", ("data-id", str(key["id"]))) == ["4"]
    assert texts(page.text, "key-status", ("data-id", str(revoked["id"]))) == ["revoked"]


async def test_add_a_publisher_then_rename_it(client: httpx.AsyncClient, browser: Signed) -> None:
    before = (await client.get("/admin/publishers", headers=ADMIN)).json()["items"]
    refused = await client.post(
        "/console/publishers", data=browser.form(name="  "), headers=browser.headers
    )
    assert refused.status_code == 422
    assert texts(refused.text, "message") == ["Object missing required field `name`"]
    assert (await client.get("/admin/publishers", headers=ADMIN)).json()["items"] == before

    name = _name("Fresh Leads")
    added = await client.post(
        "/console/publishers", data=browser.form(name=name), headers=browser.headers
    )
    assert added.status_code == 303
    path = added.headers["location"]
    page = await client.get(path, headers=browser.headers)
    assert texts(page.text, "publisher-name") == [name]

    too_long = await client.post(path, data=browser.form(name="n" * 201), headers=browser.headers)
    assert too_long.status_code == 422
    assert texts(too_long.text, "message") == ["Expected `str` of length <= 200 - at `$.name`"]
    assert value(too_long.text, "rename-name") == "n" * 201  # what was typed, kept
    renamed = await client.post(path, data=browser.form(name="Renamed"), headers=browser.headers)
    assert renamed.status_code == 303 and renamed.headers["location"] == path
    page = await client.get(path, headers=browser.headers)
    assert texts(page.text, "publisher-name") == ["Renamed"]


async def test_the_add_key_form_shows_the_models_defaults(
    client: httpx.AsyncClient, keys: Keys, browser: Signed
) -> None:
    key = await keys.key()
    page = await client.get(f"/console/publishers/{key['publisher_id']}", headers=browser.headers)
    assert value(page.text, "key-cutoff") == str(DEFAULT_CUTOFF_SECONDS)
    assert value(page.text, "key-storage") == str(DEFAULT_STORAGE_SECONDS)
    assert value(page.text, f"grace-{key['id']}") == str(DEFAULT_GRACE_SECONDS)
    assert f"default {DEFAULT_CUTOFF_SECONDS} (1 h)" in page.text
    assert 'min="0" max="2592000"' in page.text and 'min="60" max="2592000"' in page.text
    assert '<option value="call_data_writing" selected>Call Data Writing</option>' in page.text
    assert "500 a second, bursts of 1000" in page.text  # CALLTAGS_RATE_LIMIT's default


async def test_a_new_key_shows_its_secret_and_url_once(
    client: httpx.AsyncClient,
    keys: Keys,
    browser: Signed,
    sink: Sink,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    publisher_id = await keys.publisher()
    form = browser.form(
        type="call_data_writing",
        name="landing pages",
        end_call_cutoff_seconds="120",
        storage_duration_seconds="",  # blank: the model's default
        rate_limit_per_second="5",
        rate_limit_burst="10",
        allowed_cidrs="203.0.113.0/24\n198.51.100.7, 2001:db8::/32",
    )
    path = f"/console/publishers/{publisher_id}/keys"
    page = await client.post(path, data=form, headers=browser.headers)
    assert page.status_code == 200, page.text
    secret = value(page.text, "new-secret")
    signing_secret = value(page.text, "signing-secret")
    assert secret.startswith("ct_") and signing_secret.startswith("whsec_")
    url = value(page.text, "ready-url")
    assert url == (
        f"http://testserver/data_writing?key={secret}&caller_number=CALLER_NUMBER&prequalified=true"
    )
    (key,) = await _keys(client, publisher_id)
    assert key["name"] == "landing pages" and key["end_call_cutoff_seconds"] == 120
    assert key["storage_duration_seconds"] == DEFAULT_STORAGE_SECONDS
    assert key["allowed_cidrs"] == ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32"]
    assert (key["rate_limit_per_second"], key["rate_limit_burst"]) == (5.0, 10)
    assert key["require_signature"] is False

    # The URL works as it is handed out, the caller filled in.
    caller = fresh_caller()
    answer = await client.get(url.replace("CALLER_NUMBER", quote(written_locally(caller))))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == STORED and answer.json()["caller_number"] == caller

    # Shown once: not in the answer's headers, not on the page again, in no log line,
    # nor in the postback log.
    assert secret not in str(page.headers) and "location" not in page.headers
    again = await client.get(f"/console/publishers/{publisher_id}", headers=browser.headers)
    assert secret not in again.text and signing_secret not in again.text
    served = [
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    ]
    assert not [line for line in served if secret in line or signing_secret in line]
    await sink.drain()
    rows = await fetch(database_url, "SELECT * FROM postbacks WHERE key_id = $1", key["id"])
    assert len(rows) == 1
    assert all(secret not in str(column) for column in rows[0].values())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"end_call_cutoff_seconds": "-1"},
            "Expected `int` >= 0 - at `$.end_call_cutoff_seconds`",
        ),
        (
            {"storage_duration_seconds": "soon"},
            "Expected `int`, got `str` - at `$.storage_duration_seconds`",
        ),
        (
            {"allowed_cidrs": "not-a-network"},
            "allowed_cidrs: 'not-a-network' does not appear to be an IPv4 or IPv6 network",
        ),
        ({"type": "postcards"}, "Invalid enum value 'postcards' - at `$.type`"),
        ({"colour": "blue"}, "Object contains unknown field `colour`"),
    ],
)
async def test_a_refused_key_form_says_the_models_message_and_keeps_it(
    client: httpx.AsyncClient,
    keys: Keys,
    browser: Signed,
    fields: dict[str, str],
    message: str,
) -> None:
    publisher_id = await keys.publisher()
    form = browser.form(name="kept name", **fields)
    page = await client.post(
        f"/console/publishers/{publisher_id}/keys", data=form, headers=browser.headers
    )
    assert page.status_code == 422
    assert texts(page.text, "message") == [message]
    assert '<details class="add" open>' in page.text  # the form stays open
    assert value(page.text, "key-name") == "kept name"
    assert await _keys(client, publisher_id) == []


async def test_pause_resume_rotate_and_revoke_a_key(
    client: httpx.AsyncClient, keys: Keys, browser: Signed
) -> None:
    key = await keys.key()
    publisher, key_id = key["publisher_id"], key["id"]
    page_path = f"/console/publishers/{publisher}"
    here = ("data-id", str(key_id))

    async def status() -> list[str]:
        page = await client.get(page_path, headers=browser.headers)
        return texts(page.text, "key-status", here)

    paused = await client.post(
        f"/console/keys/{key_id}", data=browser.form(paused="true"), headers=browser.headers
    )
    assert paused.status_code == 303
    assert paused.headers["location"] == f"{page_path}#key-{key_id}"
    assert await status() == ["paused"]
    assert (await _keys(client, publisher))[0]["paused"] is True
    resumed = await client.post(
        f"/console/keys/{key_id}", data=browser.form(paused="false"), headers=browser.headers
    )
    assert resumed.status_code == 303 and await status() == ["active"]

    rotated = await client.post(
        f"/console/keys/{key_id}/rotate",
        data=browser.form(grace_seconds="600"),
        headers=browser.headers,
    )
    assert rotated.status_code == 200, rotated.text
    new_secret = value(rotated.text, "new-secret")
    assert new_secret.startswith("ct_") and new_secret != key["key"]
    assert value(rotated.text, "ready-url").endswith(
        f"?key={new_secret}&caller_number=CALLER_NUMBER&prequalified=true"
    )
    assert "The previous secret keeps working until" in rotated.text
    caller = fresh_caller()
    assert await _post(client, new_secret, caller, a="1") == 200
    assert await _post(client, key["key"], caller, b="1") == 200  # in its grace period

    confirm = await client.get(f"/console/keys/{key_id}/revoke", headers=browser.headers)
    assert confirm.status_code == 200
    assert "Revoke the key “main”?" in confirm.text and await status() == ["active"]
    revoked = await client.post(
        f"/console/keys/{key_id}/revoke", data=browser.form(), headers=browser.headers
    )
    assert revoked.status_code == 303 and await status() == ["revoked"]
    page = await client.get(page_path, headers=browser.headers)
    assert texts(page.text, "pause", here) == [] and texts(page.text, "revoke", here) == []
    assert (await _keys(client, publisher))[0]["revoked"] is True

    # A revoked key changes no more: said on its publisher's page.
    late = await client.post(
        f"/console/keys/{key_id}", data=browser.form(paused="true"), headers=browser.headers
    )
    assert late.status_code == 404
    assert texts(late.text, "message") == [f"key {key_id} is revoked: it cannot change"]


async def test_testing_a_key_shows_the_answer_the_publisher_would_get(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink, database_url: str
) -> None:
    key = await keys.key()
    caller = fresh_caller()
    form = browser.form(caller_number=written_locally(caller), tags="prequalified=true\r\nage=42")
    page = await client.post(f"/console/keys/{key['id']}/test", data=form, headers=browser.headers)
    assert page.status_code == 200, page.text
    assert texts(page.text, "tried-status") == ["HTTP 200"]
    (answer,) = texts(page.text, "answer")
    assert f'"status": "{STORED}"' in answer and f'"caller_number": "{caller}"' in answer
    assert '"tag_values": { "prequalified": "true", "age": "42" }' in answer
    assert value(page.text, f"test-caller-{key['id']}") == written_locally(caller)  # kept

    refused = await client.post(
        f"/console/keys/{key['id']}/test",
        data=browser.form(caller_number="nope", tags="a=1"),
        headers=browser.headers,
    )
    assert texts(refused.text, "tried-status") == ["HTTP 422"]
    assert '"error": "invalid_caller_number"' in texts(refused.text, "answer")[0]

    await sink.drain()  # both went through the log, from the console
    rows = await fetch(
        database_url,
        "SELECT caller_number, error FROM postbacks WHERE key_id = $1 AND user_agent = $2"
        " ORDER BY received_at",
        key["id"],
        CONSOLE_AGENT,
    )
    assert [(r["caller_number"], r["error"]) for r in rows] == [
        (caller, None),
        (None, "invalid_caller_number"),
    ]


async def test_the_calls_pages_show_each_tag_and_who_set_it(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink
) -> None:
    name = _name("Call Leads")
    key = await keys.key(await keys.publisher(name), name="site")
    caller = fresh_caller()
    assert await _post(client, key["key"], caller, prequalified="true") == 200
    call_uuid = f"console-{secrets.token_hex(4)}"
    response = await client.post(
        "/calls",
        json={"caller_number": caller, "call_uuid": call_uuid, "campaign": "solar"},
        headers=ROUTING,
    )
    assert response.status_code == 201, response.text
    assert await _post(client, key["key"], caller, sale="yes") == 200  # to the live call
    await end(client, call_uuid)
    await sink.drain()

    listed = await client.get(
        "/console/calls", params={"caller_number": written_locally(caller)}, headers=browser.headers
    )
    assert listed.status_code == 200
    row = ("data-id", call_uuid)
    assert texts(listed.text, "state", row) == ["completed"]
    assert texts(listed.text, "tag-count", row) == ["2"]
    assert texts(listed.text, "caller", row) == [caller]
    live = await client.get(
        "/console/calls",
        params={"caller_number": caller, "state": "in_progress"},
        headers=browser.headers,
    )
    assert texts(live.text, "empty") == ["No calls match."]
    bad = await client.get(
        "/console/calls", params={"caller_number": "nope"}, headers=browser.headers
    )
    assert bad.status_code == 422 and "is not a phone number" in texts(bad.text, "message")[0]

    page = await client.get(f"/console/calls/{call_uuid}", headers=browser.headers)
    assert page.status_code == 200
    assert texts(page.text, "tag-name") == ["prequalified", "sale"]
    assert texts(page.text, "tag-value") == ["true", "yes"]
    assert texts(page.text, "tag-publisher") == [name, name]
    assert texts(page.text, "tag-key") == ["site", "site"]

    # Each tag's link leads to the postback that wrote it.
    for tag, tags in (("prequalified", "prequalified=true"), ("sale", "sale=yes")):
        links = [line for line in page.text.splitlines() if 'class="writer"' in line]
        index = ["prequalified", "sale"].index(tag)
        href = links[index].split('href="')[1].split('"')[0].replace("&amp;", "&")
        log = await client.get(href, headers=browser.headers)
        assert log.status_code == 200, log.text
        assert texts(log.text, "tags") == [tags], tag
    # The call's own link: the postbacks applied to it.
    applied = await client.get(
        "/console/log", params={"call_uuid": call_uuid}, headers=browser.headers
    )
    assert texts(applied.text, "tags") == ["sale=yes"]
    assert texts(applied.text, "call") == [call_uuid]


async def test_everything_shown_is_escaped(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, sink: Sink
) -> None:
    hostile = "<script>alert(1)</script>"
    publisher_id = await keys.publisher(hostile)
    key = await keys.key(publisher_id, name="<b>bold</b>")
    caller = fresh_caller()
    assert await _post(client, key["key"], caller, note="<script>") == 200
    call = await connect(client, caller)
    await sink.drain()

    pages = [
        await client.get(path, headers=browser.headers)
        for path in (
            "/console/publishers",
            f"/console/publishers/{publisher_id}",
            f"/console/log?caller_number={quote(caller)}",
            f"/console/calls/{call['call_uuid']}",
        )
    ]
    for page in pages:
        assert page.status_code == 200, page.text
        assert page.text.count("<script") == 1  # the page's own copy-button script alone
        assert "<b>bold" not in page.text
    assert hostile in texts(pages[0].text, "name")
    assert texts(pages[1].text, "key-name") == ["<b>bold</b>"]
    assert texts(pages[2].text, "tags") == ["note=<script>"]
    assert texts(pages[2].text, "publisher") == [hostile]
    assert texts(pages[3].text, "tag-value") == ["<script>"]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/console/publishers/999999999", "no publisher 999999999"),
        ("/console/publishers/acme", "no publisher_id 'acme'"),
        ("/console/keys/999999999/revoke", "no usable key 999999999"),
        ("/console/calls/no-such-call", "no call record 'no-such-call'"),
    ],
)
async def test_what_is_not_there_is_a_404_page(
    client: httpx.AsyncClient, browser: Signed, path: str, message: str
) -> None:
    page = await client.get(path, headers=browser.headers)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert texts(page.text, "message")[0].startswith(message)
