"""The real processes of the fault suite: a Redis server of its own with AOF, a Postgres
proxy on a thread of its own, and the web and worker processes as subprocesses.

Every process is started with its output in a log file of the run's temp folder, so a
failure can show what a process said; the `Stack` kills them all at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cluster import server_binary
from logtools import PgProxy, Streams, TcpProxy, free_port, pipe, until
from redis.asyncio import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: `workers/` lives here
T = TypeVar("T")


def _linux_die_with_parent() -> Callable[[], None] | None:
    """In the child before exec: SIGKILL it when the test process dies, so that nothing
    outlives a run killed from outside (a CI timeout). Linux only; elsewhere the
    `Stack` teardown is all there is."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    set_pdeathsig = 1  # PR_SET_PDEATHSIG from <sys/prctl.h>

    def die_with_parent() -> None:
        libc.prctl(set_pdeathsig, signal.SIGKILL)

    return die_with_parent


_die_with_parent = _linux_die_with_parent()


class Process:
    """One subprocess, its output appended to `log` across restarts."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signum)

    def kill9(self) -> None:
        """SIGKILL, and reap it (immediate: a killed process cannot linger)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill9()

    def crash_summary(self) -> str:
        """What the last run of the process raised: the frames of arq and of this
        project, and the exception lines, from its log since the last start."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        last_run = text.rpartition("--- start ")[2].splitlines()[1:]
        picked: list[str] = []
        for line in last_run:
            frame = line.strip().startswith('File "') and (
                "/arq/" in line or (str(ROOT) in line and "/.venv/" not in line)
            )
            raised = re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", line)
            if (frame or raised) and line.strip() not in picked:
                picked.append(line.strip())
        return "\n".join(f"    {line}" for line in picked[-14:])

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.name} ({self.log}):\n" + "\n".join(text.splitlines()[-lines:])


class RedisServer(Process):
    """A Redis (or Valkey) server of the suite's own on a free port, with every write
    fsynced to its append-only file before the reply: a kill -9 loses nothing it
    acknowledged, and a restart on the same port and folder loads it all back."""

    def __init__(self, folder: Path, log: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [
            server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        super().__init__("redis", argv, dict(os.environ), folder, log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def wait_ready(self, timeout: float = 20.0) -> float:
        """Until it answers PING (the AOF is loaded by then); seconds waited."""

        async def answers() -> bool:
            assert self.alive, self.tail()
            client = Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False
            finally:
                await client.aclose()

        return await until(answers, "redis answers PING", timeout)


class ThreadedProxy:
    """A tests/logtools TcpProxy on an event loop of its own thread: the test's loop is
    busy sending load, which must not slow the proxied traffic down. `cut()` makes the
    upstream unreachable (refused, open connections reset), `open()` reachable again."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.port = proxy.port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._thread.start()

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def open(self) -> None:
        await self._call(self.proxy.start())

    async def cut(self) -> None:
        await self._call(self.proxy.stop())

    def close(self) -> None:
        async def shutdown() -> None:
            await self.proxy.stop()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class PostgresGate(ThreadedProxy):
    """Postgres behind a ThreadedProxy; `dsn` reaches it through the proxy."""

    def __init__(self, dsn: str) -> None:
        proxy = PgProxy(dsn)
        super().__init__(proxy)
        self.dsn = proxy.dsn


