"""The running service of the fault suite: the processes, and what the suite knows of
them (which consumer names each worker reads the log streams under). `Service` runs on
the Redis a URL names (a Sentinel-managed primary too), `Stack` on the suite's own
RedisServer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from logtools import free_port, until
from redis.asyncio import Redis

from calltags.clients import sentinel_primary
from calltags.config import SENTINEL_SCHEMES

from .harness import (
    PostgresGate,
    Process,
    RedisServer,
    pending_by_consumer,
    service_env,
    streams,
    wait_http_ready,
    web_process,
    worker_process,
)

ADMIN_TOKEN = "faults-admin-token"
ROUTING_TOKEN = "faults-routing-token"


class Service:
    """The running service on the Redis of `redis_url`: `webs` web processes (`web` and
    `web_url` are the first's) and the workers, with `settings` (CALLTAGS_...) in their
    environment. `webs` and `workers` are the processes meant to be up: a supervisor
    restarts any worker that exits without the suite killing it (as a process manager
    would) and records it in `unexpected_exits`."""

    def __init__(
        self,
        run: str,
        folder: Path,
        redis_url: str,
        gate: PostgresGate,
        dsn: str,
        *,
        webs: int = 1,
        settings: dict[str, str] | None = None,
    ):
        self.run = run
        self.folder = folder
        self.redis_url = redis_url
        self.gate = gate
        self.database_url = dsn  # straight to Postgres, for the checks; never cut
        self.prefix = f"ctfaults:{run}:"
        self.env = service_env(
            redis_url, gate.dsn, self.prefix, ADMIN_TOKEN, ROUTING_TOKEN, **(settings or {})
        )
        ports = [free_port() for _ in range(webs)]
        self.web_urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.webs = [
            web_process(port, self.env, folder, "web" if webs == 1 else f"web{n}")
            for n, port in enumerate(ports)
        ]
        self.port = ports[0]
        self.web_url = self.web_urls[0]
        self.web = self.webs[0]
        self.workers: list[Process] = []
        self.every_process: list[Process] = [*self.webs]
        self.consumers: dict[str, set[str]] = {}  # worker name -> its consumer names
        self.unexpected_exits: list[str] = []
        self._supervisor: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def redis_client(self) -> AsyncIterator[Redis]:
        """A fresh client: one kept across a Redis restart would fail its first call."""
        timeouts = {"socket_connect_timeout": 2, "socket_timeout": 5}
        if self.redis_url.startswith(SENTINEL_SCHEMES):
            client = sentinel_primary(self.redis_url, "REDIS_URL", socket_timeout=5)
        else:
            client = Redis.from_url(self.redis_url, **timeouts)
        try:
            yield client
        finally:
            await client.aclose()

    async def start_web(self) -> float:
        """Every web process that is not running, started; seconds until all are ready."""
        for web in self.webs:
            if not web.alive:
                web.start()
        pairs = zip(self.web_urls, self.webs, strict=True)
        return max([await wait_http_ready(url, web) for url, web in pairs])

    async def start_worker(self) -> Process:
        """A new worker process, returned once it reads the log streams: the consumer
        names it then shows are its own (workers are started one at a time)."""
        async with self.redis_client() as client:
            known = set(await pending_by_consumer(client, await streams(client, self.prefix)))
            worker = worker_process(len(self.every_process) - 1, self.env, self.folder)
            self.every_process.append(worker)
            worker.start()

            async def reading() -> bool:
                assert worker.alive, f"{worker.name} exited\n{worker.tail()}"
                names = await streams(client, self.prefix)
                mine = set(await pending_by_consumer(client, names)) - known
                if mine:
                    self.consumers[worker.name] = mine
                return bool(mine)

            await until(reading, f"{worker.name} reads the log streams", timeout=30, every=0.1)
        self.workers.append(worker)
        return worker

    def retire(self, process: Process) -> None:
        """`process` is about to be killed on purpose: stop supervising it."""
        if process in self.workers:
            self.workers.remove(process)

    def supervise(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        restarted: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.2)
            for process in self.workers:
                if process.alive or time.monotonic() - restarted.get(process.name, 0.0) < 1.0:
                    continue
                if process.returncode is not None:
                    self.unexpected_exits.append(
                        f"{process.name} exited with {process.returncode} at"
                        f" {time.strftime('%H:%M:%S')} (log {process.log}):\n"
                        + process.crash_summary()
                    )
                process.proc = None
                process.start()  # as a process manager would, at most once a second
                restarted[process.name] = time.monotonic()

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for process in reversed(self.every_process):
            process.kill9()
        self.gate.close()

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.every_process)


class Stack(Service):
    """The service on the suite's own RedisServer (`redis`), one web process."""

    def __init__(self, run: str, folder: Path, redis: RedisServer, gate: PostgresGate, dsn: str):
        super().__init__(run, folder, redis.url, gate, dsn)
        self.redis = redis
        self.every_process.insert(0, redis)
