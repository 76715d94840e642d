"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the postback load only.

httpx costs about 2.4 ms of CPU a request on the 2-core CI machine: 300 postbacks a
second through it would take most of a core from the processes under test. This client
does one request at a time per connection over a small pool, reads bodies sized by
Content-Length or chunked, and never retries: a request that meets a dead connection
fails with the transport error, which is what the suite counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple
from urllib.parse import urlencode

import orjson

TIMEOUT = 10.0  # s a request may take, connect included


class Response(NamedTuple):
    status: int
    body: bytes
    seconds: float  # from the request's first byte written to the response's last read


class TransportError(Exception):
    """No response: connection refused, reset, closed mid-response, or timed out."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @property
    def usable(self) -> bool:
        """Not closed by the server while idle (keep-alive timeout, or it died)."""
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.transport.abort()


class RawClient:
    def __init__(self, host: str, port: int, user_agent: str, connections: int = 32) -> None:
        self.host = host
        self.port = port
        self.user_agent = user_agent
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(connections)

    async def get(self, path: str, params: dict[str, str]) -> Response:
        return await self.request("GET", f"{path}?{urlencode(params)}", None)

    async def post_json(self, path: str, body: dict[str, str]) -> Response:
        return await self.request("POST", path, orjson.dumps(body))

    async def request(self, method: str, target: str, body: bytes | None) -> Response:
        """The response; TransportError when no complete response came back."""
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: {self.user_agent}\r\nAccept: */*\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        data = (head + "\r\n").encode() + (body or b"")
        async with self._slots:
            try:
                return await asyncio.wait_for(self._exchange(data), TIMEOUT)
            except TimeoutError as exc:
                raise TransportError("Timeout", f"no response within {TIMEOUT} s") from exc

    async def _exchange(self, data: bytes) -> Response:
        conn = await self._connection()
        keep = False
        try:
            started = time.monotonic()
            conn.writer.write(data)
            await conn.writer.drain()
            status, body, keep = await _read_response(conn.reader)
            return Response(status, body, time.monotonic() - started)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise TransportError(type(exc).__name__, str(exc) or "closed") from exc
        except ValueError as exc:  # a malformed response
            raise TransportError("BadResponse", str(exc)) from exc
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn.close()

    async def _connection(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise TransportError(type(exc).__name__, str(exc)) from exc
        return _Connection(reader, writer)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers are sent
        body = b"".join(chunks)
    else:
        body, keep = await reader.read(), False
    return status, body, keep