class ReplicationLag(TcpProxy):
    """A TcpProxy in front of the primary on `port`, the port the world knows the
    primary by (Sentinels, the replica, clients: tests/sentinels.py `announced`); run in
    a ThreadedProxy.

    What the primary sends on a replication link (a connection whose client sent PSYNC)
    reaches the replica `delay` s late, as to a replica in another zone; everything else
    passes at once, so a client can have its reply before the replica has the write.
    Stopping the proxy is the primary's machine dying: the port stops answering, every
    connection through it is cut, and what it had not yet delivered to the replica is
    lost with it.
    """

    def __init__(self, primary_port: int, port: int, delay: float) -> None:
        super().__init__(("127.0.0.1", primary_port), port)
        self.delay = delay

    async def _relay(self, client: Streams, upstream: Streams) -> None:
        (reader, writer), (up_reader, up_writer) = client, upstream
        loop = asyncio.get_running_loop()
        replication = False
        seen = b""

        async def to_primary(chunk: bytes) -> None:  # a replica's handshake begins so
            nonlocal replication, seen
            if not replication and len(seen) < 4096:
                seen += chunk
                replication = b"SYNC\r\n" in seen  # PSYNC (or the old SYNC)
            up_writer.write(chunk)
            await up_writer.drain()

        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def to_client(chunk: bytes) -> None:  # each chunk in order, when it is due
            due.put_nowait((loop.time() + (self.delay if replication else 0.0), chunk))

        async def deliver() -> None:
            while True:
                at, chunk = await due.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                writer.write(chunk)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            await asyncio.gather(
                pipe(reader, up_writer, to_primary), pipe(up_reader, writer, to_client)
            )
        finally:
            delivering.cancel()  # the primary gone: what was still due is lost


def service_env(
    redis_url: str, database_url: str, prefix: str, admin: str, routing: str, **extra: str
) -> dict[str, str]:
    """The environment of the web and worker processes: the inherited one without any
    CALLTAGS_* setting (so the run does not depend on the caller's shell), plus ours and
    `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLTAGS_")}
    path = env.get("PYTHONPATH")
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        CALLTAGS_REDIS_PREFIX=prefix,
        CALLTAGS_ADMIN_TOKEN=admin,
        CALLTAGS_ROUTING_TOKEN=routing,
        # A killed worker's batch is taken over after 2 s instead of 60: the suite has
        # no minute to wait. Taking over a live worker's slow batch is safe (idempotent).
        CALLTAGS_FLUSH_CLAIM_IDLE_SECONDS="2",
        PYTHONPATH=f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env.pop("PORT", None)
    return env


def web_process(port: int, env: dict[str, str], folder: Path, name: str = "web") -> Process:
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "calltags.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return Process(name, argv, env, folder, folder / f"{name}.log")


def worker_process(n: int, env: dict[str, str], folder: Path) -> Process:
    argv = [sys.executable, "-m", "arq", "workers.flush.WorkerSettings"]
    return Process(f"worker{n}", argv, env, folder, folder / f"worker{n}.log")


async def wait_http_ready(base_url: str, proc: Process, timeout: float = 30.0) -> float:
    """Until GET /readyz answers 200 (Redis and Postgres reachable); seconds waited."""

    async def ready() -> bool:
        assert proc.alive, f"{proc.name} exited with {proc.returncode}\n{proc.tail()}"
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
                return (await client.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    return await until(ready, f"{proc.name} ready on {base_url}", timeout)


# -- the log streams, read in the suite's own Redis -----------------------------------


async def streams(redis: Redis, prefix: str) -> list[bytes]:
    """Every stream under the run's prefix: the postback log and call log shards."""
    found: list[bytes] = []
    async for name in redis.scan_iter(match=f"{prefix}*", count=1000, _type="stream"):
        found.append(name)
    return sorted(found)


async def backlog(redis: Redis, names: Iterable[bytes]) -> int:
    """Entries still in the streams: the workers delete an entry once it is committed."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xlen(name)
        lengths: list[int] = await pipe.execute()
    return sum(lengths)


async def pending_by_consumer(redis: Redis, names: list[bytes]) -> dict[str, int]:
    """Entries read and not yet acknowledged, per consumer, over every group of every
    stream (a consumer that holds nothing counts 0). Two round trips."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xinfo_groups(name)
        groups: list[list[dict[str, Any]]] = await pipe.execute(raise_on_error=False)
    pairs = [
        (name, group["name"])
        for name, found in zip(names, groups, strict=True)
        if isinstance(found, list)
        for group in found
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for name, group in pairs:
            pipe.xinfo_consumers(name, group)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    pending: dict[str, int] = {}
    for consumers in replies:
        if not isinstance(consumers, list):
            continue
        for consumer in consumers:
            raw = consumer["name"]
            label = raw.decode() if isinstance(raw, bytes) else str(raw)
            pending[label] = pending.get(label, 0) + int(consumer["pending"])
    return pending
