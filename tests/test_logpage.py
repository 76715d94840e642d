"""The console's postback log page, /console/log: filters, paging, names, messages, the
request's fields; in real headless Chromium against a uvicorn server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import ADMIN_TOKEN, Keys, fresh_caller, written_locally
from logtools import serve

from calltags.config import Settings
from calltags.session import SESSION_COOKIE
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
                assert page.url == f"{base}/console/login?next=%2Fconsole%2Flog"
                await page.fill("#token", "wrong")
                await page.click("button[type=submit]")
                assert await page.locator("[role=alert]").inner_text() == "That token is not valid."
                await page.fill("#token", ADMIN_TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/console/log")

                # The session cookie took over plain http on 127.0.0.1 (a secure context).
                cookies = await page.context.cookies()
                (session,) = [c for c in cookies if c["name"] == SESSION_COOKIE]
                assert session["secure"] and session["httpOnly"]
                assert session["sameSite"] == "Strict"
                assert ADMIN_TOKEN not in session["value"]

                await page.fill("input[name=caller_number]", written_locally(caller))
                await page.click("form.filters button[type=submit]")
                await page.wait_for_url("**/console/log?*caller_number=*")
                entries = page.locator("details.entry")
                assert await entries.count() == 4
                assert set(
                    await page.locator("details.entry .caller .number").all_inner_texts()
                ) == {caller}
                outcomes = await page.locator("details.entry .outcome .code").all_inner_texts()
                assert outcomes == ["invalid_tag"] + ["call not found, tags stored"] * 3
                # A refusal says its message; publisher and key go by name.
                refusal = entries.nth(0)
                assert (
                    "must be 1-64 characters"
                    in await refusal.locator("summary .error-message").inner_text()
                )
                assert await refusal.locator("summary .publisher").inner_text() == "Acme Leads"
                assert await refusal.locator("summary .key").inner_text() == "main"

                # Each entry opens to the request's fields, then its full payload.
                newest_accepted = entries.nth(1)
                payload = newest_accepted.locator("pre.payload")
                assert not await payload.is_visible()
                await newest_accepted.locator("summary").click()
                assert await payload.is_visible()
                fields = newest_accepted.locator("table.request")
                assert await fields.locator(".caller-raw").inner_text() == caller
                assert await fields.locator(".caller-number").inner_text() == caller
                assert await fields.locator(".tags-table td").all_inner_texts() == ["2"]
                text = await payload.inner_text()
                assert '"n": "2"' in text and f'"key_id": {key["id"]}' in text

                await page.select_option("select[name=status]", "rejected")
                await page.click("form.filters button[type=submit]")
                await page.wait_for_url("**status=rejected*")
                assert await entries.count() == 1

                # Paging: two a page, newest first, "Older" to the rest.
                await page.goto(f"{base}/console/log?caller_number={quote(caller)}&limit=2")
                first_page = await page.locator("details.entry .tags").all_inner_texts()
                await page.click("a.older")
                await page.wait_for_url("**cursor=*")
                second_page = await page.locator("details.entry .tags").all_inner_texts()
                assert first_page == ["bad tag!=1", "n=2"]
                assert second_page == ["n=1", "n=0"]
                assert await page.locator("a.older").count() == 0

                await page.click("text=Sign out")
                await page.wait_for_url(f"{base}/console/login")
                await page.goto(f"{base}/admin/log")
                assert page.url == f"{base}/console/login?next=%2Fconsole%2Flog"
            finally:
                await browser.close()
