"""Plain ASGI for the publisher and routing APIs: the request read from the scope, the
answer sent as two messages, without Starlette's Request and Response objects, router
and middleware, which cost more than the endpoints' own work."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.types import Receive, Scope, Send

from calltags.errors import ApiError
from calltags.http import MAX_BODY_BYTES, collect_body

_JSON = (b"content-type", b"application/json")


class Incoming:
    """A request as the plain ASGI handlers read it, straight from the scope."""

    __slots__ = ("address", "headers", "method", "path", "query", "receive", "started_ns")

    def __init__(self, scope: Scope, receive: Receive):
        self.started_ns = time.perf_counter_ns()
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope["query_string"]
        # Names arrive lower-cased; of a repeated header the last one wins.
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        client = scope.get("client")
        self.address: str | None = client[0] if client else None
        self.receive = receive

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    def seconds(self) -> float:
        """Time since the request arrived, s."""
        return (time.perf_counter_ns() - self.started_ns) / 1e9

    async def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The body, or ApiError 413 once it passes `limit` bytes."""
        return await collect_body(self.headers.get(b"content-length"), self._chunks(), limit)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ApiError("invalid_body", "the client left before the body ended")
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    headers: dict[str, str] | None,
    more: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send the answer; `more`: raw headers to add (already encoded)."""
    response: list[tuple[bytes, bytes]] = (
        [] if status == 204 else [_JSON, (b"content-length", b"%d" % len(body))]
    )
    if more:
        response += more
    if headers:
        response += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": response})
    await send({"type": "http.response.body", "body": body})
