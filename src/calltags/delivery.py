"""Sending webhook deliveries: one HTTP request an attempt (`Sender`), and an attempt of
a pending delivery from the outbox, recorded, with the next one scheduled (`Courier`).

A receiver has CALLTAGS_WEBHOOK_TIMEOUT_SECONDS to answer 2xx; its answer is read up to
MAX_ANSWER_BYTES. Unless CALLTAGS_WEBHOOK_ALLOW_PRIVATE=1, the host is resolved first and
a loopback, private, link-local (cloud metadata), reserved or multicast address is
refused; the request then goes to the address checked, so a second resolution cannot
lead it elsewhere. Used by the workers and by the web side's webhook tests alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from calltags import webhooks
from calltags.config import Settings
from calltags.errors import StoreUnavailable
from calltags.ids import random_uuid
from calltags.times import now_ms
from calltags.webhooks import TestResult
from calltags.webhookstore import Attempt, Pending, WebhookStore

log = logging.getLogger("calltags.webhooks")

# Schedules an attempt of a delivery: (delivery id, attempts made so far, delay in s).
Schedule = Callable[[str, int, float], Awaitable[None]]


class Refused(Exception):
    """The URL leads to an address deliveries may not go to."""


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address)
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


class Sender:
    """Sends attempts through one HTTP client (its connections reused)."""

    def __init__(self, timeout_seconds: float, allow_private: bool):
        self.timeout = timeout_seconds
        self.allow_private = allow_private
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def _pinned(self, url: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """The URL to an address deliveries may go to, with the Host header and TLS name
        of the original; Refused otherwise."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise Refused(f"cannot resolve {host!r}: {exc}") from exc
        addresses = [str(info[4][0]) for info in infos]
        bad = [a for a in addresses if _forbidden(a)]
        if bad or not addresses:
            raise Refused(
                f"{host} resolves to {bad[0] if bad else 'nothing'}, an address webhooks may"
                " not reach (CALLTAGS_WEBHOOK_ALLOW_PRIVATE=1 allows it)"
            )
        address = addresses[0]
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{shown}:{parts.port}" if parts.port else shown
        host_header = parts.netloc.rpartition("@")[2]
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        return urlunsplit(parts._replace(netloc=netloc)), {"Host": host_header}, extensions

    async def send(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt: the receiver's status (a 2xx delivers), else why it failed."""
        extensions: dict[str, str] = {}
        if not self.allow_private:
            try:
                url, host, extensions = await self._pinned(url)
            except Refused as exc:
                return Attempt(status=None, error=f"refused: {exc}", latency_ms=None, final=True)
            headers = {**headers, **host}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                request = self.client.build_request(
                    method, url, content=body or None, headers=headers, extensions=extensions
                )
                response = await self.client.send(request, stream=True)
                try:
                    answer = bytearray()
                    async for chunk in response.aiter_raw():
                        answer += chunk
                        if len(answer) >= webhooks.MAX_ANSWER_BYTES:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            return Attempt(None, f"no answer within {self.timeout:g} s", _ms(started))
        except httpx.HTTPError as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300], _ms(started))
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(status, None, _ms(started))
        text = bytes(answer[: webhooks.MAX_ERROR_TEXT]).decode("utf-8", "replace")
        return Attempt(status, f"HTTP {status}: {text}" if text else f"HTTP {status}", _ms(started))


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class Courier:
    """Attempts of pending deliveries, each safe to run twice: a delivery no longer
    pending is not sent, and an attempt counts only if no other was recorded first."""

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

    async def attempt(self, delivery_id: str) -> str:
        """Send the delivery once more if it is pending; its state after."""
        delivery = await self.store.pending(delivery_id)
        if delivery is None:
            return "done"
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
            except StoreUnavailable as exc:  # the workers' sweep schedules it later
                log.warning("could not schedule delivery %s: %s", delivery.id, exc)
        return state or "done"

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
