"""Helpers for the postback log tests: an in-process sink, synthetic log entries, a
TCP proxy that can cut Postgres off, and a web server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson
import uvicorn
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis

from calltags.app import create_app
from calltags.config import Settings
from calltags.keys import KeySpace
from calltags.log import ENTRY_FIELD, make_entry
from calltags.sink import Sink
from calltags.times import now_ms
from calltags.writer import create_sink_pool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def own_prefix(settings: Settings, name: str) -> Settings:
    """Settings under a key prefix of one test's own, inside the run's prefix (which the
    `redis` fixture cleans up): its streams hold only what the test put there."""
    return replace(settings, redis_prefix=f"{settings.redis_prefix}{name}{secrets.token_hex(3)}:")


def keyspace(settings: Settings) -> KeySpace:
    return KeySpace(settings.redis_prefix, settings.log_shards)


@contextlib.asynccontextmanager
async def open_sink(
    settings: Settings, redis: Redis, dsn: str | None = None, **options: Any
) -> AsyncIterator[Sink]:
    """A sink on the settings' streams, as a worker process runs it."""
    assert settings.database_url is not None
    pool = await create_sink_pool(dsn or settings.database_url)
    options = {"batch": 500, "max_backoff": 0.3, **options}
    try:
        yield Sink(redis, pool, keyspace(settings), **options)
    finally:
        await pool.close()


def entry(marker: str, n: int = 0, **fields: Any) -> dict[str, Any]:
    """A log entry as /data_writing writes it; `marker` goes in the user agent."""
    values: dict[str, Any] = {
        "received_ms": now_ms(),
        "method": "GET",
        "publisher_id": 1,
        "key_id": 1,
        "key_prefix": None,
        "caller_raw": f"212555{n:04d}",
        "caller_number": f"+1212555{n:04d}",
        "call_uuid": None,
        "tags": {"n": str(n)},
        "status": "call not found, tags stored",
        "error": None,
        "http_status": 200,
        "remote_addr": "127.0.0.1",
        "user_agent": marker,
        "latency_us": 100,
        **fields,
    }
    return make_entry(**values)


async def fill(redis: Redis, keys: KeySpace, entries: list[dict[str, Any]]) -> None:
    """Append entries round-robin over the postback log shards, as the web process does."""
    shards = keys.log_shards_all()
    async with redis.pipeline(transaction=False) as pipe:
        for n, item in enumerate(entries):
            pipe.xadd(shards[n % len(shards)], {ENTRY_FIELD: orjson.dumps(item)})
        await pipe.execute()


async def stream_lengths(redis: Redis, keys: KeySpace) -> int:
    total = 0
    for stream in keys.log_shards_all() + keys.call_log_shards_all():
        total += await redis.xlen(stream)
    return total


async def forget_arq_jobs(queue_url: str, queue: str) -> None:
    """Delete the keys of the jobs a killed worker left on the arq queue's Redis (arq
    keeps them outside the queue's name, so the prefix cleanup would miss them)."""
    redis = Redis.from_url(queue_url)
    try:
        for job_id in await redis.zrange(queue, 0, -1):
            for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix):
                await redis.delete(prefix.encode() + job_id)
    finally:
        await redis.aclose()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    finally:
        await conn.close()
    return rows


def process_env(
    settings: Settings, redis_url: str, queue_url: str, database_url: str, **extra: str
) -> dict[str, str]:
    """The environment of a web or worker process the tests start on their own stores,
    key prefix and log shards, plus `extra` (CALLTAGS_... settings)."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "CALLTAGS_QUEUE_URL": queue_url,
        "DATABASE_URL": database_url,
        "CALLTAGS_REDIS_PREFIX": settings.redis_prefix,
        "CALLTAGS_LOG_SHARDS": str(settings.log_shards),
        **extra,
    }


async def count(dsn: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        value: int = await conn.fetchval(sql, *args)
    finally:
        await conn.close()
    return value


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(every)


async def until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float, every: float = 0.05
) -> float:
    """Poll `check` until it is true; the seconds it took. AssertionError naming `what`
    past `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


Streams: TypeAlias = tuple[asyncio.StreamReader, asyncio.StreamWriter]  # a connection's


class TcpProxy:
    """A TCP proxy on a loopback port (`port`, free unless given) in front of `upstream`
    ((host, port) or a unix socket path), which a test stops (the upstream unreachable:
    refused, open connections cut) and starts again. `_relay` moves the bytes of one
    connection; a subclass may move them otherwise."""

    def __init__(self, upstream: tuple[str, int] | str, port: int | None = None):
        self._upstream = upstream
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self._upstream, str):
            return await asyncio.open_unix_connection(self._upstream)
        return await asyncio.open_connection(*self._upstream)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await self._relay((reader, writer), (up_reader, up_writer))
        self._writers.difference_update((writer, up_writer))

    async def _relay(self, client: Streams, upstream: Streams) -> None:
        """Each side's bytes to the other, until either closes."""
        await asyncio.gather(pipe(client[0], upstream[1]), pipe(upstream[0], client[1]))


async def pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    chunks: Callable[[bytes], Awaitable[None]] | None = None,
) -> None:
    """Bytes from `src` to `dst` (through `chunks`, which writes each, when given) until
    either side closes; then `dst` is cut."""
    try:
        while chunk := await src.read(65536):
            if chunks is not None:
                await chunks(chunk)
                continue
            dst.write(chunk)
            await dst.drain()
    except (OSError, RuntimeError):
        pass
    finally:
        dst.transport.abort()


class PgProxy(TcpProxy):
    """A TcpProxy in front of the Postgres of `dsn` (TCP or unix socket); `dsn` then
    reaches Postgres through the proxy."""

    def __init__(self, dsn: str):
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        host = query.pop("host", None) or parts.hostname or "localhost"
        port = parts.port or 5432
        super().__init__(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        self.dsn = urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


@contextlib.contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


ROOT = Path(__file__).resolve().parent.parent  # the checkout: where processes start


@contextlib.contextmanager
def processes() -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Started processes, (name, process); each gets SIGTERM at the end, then SIGKILL."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        yield started
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_process(
    started: list[tuple[str, subprocess.Popen[bytes]]],
    folder: Path,
    name: str,
    command: list[str],
    env: dict[str, str],
) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.log").open("wb") as output:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    started.append((name, proc))
    return proc


def process_output(folder: Path, name: str) -> str:
    return (folder / f"{name}.log").read_text(errors="replace")
