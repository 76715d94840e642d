"""Sending webhook deliveries: one HTTP request an attempt (`Sender`), and an attempt of
a pending delivery from the outbox, recorded, with the next one scheduled (`Courier`).

A receiver has CALLTAGS_WEBHOOK_TIMEOUT_SECONDS to answer 2xx; its answer is read up to
MAX_ANSWER_BYTES. Unless CALLTAGS_WEBHOOK_ALLOW_PRIVATE=1, the host is resolved first and
a loopback, private, link-local (cloud metadata), reserved or multicast address is
refused; the request then goes to the address checked, so a second resolution cannot
lead it elsewhere. The HTTP client is aiohttp's: httpx spent ten times its CPU a request
here (bench/README.md). Used by the workers and by the web side's webhook tests alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from calltags import webhooks
from calltags.config import Settings
from calltags.ids import random_uuid
from calltags.times import now_ms
from calltags.webhooks import TestResult
from calltags.webhookstore import Attempt, Pending, WebhookStore

log = logging.getLogger("calltags.webhooks")

CONCURRENCY = 100  # attempts sent at once (the HTTP client's connections at most)
LEASE_SLACK_SECONDS = 10.0  # an attempt's lease beyond the receiver's time, s
# Schedules an attempt of a delivery: (delivery id, attempts made so far, delay in s).
Schedule = Callable[[str, int, float], Awaitable[None]]


class Refused(Exception):
    """The URL leads to an address deliveries may not go to."""


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def _refusal(host: str, address: str) -> Refused:
    return Refused(
        f"{host} is {address}, an address webhooks may not reach"
        " (CALLTAGS_WEBHOOK_ALLOW_PRIVATE=1 allows it)"
    )


class _CheckedResolver(AbstractResolver):
    """The default resolver, refusing a host with any address deliveries may not go to:
    the connection is then made to the addresses checked, never resolved again."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            if _forbidden(result["host"]):
                raise _refusal(host, result["host"])
        return found

    async def close(self) -> None:
        await self._inner.close()


class Sender:
    """Sends attempts through one HTTP client session (its connections reused), made in
    the running event loop when first needed."""

    def __init__(self, timeout_seconds: float, allow_private: bool):
        self.timeout = timeout_seconds
        self.allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=CONCURRENCY, resolver=None if self.allow_private else _CheckedResolver()
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _check_literal(self, url: str) -> None:
        """An IP address in the URL is checked here (the resolver only sees names)."""
        host = urlsplit(url).hostname or ""
        try:
            forbidden = _forbidden(host)
        except ValueError:  # a name: the resolver checks it
            return
        if forbidden:
            raise _refusal(host, host)

    async def send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt: the receiver's status (a 2xx delivers), else why it failed. The
        answer is read up to MAX_ANSWER_BYTES, no further."""
        started = time.perf_counter()
        try:
            if not self.allow_private:
                self._check_literal(url)
            async with (
                asyncio.timeout(self.timeout),
                self._client().request(
                    method, url, data=body or None, headers=headers, allow_redirects=False
                ) as response,
            ):
                status = response.status
                answer = bytearray()
                while len(answer) < webhooks.MAX_ANSWER_BYTES:
                    chunk = await response.content.read(webhooks.MAX_ANSWER_BYTES - len(answer))
                    if not chunk:
                        break
                    answer += chunk
        except Refused as exc:
            return Attempt(status=None, error=f"refused: {exc}", latency_ms=None, final=True)
        except TimeoutError:
            return Attempt(None, f"no answer within {self.timeout:g} s", _ms(started))
        except (aiohttp.ClientError, ValueError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300], _ms(started))
        if 200 <= status < 300:
            return Attempt(status, None, _ms(started))
        text = bytes(answer[: webhooks.MAX_ERROR_TEXT]).decode("utf-8", "replace")
        return Attempt(status, f"HTTP {status}: {text}" if text else f"HTTP {status}", _ms(started))


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class Courier:
    """Attempts of pending deliveries, each safe to run twice: a delivery no longer
    pending is not sent, one leased to another attempt is left to it, and an attempt
    counts only if no other was recorded first."""

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        schedule: Schedule,
        *,
        retry_base_seconds: float,
        max_attempts: int,
        disable_after: int,
    ):
        self.store = store
        self.sender = sender
        self.schedule = schedule
        self.retry_base = retry_base_seconds
        self.max_attempts = max_attempts
        self.disable_after = disable_after
        # An attempt holds its delivery this long: the receiver's time and some more.
        self.lease_seconds = sender.timeout + LEASE_SLACK_SECONDS
        self._sending = asyncio.Semaphore(CONCURRENCY)

    async def attempt(self, delivery_ids: list[str]) -> list[str]:
        """Send each delivery once more if it is pending and due (of all jobs, at most
        CONCURRENCY at a time); their states after ("skipped": not pending, or another
        job holds it)."""
        claimed = {d.id: d for d in await self.store.claim(delivery_ids, self.lease_seconds)}

        async def one(delivery_id: str) -> str:
            delivery = claimed.get(delivery_id)
            if delivery is None:
                return "skipped"
            async with self._sending:
                return await self._attempt(delivery)

        return list(await asyncio.gather(*(one(i) for i in delivery_ids)))

    async def _attempt(self, delivery: Pending) -> str:
        outcome = await self.send(delivery)
        made = delivery.attempts + 1
        delay = webhooks.retry_delay(self.retry_base, made)
        state = await self.store.record(
            delivery,
            outcome,
            last=made >= self.max_attempts,
            retry_in=delay,
            disable_after=self.disable_after,
        )
        if state == "pending":
            try:
                await self.schedule(delivery.id, made, delay)
            except Exception as exc:  # Redis down: the workers' sweep schedules it later
                log.warning("could not schedule delivery %s: %s", delivery.id, exc)
        return state or "skipped"

    async def send(self, delivery: Pending) -> Attempt:
        timestamp = int(time.time())
        headers = webhooks.headers(
            delivery.secret, delivery.event, delivery.id, timestamp, delivery.body
        )
        return await self.sender.send(delivery.method, delivery.url, delivery.body, headers)


async def send_test(store: WebhookStore, settings: Settings, webhook_id: int) -> TestResult:
    """A webhook.test event sent to the webhook now, once, and recorded as a delivery
    (WebhookNotFound if there is no such webhook)."""
    hook = await store.get(webhook_id)
    secret = await store.secret(webhook_id)
    delivery_id = random_uuid()
    now = now_ms()
    body = webhooks.test_body(delivery_id, now) if hook.method == "POST" else b""
    values = {"event": webhooks.TEST_EVENT, "delivery_id": delivery_id}
    url = webhooks.render_url(hook.url, values, {})
    headers = webhooks.headers(secret, webhooks.TEST_EVENT, delivery_id, now // 1000, body)
    sender = Sender(settings.webhook_timeout_seconds, settings.webhook_allow_private)
    try:
        attempt = await sender.send(hook.method, url, body, headers)
    finally:
        await sender.close()
    await store.add_sent(
        delivery_id, webhook_id, webhooks.TEST_EVENT, url, hook.method, body, attempt
    )
    return TestResult(
        delivery_id=delivery_id,
        delivered=attempt.delivered,
        status=attempt.status,
        error=attempt.error,
        latency_ms=attempt.latency_ms,
    )
