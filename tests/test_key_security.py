"""Key security on the publisher API: rotation, signed postbacks, IP allowlists, per-key
rate limits and the limit on failed key attempts per address."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from apitools import assert_error
from conftest import ADMIN, Keys, fresh_caller, running_app

from calltags import signing
from calltags.config import Settings

STORED = "call not found, tags stored"


async def _post(client: httpx.AsyncClient, secret: str, **tags: str) -> httpx.Response:
    params = {"key": secret, "caller_number": fresh_caller(), **(tags or {"t": "1"})}
    return await client.get("/data_writing", params=params)


async def test_rotation_keeps_the_old_secret_for_its_grace_period(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    key = await keys.key()
    old = key["key"]
    response = await client.post(
        f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 2}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    rotated = response.json()
    new = rotated["key"]
    assert new != old and new.startswith("ct_")
    assert rotated["previous_key_valid_until"] is not None
    assert (await _post(client, new)).json()["status"] == STORED
    assert (await _post(client, old)).json()["status"] == STORED
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        response = await _post(client, old)
        if response.status_code == 401:
            break
        await asyncio.sleep(0.2)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_key"
    assert (await _post(client, new)).status_code == 200


async def test_rotation_without_grace_ends_the_old_secret_within_a_second(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    key = await keys.key()
    response = await client.post(
        f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 0}, headers=ADMIN
    )
    assert response.status_code == 200
    await asyncio.sleep(1.1)
    assert (await _post(client, key["key"])).status_code == 401
    assert (await _post(client, response.json()["key"])).status_code == 200


async def test_rotate_unknown_or_bad_grace(client: httpx.AsyncClient, keys: Keys) -> None:
    assert (await client.post("/admin/keys/999999/rotate", headers=ADMIN)).status_code == 404
    key = await keys.key()
    response = await client.post(
        f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": -1}, headers=ADMIN
    )
    assert response.status_code == 422
    assert (await client.post(f"/admin/keys/{key['id']}/rotate")).status_code == 401


def _signed(
    secret: str, signing_secret: str, params: dict[str, str], at: int | None = None
) -> tuple[str, dict[str, str]]:
    query = urlencode({"key": secret, **params})
    stamp = str(int(time.time()) if at is None else at)
    signature = signing.signature(
        signing_secret.encode(), stamp, "GET", "/data_writing", query, b""
    )
    return f"/data_writing?{query}", {
        signing.TIMESTAMP_HEADER: stamp,
        signing.SIGNATURE_HEADER: signature,
    }


async def test_signed_postbacks(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key(require_signature=True)
    assert key["require_signature"] is True
    signing_secret = key["signing_secret"]
    assert signing_secret.startswith("whsec_")
    params = {"caller_number": fresh_caller(), "sale": "yes"}

    unsigned = await client.get("/data_writing", params={"key": key["key"], **params})
    assert unsigned.status_code == 401
    assert unsigned.json()["error"] == "missing_signature"

    url, headers = _signed(key["key"], signing_secret, params)
    good = await client.get(url, headers=headers)
    assert good.status_code == 200, good.text
    assert good.json()["tag_values"] == {"sale": "yes"}

    tampered = await client.get(url.replace("sale=yes", "sale=no"), headers=headers)
    assert tampered.status_code == 401
    assert tampered.json()["error"] == "invalid_signature"

    url, headers = _signed(key["key"], signing_secret, params, at=int(time.time()) - 3600)
    stale = await client.get(url, headers=headers)
    assert stale.status_code == 401
    assert stale.json()["error"] == "invalid_signature"

    url, headers = _signed(key["key"], "whsec_wrong", params)
    assert (await client.get(url, headers=headers)).json()["error"] == "invalid_signature"


async def test_signed_post_body(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key(require_signature=True)
    body = b'{"caller_number": "' + fresh_caller().encode() + b'", "lead": "42"}'
    stamp = str(int(time.time()))
    path = f"/data_writing/{key['key']}"
    headers = {
        "content-type": "application/json",
        signing.TIMESTAMP_HEADER: stamp,
        signing.SIGNATURE_HEADER: signing.signature(
            key["signing_secret"].encode(), stamp, "POST", path, "", body
        ),
    }
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 200, response.text
    response = await client.post(path, content=body + b" ", headers=headers)
    assert response.json()["error"] == "invalid_signature"


async def test_ip_allowlist(client: httpx.AsyncClient, keys: Keys) -> None:
    # The test client posts from 203.0.113.9 (see conftest.running_app).
    inside = await keys.key(allowed_cidrs=["203.0.113.0/24", "2001:db8::/32"])
    assert inside["allowed_cidrs"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert (await _post(client, inside["key"])).status_code == 200
    outside = await keys.key(allowed_cidrs=["198.51.100.0/24"])
    response = await _post(client, outside["key"])
    assert response.status_code == 403
    assert response.json()["error"] == "address_not_allowed"
    patched = await client.patch(
        f"/admin/keys/{outside['id']}", json={"allowed_cidrs": []}, headers=ADMIN
    )
    assert patched.status_code == 200
    await asyncio.sleep(1.1)
    assert (await _post(client, outside["key"])).status_code == 200


async def test_bad_security_fields_are_422(client: httpx.AsyncClient, keys: Keys) -> None:
    publisher = await keys.publisher()
    for fields in (
        {"allowed_cidrs": ["not-a-network"]},
        {"allowed_cidrs": "10.0.0.0/8"},
        {"allowed_cidrs": [f"10.0.{n}.0/24" for n in range(101)]},
        {"require_signature": "yes"},
        {"rate_limit_per_second": 0},
        {"rate_limit_per_second": "fast"},
        {"rate_limit_burst": 0},
    ):
        response = await client.post(
            f"/admin/publishers/{publisher}/keys", json={"name": "k", **fields}, headers=ADMIN
        )
        assert response.status_code == 422, fields
        assert response.json()["error"] == "invalid_request"


async def test_per_key_rate_limit(client: httpx.AsyncClient, keys: Keys) -> None:
    key = await keys.key(rate_limit_per_second=1, rate_limit_burst=3)
    assert key["rate_limit_per_second"] == 1 and key["rate_limit_burst"] == 3
    answers = [await _post(client, key["key"]) for _ in range(5)]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200]
    assert 429 in codes[3:]
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-limit"] == "3"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert "ratelimit-reset" in limited.headers
    await asyncio.sleep(1.1)
    assert (await _post(client, key["key"])).status_code == 200
    # Another key is not affected by this one's bucket.
    other = await keys.key(rate_limit_per_second=1, rate_limit_burst=1)
    assert (await _post(client, other["key"])).status_code == 200


async def test_failed_key_attempts_are_limited_per_address(settings: Settings, keys: Keys) -> None:
    good = await keys.key()
    limit = settings.key_failures_per_minute
    assert limit > 0
    async with running_app(settings, "198.51.100.77") as guesser:
        codes = []
        for n in range(limit + 3):
            response = await guesser.get(
                "/data_writing", params={"key": f"ct_guess{n}", "caller_number": fresh_caller()}
            )
            codes.append(response.status_code)
        assert codes[:limit] == [401] * limit
        assert codes[-1] == 429
        last: Any = response.json()
        assert last["error"] == "too_many_invalid_keys"  # not a key's own rate limit
        assert int(response.headers["retry-after"]) >= 1
        # Refused for the rest of the minute: unknown keys only. A good key this process
        # has not seen used within the key cache's second works from that address.
        still = await guesser.get(
            "/data_writing", params={"key": good["key"], "caller_number": fresh_caller(), "a": "1"}
        )
        assert still.status_code == 200, still.text
        again = await guesser.get(
            "/data_writing", params={"key": "ct_guess-again", "caller_number": fresh_caller()}
        )
        assert_error(again, 429, "too_many_invalid_keys")
    async with running_app(settings, "198.51.100.78") as other:
        response = await other.get(
            "/data_writing", params={"key": "ct_guess", "caller_number": fresh_caller()}
        )
        assert response.status_code == 401
