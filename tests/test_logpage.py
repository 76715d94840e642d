"""The account manager's log page, /admin/log: sign-in, cookie, filters, paging; once
over in-process HTTP, and once in real headless Chromium against a uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import ADMIN, ADMIN_TOKEN, Keys, fresh_caller
from logtools import open_sink, serve
from redis.asyncio import Redis

from calltags.config import Settings
from calltags.logpage import SESSION_COOKIE, new_session, valid_session
from calltags.sink import Sink

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TICK = 0.003  # s between posts, so that each has its own millisecond


@pytest.fixture
async def sink(settings: Settings, redis: Redis) -> AsyncIterator[Sink]:
    async with open_sink(settings, redis) as found:
        yield found


def _local(caller: str) -> str:
    """+12125550123 written the way a person would: (212) 555-0123."""
    return f"({caller[2:5]}) {caller[5:8]}-{caller[8:]}"


def test_session_values_are_signed_and_expire() -> None:
    value = new_session("token-a", now=1000)
    assert "token-a" not in value
    assert valid_session("token-a", value, now=1001)
    assert not valid_session("token-b", value, now=1001)  # another admin token
    assert not valid_session("token-a", value, now=1000 + 13 * 3600)  # expired
    expires, nonce, signature = value.split(".")
    assert not valid_session("token-a", f"{int(expires) + 9999}.{nonce}.{signature}", now=1001)
    assert not valid_session("token-a", "", now=1001)


async def test_sign_in_sets_a_secure_httponly_strict_cookie(client: httpx.AsyncClient) -> None:
    try:
        response = await client.get("/admin/log")
        assert response.status_code == 303
        assert response.headers["location"] == "/admin/login"
        form = await client.get("/admin/login")
        assert form.status_code == 200 and 'name="token"' in form.text

        wrong = await client.post("/admin/login", data={"token": "not-the-token"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers

        signed = await client.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert signed.status_code == 303 and signed.headers["location"] == "/admin/log"
        cookie = signed.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert ADMIN_TOKEN not in cookie
        value = cookie.split(";")[0].split("=", 1)[1]

        page = await client.get("/admin/log", headers={"Cookie": f"{SESSION_COOKIE}={value}"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "postback log" in page.text
        forged = value[:-4] + "0000"
        response = await client.get("/admin/log", headers={"Cookie": f"{SESSION_COOKIE}={forged}"})
        assert response.status_code == 303
        assert (await client.get("/admin/log", headers=ADMIN)).status_code == 200

        out = await client.post("/admin/logout")
        assert out.status_code == 303 and out.headers["location"] == "/admin/login"
        assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"]
        assert "max-age=0" in out.headers["set-cookie"].lower()

        bad = await client.get(
            "/admin/log", params={"caller_number": "nope"}, headers=ADMIN
        )  # shown on the page, not a crash
        assert bad.status_code == 422 and "not a phone number" in bad.text
    finally:
        client.cookies.clear()


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium",
)
async def test_log_page_in_headless_chromium(
    settings: Settings, client: httpx.AsyncClient, keys: Keys, sink: Sink
) -> None:
    from playwright.async_api import async_playwright

    key = await keys.key()
    caller, other = fresh_caller(), fresh_caller()
    for n in range(3):
        params = {"key": key["key"], "caller_number": caller, "n": str(n)}
        assert (await client.get("/data_writing", params=params)).status_code == 200
        await asyncio.sleep(TICK)
    await client.get("/data_writing", params={"key": key["key"], "caller_number": other, "o": "1"})
    await asyncio.sleep(TICK)
    rejected = {"key": key["key"], "caller_number": caller, "bad tag!": "1"}
    assert (await client.get("/data_writing", params=rejected)).status_code == 422
    await sink.drain()

    with serve(settings) as base:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/admin/log")
                assert page.url == f"{base}/admin/login"
                await page.fill("#token", "wrong")
                await page.click("button[type=submit]")
                assert await page.locator("[role=alert]").inner_text() == "That token is not valid."
                await page.fill("#token", ADMIN_TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/admin/log")

                # The session cookie took over plain http on 127.0.0.1 (a secure context).
                cookies = await page.context.cookies()
                (session,) = [c for c in cookies if c["name"] == SESSION_COOKIE]
                assert session["secure"] and session["httpOnly"]
                assert session["sameSite"] == "Strict"
                assert ADMIN_TOKEN not in session["value"]

                await page.fill("input[name=caller_number]", _local(caller))
                await page.click("form.filters button[type=submit]")
                await page.wait_for_url("**/admin/log?*caller_number=*")
                entries = page.locator("details.entry")
                assert await entries.count() == 4
                assert set(await page.locator("details.entry .caller").all_inner_texts()) == {
                    caller
                }
                outcomes = await page.locator("details.entry .outcome").all_inner_texts()
                assert outcomes == ["invalid_tag"] + ["call not found, tags stored"] * 3

                # Each entry opens to its full payload.
                newest_accepted = entries.nth(1)
                payload = newest_accepted.locator("pre.payload")
                assert not await payload.is_visible()
                await newest_accepted.locator("summary").click()
                assert await payload.is_visible()
                text = await payload.inner_text()
                assert '"n": "2"' in text and f'"key_id": {key["id"]}' in text

                await page.select_option("select[name=status]", "rejected")
                await page.click("form.filters button[type=submit]")
                await page.wait_for_url("**status=rejected*")
                assert await entries.count() == 1

                # Paging: two a page, newest first, "Older" to the rest.
                await page.goto(f"{base}/admin/log?caller_number={quote(caller)}&limit=2")
                first_page = await page.locator("details.entry .tags").all_inner_texts()
                await page.click("a.older")
                await page.wait_for_url("**cursor=*")
                second_page = await page.locator("details.entry .tags").all_inner_texts()
                assert first_page == ["bad tag!=1", "n=2"]
                assert second_page == ["n=1", "n=0"]
                assert await page.locator("a.older").count() == 0

                await page.click("text=Sign out")
                await page.wait_for_url(f"{base}/admin/login")
                await page.goto(f"{base}/admin/log")
                assert page.url == f"{base}/admin/login"
            finally:
                await browser.close()
