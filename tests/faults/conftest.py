"""The fault suite's stack: its own Redis (AOF, fsync always), a database of its own on
the `server_database_url` Postgres reached through a proxy the suite cuts, and the web
and worker processes as subprocesses. Everything is killed and dropped at the end, also
when a test fails."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from calltags import db

from .harness import PostgresGate, RedisServer
from .report import REPORTS
from .stack import Stack

_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
async def stack(server_database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The running stack; its temp folder (the processes' logs, Redis's files) is kept
    when the test fails, and its path printed."""
    run = secrets.token_hex(4)
    name = f"calltags_faults_{run}"
    folder = Path(tempfile.mkdtemp(prefix="calltags-faults-"))
    await db.create_database(server_database_url, name)
    try:
        dsn = db.with_database(server_database_url, name)
        await db.migrate(dsn)
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
    finally:
        await db.drop_database(server_database_url, name)
        if request.node.stash.get(_FAILED, False):
            print(f"\nfault suite: the processes' logs are kept in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures also when output is captured (`make test`); with -s they were printed."""
    if not REPORTS or terminalreporter.config.getoption("capture") == "no":
        return
    terminalreporter.section("fault suite")
    for text in REPORTS:
        terminalreporter.write_line(text)
