"""The account manager's whole flow through the console in real headless Chromium (the
system's, /usr/bin/chromium), against a uvicorn server with a worker moving the log into
Postgres: sign in, add a publisher, open it, add a key, hand its URL to a publisher (who
posts from here with httpx), find the postback in the log, test the key, connect a call,
read the call's tags, pause the key, find the refusal in the log, revoke the key.

Screenshots of each step land in tests/screenshots/ (gitignored); two of them are the
README's (docs/console-publisher.png, docs/console-log.png: copy them from there)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import ADMIN_TOKEN, ROUTING, fresh_caller, written_locally
from logtools import serve
from playwright.async_api import Locator, async_playwright, expect
from test_logpage import CHROMIUM, CHROMIUM_ARGS

from calltags.config import Settings
from calltags.models import DEFAULT_CUTOFF_SECONDS, DEFAULT_STORAGE_SECONDS
from calltags.sink import Sink

SHOTS = Path(__file__).resolve().parent / "screenshots"
STORED = "call not found, tags stored"
PAUSE_TAKES = 1.0  # s: a pause reaches every web process within the key cache's second


@contextlib.asynccontextmanager
async def worker(sink: Sink) -> AsyncIterator[None]:
    """The sink running as a worker does, until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def until(shown: Locator, count: int, again: Callable[[], Awaitable[object]]) -> None:
    """`again` (a reload) until `count` elements are `shown`: the worker moves entries
    into Postgres within a moment."""
    deadline = time.monotonic() + 15
    while await shown.count() < count:
        assert time.monotonic() < deadline, f"{shown} not shown within 15 s"
        await asyncio.sleep(0.1)
        await again()


