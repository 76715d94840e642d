"""The postback log attributes every refusal it can: once the key is recognised, its
entry carries the publisher and key; once a caller number is there, the caller as posted
and normalized — so the log's filters find it. The message the client got is logged
beside the code. And the console's test of a key is a postback like any other."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import orjson
import pytest
from conftest import ADMIN, Keys, fresh_caller, written_locally
from logtools import fetch

from calltags import postbacks, signing
from calltags.app import create_app
from calltags.config import Settings
from calltags.errors import ERRORS
from calltags.services import Services
from calltags.sink import Sink

STORED = "call not found, tags stored"


async def _logged(database_url: str, sink: Sink, marker: str) -> dict[str, Any]:
    await sink.drain()
    (row,) = await fetch(database_url, "SELECT * FROM postbacks WHERE user_agent = $1", marker)
    return dict(row)


async def _refused(
    client: httpx.AsyncClient,
    sink: Sink,
    database_url: str,
    key: dict[str, Any],
    status: int,
    code: str,
    *,
    path: str = "/data_writing",
    method: str = "GET",
    params: dict[str, str] | None = None,
    message: str | None = None,
    **request: Any,
) -> None:
    """A postback refused with `code` is logged under its publisher, key and caller, with
    the message the client got (or `message`)."""
    marker = f"attribution-{secrets.token_hex(4)}"
    caller = fresh_caller()
    given = {"caller_number": written_locally(caller), "a": "1", **(params or {})}
    if path == "/data_writing":
        given["key"] = key["key"]
    response = await client.request(
        method, path, params=given, headers={"User-Agent": marker, **request.pop("headers", {})},
        **request,
    )  # fmt: skip
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    row = await _logged(database_url, sink, marker)
    assert (row["error"], row["http_status"]) == (code, status)
    assert row["publisher_id"] == key["publisher_id"], row
    assert row["key_id"] == key["id"], row
    assert row["caller_raw"] == written_locally(caller)
    assert row["caller_number"] == caller
    assert row["message"] == (message or response.json()["message"])
    # ... so the log's filters find it.
    listed = await client.get(
        "/admin/postbacks",
        params={"key_id": key["id"], "caller_number": caller, "status": code},
        headers=ADMIN,
    )
    assert [item["id"] for item in listed.json()["items"]] == [str(row["id"])]


async def test_a_paused_key_is_logged_under_it(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str
) -> None:
    key = await keys.key()
    response = await client.patch(f"/admin/keys/{key['id']}", json={"paused": True}, headers=ADMIN)
    assert response.status_code == 200
    await _refused(client, sink, database_url, key, 403, "key_paused")
    await _refused(
        client, sink, database_url, key, 403, "key_paused", path=f"/data_writing/{key['key']}"
    )


async def test_an_address_outside_the_allowlist_is_logged_under_the_key(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str
) -> None:
    key = await keys.key(allowed_cidrs=["192.0.2.0/24"])  # the test client posts from 203.0.113.9
    await _refused(client, sink, database_url, key, 403, "address_not_allowed")


async def test_missing_and_wrong_signatures_are_logged_under_the_key(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str
) -> None:
    key = await keys.key(require_signature=True)
    await _refused(client, sink, database_url, key, 401, "missing_signature")
    stamp = str(int(time.time()))
    wrong = {signing.TIMESTAMP_HEADER: stamp, signing.SIGNATURE_HEADER: "sha256=00"}
    await _refused(client, sink, database_url, key, 401, "invalid_signature", headers=wrong)


async def test_a_rate_limited_postback_is_logged_under_the_key(
    client: httpx.AsyncClient, keys: Keys, sink: Sink, database_url: str
) -> None:
    key = await keys.key(rate_limit_per_second=0.01, rate_limit_burst=1)
    spent = await client.get(
        "/data_writing", params={"key": key["key"], "caller_number": fresh_caller(), "a": "1"}
    )
    assert spent.status_code == 200, spent.text
    # The write script refuses it in the same step that logs it, before the message with
    # the wait is known: the log has the error table's message.
    message = ERRORS["rate_limited"].message
    await _refused(client, sink, database_url, key, 429, "rate_limited", message=message)


@pytest.mark.parametrize("in_path", [True, False], ids=["key in the path", "key in the query"])
@pytest.mark.parametrize(
    ("status", "code", "sent"),
    [
        (400, "invalid_body", {"content": b"{", "headers": {"content-type": "application/json"}}),
        (
            415,
            "unsupported_media_type",
            {"content": b"--x--", "headers": {"content-type": "multipart/form-data; boundary=x"}},
        ),
        (
            413,
            "payload_too_large",
            {"content": b"a=" + b"x" * (1024 * 1024), "headers": {"content-type": "text/plain"}},
        ),
    ],
    ids=["malformed JSON", "multipart", "too large"],
)
async def test_a_body_refused_after_the_key_is_logged_under_it(
    client: httpx.AsyncClient,
    keys: Keys,
    sink: Sink,
    database_url: str,
    in_path: bool,
    status: int,
    code: str,
    sent: dict[str, Any],
) -> None:
    key = await keys.key()
    path = f"/data_writing/{key['key']}" if in_path else "/data_writing"
    await _refused(client, sink, database_url, key, status, code, path=path, method="POST", **sent)


async def test_an_unknown_key_is_logged_with_the_caller_and_the_keys_start(
    client: httpx.AsyncClient, sink: Sink, database_url: str
) -> None:
    marker = f"attribution-{secrets.token_hex(4)}"
    caller = fresh_caller()
    response = await client.get(
        "/data_writing",
        params={"key": "ct_unknown-key", "caller_number": written_locally(caller), "a": "1"},
        headers={"User-Agent": marker},
    )
    assert response.status_code == 401
    row = await _logged(database_url, sink, marker)
    assert (row["publisher_id"], row["key_id"], row["key_prefix"]) == (None, None, "ct_unkno")
    assert (row["caller_raw"], row["caller_number"]) == (written_locally(caller), caller)
    assert row["message"] == "the postback key is not valid"


async def test_accepted_postbacks_log_no_message(
    client: httpx.AsyncClient, key: dict[str, Any], sink: Sink, database_url: str
) -> None:
    marker = f"attribution-{secrets.token_hex(4)}"
    response = await client.get(
        "/data_writing",
        params={"key": key["key"], "caller_number": fresh_caller(), "a": "1"},
        headers={"User-Agent": marker},
    )
    assert response.status_code == 200
    row = await _logged(database_url, sink, marker)
    assert (row["status"], row["error"], row["message"]) == (STORED, None, None)


async def test_the_console_test_of_a_key_is_a_logged_postback(
    client: httpx.AsyncClient, settings: Settings, keys: Keys, sink: Sink, database_url: str
) -> None:
    plain = await keys.key()
    signed = await keys.key(plain["publisher_id"], require_signature=True)
    app = create_app(settings)
    async with app.running():
        svc = app.core
        assert isinstance(svc, Services)
        for key in (plain, signed):  # a key that wants signed postbacks is signed for it
            caller = fresh_caller()
            params = {"caller_number": written_locally(caller), "zip": "10001"}
            status, body = await postbacks.try_key(svc, key["id"], params, "203.0.113.5")
            assert status == 200, body
            assert orjson.loads(body)["status"] == STORED
            await sink.drain()
            rows = await fetch(
                database_url,
                "SELECT * FROM postbacks WHERE key_id = $1 AND caller_number = $2",
                key["id"],
                caller,
            )
            assert [(r["user_agent"], r["remote_addr"]) for r in rows] == [
                (postbacks.CONSOLE_AGENT, "203.0.113.5")
            ]
        paused = await client.patch(
            f"/admin/keys/{plain['id']}", json={"paused": True}, headers=ADMIN
        )
        assert paused.status_code == 200
        params = {"caller_number": fresh_caller(), "a": "1"}
        status, body = await postbacks.try_key(svc, plain["id"], params, None)
        assert (status, orjson.loads(body)["error"]) == (403, "key_paused")
        status, body = await postbacks.try_key(svc, 999_999_999, params, None)
        assert (status, orjson.loads(body)["error"]) == (404, "key_not_found")
