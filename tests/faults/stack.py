"""The running service of the fault suite: the processes, and what the suite knows of
them (which consumer names each worker reads the log streams under)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from logtools import free_port
from redis.asyncio import Redis

from .harness import (
    PostgresGate,
    Process,
    RedisServer,
    pending_by_consumer,
    service_env,
    streams,
    until,
    wait_http_ready,
    web_process,
    worker_process,
)

ADMIN_TOKEN = "faults-admin-token"
ROUTING_TOKEN = "faults-routing-token"


class Stack:
    """The running service. `web` and `workers` are the processes meant to be up: a
    supervisor restarts any that exits without the suite killing it (as a process
    manager would) and records it in `unexpected_exits`."""

    def __init__(self, run: str, folder: Path, redis: RedisServer, gate: PostgresGate, dsn: str):
        self.run = run
        self.folder = folder
        self.redis = redis
        self.gate = gate
        self.database_url = dsn  # straight to Postgres, for the checks; never cut
        self.prefix = f"ctfaults:{run}:"
        self.env = service_env(redis.url, gate.dsn, self.prefix, ADMIN_TOKEN, ROUTING_TOKEN)
        self.port = free_port()
        self.web_url = f"http://127.0.0.1:{self.port}"
        self.web = web_process(self.port, self.env, folder)
        self.workers: list[Process] = []
        self.every_process: list[Process] = [redis, self.web]
        self.consumers: dict[str, set[str]] = {}  # worker name -> its consumer names
        self.unexpected_exits: list[str] = []
        self._supervisor: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def redis_client(self) -> AsyncIterator[Redis]:
        """A fresh client: one kept across a Redis restart would fail its first call."""
        client = Redis.from_url(self.redis.url, socket_connect_timeout=2, socket_timeout=5)
        try:
            yield client
        finally:
            await client.aclose()

    async def start_web(self) -> float:
        self.web.start()
        return await wait_http_ready(self.web_url, self.web)

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