async def changed(client: httpx.AsyncClient, url: str, before: int, since: float) -> httpx.Response:
    """The first answer to `url` other than the status `before`, which a change of the key
    at `since` (monotonic) ends: every request sent a second or more later gets the new."""
    while True:
        sent_at = time.monotonic()
        answer = await client.get(url)
        if answer.status_code != before:
            return answer
        assert sent_at - since < PAUSE_TAKES, f"still {before} {sent_at - since:.2f} s after"
        await asyncio.sleep(0.05)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium",
)
async def test_the_account_managers_flow_in_headless_chromium(
    settings: Settings, sink: Sink
) -> None:

    SHOTS.mkdir(exist_ok=True)
    name = f"Acme Leads {secrets.token_hex(2)}"
    caller = fresh_caller()
    call_uuid = f"call-{secrets.token_hex(4)}"

    with serve(settings) as base:
        async with (
            worker(sink),
            httpx.AsyncClient(base_url=base) as publisher,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                context = await browser.new_context(viewport={"width": 1400, "height": 900})
                await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
                page = await context.new_page()

                async def shot(step: str) -> None:
                    await page.screenshot(path=str(SHOTS / f"{step}.png"), full_page=True)

                # Sign in: the console is at the root.
                await page.goto(f"{base}/")
                assert page.url == f"{base}/console/login?next=%2Fconsole%2Fpublishers"
                await page.fill("#token", ADMIN_TOKEN)
                await page.click("button[type=submit]")
                await page.wait_for_url(f"{base}/console/publishers")

                # Add a publisher, then open it from the list.
                await page.fill("#publisher-name", name)
                await page.click("text=Add publisher")
                await page.wait_for_url(f"{base}/console/publishers/*")
                publisher_path = page.url.removeprefix(base)
                await page.click("nav >> text=Publishers")
                row = page.locator("table.publishers tr", has_text=name)
                await expect(row.locator(".keys")).to_have_text("0")
                await shot("01-publishers")
                await row.locator("a").click()
                await page.wait_for_url(f"{base}{publisher_path}")
                await expect(page.locator("h1.publisher-name")).to_have_text(name)

                # Add a key with a 120 s cut-off: the form shows the model's defaults.
                form = page.locator("form.add-key-form")
                assert not await form.is_visible()
                await page.click("text=+ Add key")
                assert await page.input_value("#key-cutoff") == str(DEFAULT_CUTOFF_SECONDS)
                assert await page.input_value("#key-storage") == str(DEFAULT_STORAGE_SECONDS)
                await page.select_option("#key-type", label="Call Data Writing")
                await page.fill("#key-name", "main")
                await page.fill("#key-cutoff", "120")
                await form.locator("button[type=submit]").click()

                # The ready URL, shown this once, with a copy button.
                url = await page.input_value("#ready-url")
                secret = await page.input_value("#new-secret")
                assert url == (
                    f"{base}/data_writing?key={secret}"
                    "&caller_number=CALLER_NUMBER&prequalified=true"
                )
                assert secret not in page.url
                await page.click("button[data-copy=ready-url]")
                assert await page.evaluate("navigator.clipboard.readText()") == url
                key = page.locator("tbody.key", has_text="main")
                key_id = await key.get_attribute("data-id")
                await expect(key.locator(".key-status")).to_have_text("active")
                await expect(key).to_contain_text("120 s")
                await shot("02-publisher-new-key")

                # The publisher posts to it, the caller written their way.
                posted = url.replace("CALLER_NUMBER", quote(written_locally(caller)))
                answer = await publisher.get(posted)
                assert answer.status_code == 200, answer.text
                assert answer.json()["status"] == STORED

                # The postback is in the log, under the publisher's name.
                await key.locator("a.log").click()
                await page.wait_for_url(f"{base}/console/log?key_id={key_id}")
                entries = page.locator("details.entry")
                await until(entries, 1, page.reload)
                first = entries.first
                await expect(first.locator(".publisher")).to_have_text(name)
                await expect(first.locator(".key")).to_have_text("main")
                await expect(first.locator(".caller .number")).to_have_text(caller)
                await expect(first.locator(".caller .as-posted")).to_have_text(
                    written_locally(caller)
                )
                await expect(first.locator(".outcome .code")).to_have_text(STORED)
                await shot("03-log-accepted")

                # Test the key from the console: the answer the publisher would get.
                await page.goto(f"{base}{publisher_path}")
                key = page.locator(f"tbody#key-{key_id}")
                await key.locator("details.test summary").click()
                await key.locator("input[name=caller_number]").fill(caller)
                await key.locator("textarea[name=tags]").fill("source=console")
                await key.locator("text=Send test postback").click()
                key = page.locator(f"tbody#key-{key_id}")
                await expect(key.locator(".tried-status")).to_have_text("HTTP 200")
                await expect(key.locator("pre.answer")).to_contain_text(f'"status": "{STORED}"')
                await shot("04-key-test")

                # Routing connects the call: it claims both tags.
                connect = await publisher.post(
                    "/calls",
                    json={"caller_number": caller, "call_uuid": call_uuid, "campaign": "solar"},
                    headers=ROUTING,
                )
                assert connect.status_code == 201, connect.text
                assert connect.json()["tags"] == {"prequalified": "true", "source": "console"}

                # The call's page: each tag, its publisher and key.
                await page.click("nav >> text=Calls")
                await page.fill("input[name=caller_number]", written_locally(caller))
                await page.click("form.filters button[type=submit]")
                call_row = page.locator(f"table.calls tr[data-id='{call_uuid}']")
                await until(call_row, 1, page.reload)
                await expect(call_row.locator(".state")).to_have_text("in progress")
                await call_row.locator("a").click()
                await page.wait_for_url(f"{base}/console/calls/{call_uuid}")
                tags = page.locator("table.tags")
                await expect(tags.locator(".tag-name")).to_have_text(["prequalified", "source"])
                await expect(tags.locator(".tag-value")).to_have_text(["true", "console"])
                await expect(tags.locator(".tag-publisher")).to_have_text([name, name])
                await expect(tags.locator(".tag-key")).to_have_text(["main", "main"])
                await shot("05-call")

                # Pause the key: within a second, posting with it is refused.
                await page.goto(f"{base}{publisher_path}")
                await page.locator(f"tbody#key-{key_id} button.pause").click()
                key = page.locator(f"tbody#key-{key_id}")
                await expect(key.locator(".key-status")).to_have_text("paused")
                refused = await changed(publisher, posted, 200, time.monotonic())
                assert refused.status_code == 403 and refused.json()["error"] == "key_paused"

                # The log shows the refusal under the key, with its message.
                await page.goto(f"{base}/console/log?key_id={key_id}&status=rejected")
                await until(entries, 1, page.reload)
                first = entries.first
                await expect(first.locator(".outcome .code")).to_have_text("key_paused")
                await expect(first.locator("summary .error-message")).to_have_text(
                    "the postback key is paused"
                )
                await expect(first.locator(".publisher")).to_have_text(name)
                await page.goto(f"{base}/console/log?key_id={key_id}")
                await until(entries, 3, page.reload)
                await entries.first.locator("summary").click()
                await shot("06-log")

                # Revoke, with a confirmation step: posting is then refused as invalid.
                await page.goto(f"{base}{publisher_path}")
                await page.locator(f"tbody#key-{key_id} a.revoke").click()
                await page.wait_for_url(f"{base}/console/keys/{key_id}/revoke")
                await expect(page.locator("h1")).to_have_text("Revoke the key “main”?")
                await page.click("button.danger")
                await page.wait_for_url(f"{base}{publisher_path}#key-{key_id}")
                key = page.locator(f"tbody#key-{key_id}")
                await expect(key.locator(".key-status")).to_have_text("revoked")
                await shot("07-revoked")
                gone = await changed(publisher, posted, 403, time.monotonic())
                assert gone.status_code == 401 and gone.json()["error"] == "invalid_key"
            finally:
                await browser.close()
