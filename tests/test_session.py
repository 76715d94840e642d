"""The console's sign-in and its CSRF defence: the session cookie (Secure, HttpOnly,
SameSite=Strict, never the token), the ways into the console, every state-changing form
refused without its session's token, and the admin JSON API open to a console page's
session (with the token in X-CSRF-Token) but to nothing else without the Bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from apitools import assert_error, connect
from conftest import ADMIN, ADMIN_TOKEN, ROUTING_TOKEN, Keys, fresh_caller
from pagetools import CSRF, Signed, sign_in

from calltags.front import OPERATIONS
from calltags.operations import Auth, Operation
from calltags.session import CSRF_HEADER, SESSION_COOKIE, new_session, valid_session
from calltags.sink import Sink


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> AsyncIterator[Signed]:
    yield await sign_in(client)
    client.cookies.clear()


def test_session_values_are_signed_and_expire() -> None:
    value = new_session("token-a", now=1000)
    assert "token-a" not in value
    assert valid_session("token-a", value, now=1001)
    assert not valid_session("token-b", value, now=1001)  # another admin token
    assert not valid_session("token-a", value, now=1000 + 13 * 3600)  # expired
    expires, nonce, signature = value.split(".")
    assert not valid_session("token-a", f"{int(expires) + 9999}.{nonce}.{signature}", now=1001)
    assert not valid_session("token-a", "", now=1001)


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/", "/console/publishers"),
        ("/admin", "/console/publishers"),
        ("/console", "/console/publishers"),
        ("/admin/login", "/console/login"),
        ("/admin/log", "/console/log"),
        ("/admin/log?key_id=7&status=rejected", "/console/log?key_id=7&status=rejected"),
    ],
)
async def test_the_ways_into_the_console(
    client: httpx.AsyncClient, path: str, location: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == location


async def test_sign_in_sets_a_secure_httponly_strict_cookie(client: httpx.AsyncClient) -> None:
    try:
        response = await client.get("/console/log?status=rejected")
        assert response.status_code == 303
        assert (
            response.headers["location"]
            == "/console/login?next=%2Fconsole%2Flog%3Fstatus%3Drejected"
        )
        form = await client.get(response.headers["location"])
        assert form.status_code == 200 and 'name="token"' in form.text
        assert 'name="next" value="/console/log?status=rejected"' in form.text

        wrong = await client.post("/console/login", data={"token": "not-the-token"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers

        signed = await client.post(
            "/console/login", data={"token": ADMIN_TOKEN, "next": "/console/log?status=rejected"}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/console/log?status=rejected"
        cookie = signed.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite", "path"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert "path=/;" in cookie.lower() + ";"  # /console and /admin alike
        assert ADMIN_TOKEN not in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        session = {"Cookie": f"{SESSION_COOKIE}={value}"}

        page = await client.get("/console/log", headers=session)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "Postback log" in page.text
        forged = value[:-4] + "0000"
        response = await client.get(
            "/console/log", headers={"Cookie": f"{SESSION_COOKIE}={forged}"}
        )
        assert response.status_code == 303
        assert (await client.get("/console/log", headers=ADMIN)).status_code == 200

        # Signing out is a form like any other: without its token it changes nothing.
        refused = await client.post("/console/logout", headers=session)
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        csrf = CSRF.search(page.text)
        assert csrf is not None
        out = await client.post(
            "/console/logout", data={"csrf_token": csrf.group(1)}, headers=session
        )
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"]
        assert "max-age=0" in out.headers["set-cookie"].lower()
    finally:
        client.cookies.clear()


@pytest.mark.parametrize(
    "target", ["//evil.example/console", "https://evil.example/", "/\\evil.example", "/admin/keys"]
)
async def test_sign_in_leads_to_console_pages_only(client: httpx.AsyncClient, target: str) -> None:
    signed = await client.post("/console/login", data={"token": ADMIN_TOKEN, "next": target})
    client.cookies.clear()
    assert signed.status_code == 303
    assert signed.headers["location"] == "/console/publishers"


FORMS = [op for op in OPERATIONS if op.auth is Auth.SESSION and op.method == "POST"]


@pytest.mark.parametrize("op", FORMS, ids=[op.path for op in FORMS])
async def test_every_console_form_needs_the_sessions_csrf_token(
    client: httpx.AsyncClient, keys: Keys, browser: Signed, op: Operation, sink: Sink
) -> None:
    key = await keys.key()
    call_uuid = ""
    if "{call_uuid}" in op.path:  # a call with its record
        call_uuid = (await connect(client, fresh_caller()))["call_uuid"]
        await sink.drain()
    webhook_id = 0
    if "{webhook_id}" in op.path:  # a webhook whose test is refused at once (loopback)
        webhook = {"name": "w", "url": "http://127.0.0.1:9/", "events": ["call.ended"]}
        created = await client.post("/admin/webhooks", json=webhook, headers=ADMIN)
        webhook_id = created.json()["id"]
    path = op.path.format(
        publisher_id=key["publisher_id"], key_id=key["id"], number=fresh_caller(),
        call_uuid=call_uuid, webhook_id=webhook_id,
    )  # fmt: skip
    before = (await client.get("/admin/publishers", headers=ADMIN)).json()["items"]
    # What each form would change, had it been let through.
    fields = {"name": "changed", "paused": "true", "grace_seconds": "0", "tags": "a=1"}
    other = await sign_in(client)  # another session of the same admin
    for token in (None, "", "0" * 64, other.csrf):
        data = dict(fields) if token is None else {**fields, "csrf_token": token}
        response = await client.post(path, data=data, headers=browser.headers)
        assert response.status_code == 403, (path, token, response.text)
        assert "does not carry the token of your session" in response.text
        assert "set-cookie" not in response.headers
    listed = await client.get(f"/admin/publishers/{key['publisher_id']}/keys", headers=ADMIN)
    (unchanged,) = listed.json()["items"]
    assert unchanged["name"] == "main" and not unchanged["paused"] and not unchanged["revoked"]
    assert unchanged["key_prefix"] == key["key_prefix"]  # not rotated
    assert (await client.get("/admin/publishers", headers=ADMIN)).json()["items"] == before

    # The same form with the session's token goes through.
    response = await client.post(
        path, data={**_valid(op.path), "csrf_token": browser.csrf}, headers=browser.headers
    )
    assert response.status_code in (200, 303), (path, response.text)
    for webhook in (await client.get("/admin/webhooks", headers=ADMIN)).json()["items"]:
        if webhook["name"] == "w":  # made here: no delivery for later tests' events
            await client.delete(f"/admin/webhooks/{webhook['id']}", headers=ADMIN)


def _valid(path: str) -> dict[str, str]:
    if path == "/console/webhooks":
        return {"name": "w", "url": "https://x.example/", "events": "call.ended"}
    if path.endswith("/test"):
        return {"caller_number": fresh_caller(), "tags": "a=1"}
    if path.endswith("/erase"):
        return {"confirm": "true"}
    if path.endswith(("/rotate", "/revoke", "/tag_schema", "/retract")) or not path.startswith(
        ("/console/keys/", "/console/publishers")
    ):  # and the pages' reveal forms
        return {}
    if path.startswith("/console/keys/"):
        return {"paused": "true"}
    return {"name": "changed"}


async def test_a_console_page_may_call_the_admin_api_with_its_session(
    client: httpx.AsyncClient, browser: Signed
) -> None:
    with_token = {**browser.headers, CSRF_HEADER: browser.csrf}
    created = await client.post(
        "/admin/publishers", json={"name": "From a page"}, headers=with_token
    )
    assert created.status_code == 201, created.text
    listed = await client.get("/admin/publishers", headers=with_token)
    assert created.json() in listed.json()["items"]

    other = await sign_in(client)
    for headers in (
        browser.headers,  # the cookie alone: any site's form could send it
        {**browser.headers, CSRF_HEADER: ""},
        {**browser.headers, CSRF_HEADER: other.csrf},  # another session's token
        {CSRF_HEADER: browser.csrf},  # the token without its session
        {**with_token, "Authorization": "Bearer wrong"},  # a wrong Bearer token decides
    ):
        for method, path in (("GET", "/admin/publishers"), ("POST", "/admin/publishers")):
            response = await client.request(method, path, json={"name": "x"}, headers=headers)
            assert_error(response, 401, "unauthorized")
    # Nothing but the admin API: routing keeps its Bearer tokens.
    connect = await client.post(
        "/calls", json={"caller_number": fresh_caller()}, headers=with_token
    )
    assert_error(connect, 401, "unauthorized")
    bearer = {"Authorization": f"Bearer {ROUTING_TOKEN}"}
    assert (
        await client.post("/calls", json={"caller_number": fresh_caller()}, headers=bearer)
    ).status_code == 201
