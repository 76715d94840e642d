"""A webhook receiver for the tests and the bench: a small HTTP/1.1 server (keep-alive,
Content-Length bodies) on a free loopback port that records every request and answers
the statuses it is told to (200 once they are used up). `stop` takes it down (refused,
open connections cut), `start` brings it back on the same port; `hang` makes it take
requests and never answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # time.monotonic() when read
    wall: float = field(default_factory=time.time)  # Unix time when read, s


class Receiver:
    def __init__(self, port: int | None = None, record: bool = True):
        self.port = port or free_port()
        self.record = record
        self.requests: list[Received] = []
        self.answers: list[int] = []  # statuses to answer first, in order
        self.answer_body = b"ok"
        self.hang = False
        self.count = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.count += 1
                if self.record:
                    self.requests.append(Received(method, target, headers, body))
                if self.hang:
                    await asyncio.Event().wait()
                status = self.answers.pop(0) if self.answers else 200
                payload = self.answer_body
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, len(payload), payload)
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
