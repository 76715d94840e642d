"""The fault suite's stacks: a database of its own on the `server_database_url` Postgres
reached through a proxy the suite cuts, the web and worker processes as subprocesses,
and either its own Redis (AOF, fsync always: `stack`) or a Sentinel-managed primary, its
replica behind a lagging link, and three Sentinels (`failover`). Everything is killed and
dropped at the end, also when a test fails."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path

import pytest
from logtools import free_port
from sentinels import SentinelSet

from calltags import db

from .harness import PostgresGate, RedisServer, ReplicationLag, ThreadedProxy
from .report import REPORTS
from .stack import Service, Stack

_FAILED = pytest.StashKey[bool]()
# s the replica receives the primary's writes late (a replica in another zone): what a
# primary that dies takes with it. WAIT then takes about as long, well inside
# CALLTAGS_WRITE_ACK_TIMEOUT_MS (100 ms).
REPLICATION_LAG = 0.02


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@contextlib.asynccontextmanager
async def _run(
    server_database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[str, Path, str]]:
    """(run id, temp folder, DSN of a migrated database of the run's own); the folder
    (the processes' logs, Redis's files) is kept when the test fails, and its path
    printed."""
    run = secrets.token_hex(4)
    name = f"calltags_faults_{run}"
    folder = Path(tempfile.mkdtemp(prefix="calltags-faults-"))
    await db.create_database(server_database_url, name)
    try:
        dsn = db.with_database(server_database_url, name)
        await db.migrate(dsn)
        yield run, folder, dsn
    finally:
        await db.drop_database(server_database_url, name)
        if request.node.stash.get(_FAILED, False):
            print(f"\nfault suite: the processes' logs are kept in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def stack(server_database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The running stack on the suite's own Redis, one web process."""
    async with _run(server_database_url, request) as (run, folder, dsn):
        redis = RedisServer(folder / "redis", folder / "redis.log")
        gate = PostgresGate(dsn)
        built = Stack(run, folder, redis, gate, dsn)
        try:
            redis.start()
            await redis.wait_ready()
            await gate.open()
            await built.start_web()
            yield built
        finally:
            await built.close()


@dataclass
class Failover:
    service: Service
    sentinels: SentinelSet
    lag: ThreadedProxy  # a ReplicationLag: the primary's port as the world knows it
    write_ack: str  # CALLTAGS_WRITE_ACK of the web processes


@pytest.fixture(params=["replica", "primary"])
async def failover(
    server_database_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[Failover]:
    """Two web processes on `redis+sentinel://`, with CALLTAGS_WRITE_ACK=replica, then
    =primary; the primary known by the port of a proxy that delays its replication link
    by REPLICATION_LAG s."""
    write_ack: str = request.param
    async with _run(server_database_url, request) as (run, folder, dsn):
        announced = free_port()
        sentinels = SentinelSet(folder / "redis", announced)
        lag = ThreadedProxy(ReplicationLag(sentinels.primary.port, announced, REPLICATION_LAG))
        gate = PostgresGate(dsn)
        settings = {"CALLTAGS_WRITE_ACK": write_ack}
        service = Service(run, folder, sentinels.url, gate, dsn, webs=2, settings=settings)
        try:
            await lag.open()
            async with sentinels:
                await gate.open()
                await service.start_web()
                yield Failover(service, sentinels, lag, write_ack)
        finally:
            await service.close()
            lag.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures also when output is captured (`make test`); with -s they were printed."""
    if not REPORTS or terminalreporter.config.getoption("capture") == "no":
        return
    terminalreporter.section("fault suite")
    for text in REPORTS:
        terminalreporter.write_line(text)
