"""Plain ASGI for the hot endpoints (/data_writing, POST /calls): the request read from
the scope, the answer sent as two messages, without Starlette's Request and Response
objects, router and middleware, which cost more than the endpoints' own work."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from calltags.errors import ApiError
from calltags.http import MAX_BODY_BYTES, collect_body, parse_object

log = logging.getLogger("calltags")

Answer = tuple[int, bytes, dict[str, str] | None]  # HTTP status, JSON body, extra headers

_JSON = (b"content-type", b"application/json")
_VARY = (b"vary", b"Origin")
_INTERNAL = b'{"error":"internal_error","message":"internal error"}'


class Incoming:
    """A request as the plain ASGI handlers read it, straight from the scope."""

    __slots__ = (
        "address", "headers", "method", "path", "path_params", "query", "receive", "started_ns",
    )  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive):
        self.started_ns = time.perf_counter_ns()
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.path_params: dict[str, str] = scope.get("path_params") or {}
        self.query: bytes = scope["query_string"]
        # Names arrive lower-cased; of a repeated header the last one wins.
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        client = scope.get("client")
        self.address: str | None = client[0] if client else None
        self.receive = receive

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    async def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The body, or ApiError 413 once it passes `limit` bytes."""
        return await collect_body(self.headers.get(b"content-length"), self._chunks(), limit)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "invalid_body", "the client left before the body ended")
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    async def json_object(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty), or ApiError 400 `invalid_body`."""
        body = await self.body()
        return parse_object(body) if body.strip() else {}


def error_body(exc: ApiError) -> bytes:
    return orjson.dumps({"error": exc.code, "message": exc.message})


def failed(exc: ApiError) -> Answer:
    return exc.status, error_body(exc), exc.headers


async def guarded(answer: Awaitable[Answer]) -> Answer:
    """The answer, or a JSON 500 for a bug (logged), as Starlette's error middleware does
    for the other routes."""
    try:
        return await answer
    except Exception:
        log.exception("request failed")
        return 500, _INTERNAL, None


async def send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None, vary_origin: bool = False
) -> None:
    """Send the answer; `vary_origin` for an endpoint whose CORS headers depend on Origin."""
    response: list[tuple[bytes, bytes]] = (
        [] if status == 204 else [_JSON, (b"content-length", b"%d" % len(body))]
    )
    if vary_origin:
        response.append(_VARY)
    if headers:
        response += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": response})
    await send({"type": "http.response.body", "body": body})


class Endpoint:
    """A plain ASGI handler as a Starlette route's endpoint (Starlette would take a bare
    function for a Request -> Response one)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)
